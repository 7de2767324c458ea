"""Inference cost of the final cross-encoder per pair, 1 thread: torch, ONNX fp32 and ONNX int8 (dynamic
quantisation), plus how far the int8 scores move and how many rule decisions flip on the given pairs (the tuning
file: the flips use its features, var/crossenc/feats_tuning.npz). Exports the ONNX models to var/crossenc/final/onnx/
and writes the figures to var/crossenc/final/cost.json.

    CROSSENC_THREADS=1 .venv/bin/python bench/crossenc/cost.py bench/cache_pairs.jsonl
"""

import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
import torch
from common import OUT, encode, load_pairs, score
from onnxruntime.quantization import QuantType, quantize_dynamic
from rules import serve
from score import FINAL, load_final

ONNX = FINAL / "onnx"

torch.set_num_threads(1)
pairs = load_pairs(sys.argv[1])
model, tok, cfg = load_final()
L = cfg["recipe"]["max_len"]


class Wrap(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask, token_type_ids):
        return torch.sigmoid(self.m(input_ids, attention_mask, token_type_ids))


w = Wrap(model).eval()
sample = pairs[::8][:150]


def one(p):
    return encode(tok, [p["s"]], [p["a"]], L)


@torch.no_grad()
def bench_torch():
    for p in sample[:10]:
        e = one(p)
        w(e["input_ids"], e["attention_mask"], e["token_type_ids"])
    ts = []
    for p in sample:
        t = time.perf_counter()
        e = one(p)
        w(e["input_ids"], e["attention_mask"], e["token_type_ids"])
        ts.append(time.perf_counter() - t)
    return np.median(ts) * 1000, np.percentile(ts, 95) * 1000


res = {}
res["torch_fp32_ms_median_p95"] = bench_torch()
ONNX.mkdir(parents=True, exist_ok=True)
e = one(pairs[0])
t0 = time.time()
torch.onnx.export(
    w,
    (e["input_ids"], e["attention_mask"], e["token_type_ids"]),
    str(ONNX / "model.onnx"),
    dynamo=False,
    input_names=["input_ids", "attention_mask", "token_type_ids"],
    output_names=["score"],
    dynamic_axes={k: {0: "batch", 1: "seq"} for k in ["input_ids", "attention_mask", "token_type_ids"]}
    | {"score": {0: "batch"}},
    opset_version=17,
)
quantize_dynamic(str(ONNX / "model.onnx"), str(ONNX / "model.int8.onnx"), weight_type=QuantType.QInt8)
res["export_quantize_seconds"] = round(time.time() - t0, 1)


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feed(p):
    e = tok([p["s"]], [p["a"]], truncation=True, max_length=L, return_tensors="np")
    return {k: e[k].astype(np.int64) for k in ["input_ids", "attention_mask", "token_type_ids"]}


for name, path in [("onnx_fp32", ONNX / "model.onnx"), ("onnx_int8", ONNX / "model.int8.onnx")]:
    s = session(path)
    for p in sample[:10]:
        s.run(None, feed(p))
    ts = []
    for p in sample:
        t = time.perf_counter()
        s.run(None, feed(p))
        ts.append(time.perf_counter() - t)
    res[f"{name}_ms_median_p95"] = (np.median(ts) * 1000, np.percentile(ts, 95) * 1000)
    res[f"{name}_size_mb"] = round(os.path.getsize(path) / 1e6, 1)
    if name == "onnx_int8":
        q = np.array([s.run(None, feed(p))[0][0] for p in pairs])
        with torch.no_grad():
            torch.set_num_threads(2)
            ref = score(model, tok, pairs, L)
            torch.set_num_threads(1)
        res["int8_vs_torch_max_abs_diff"] = float(np.abs(q - ref).max())
        f = np.load(OUT / "feats_tuning.npz")
        th = cfg["thresholds"]
        tt = {"b": th["t_b"], "c": th["t_c"], "d": th["t_d"], "c2": th["t_c2"]}
        a, b = serve(f["sim"], f["guard_ok"], ref, tt), serve(f["sim"], f["guard_ok"], q, tt)
        res["int8_decision_flips_on_pairs"] = {r: int((a[r] != b[r]).sum()) for r in tt}
print(json.dumps({k: (tuple(round(x, 2) for x in v) if isinstance(v, tuple) else v) for k, v in res.items()}, indent=1))
with open(FINAL / "cost.json", "w") as out:
    json.dump({k: (list(v) if isinstance(v, tuple) else v) for k, v in res.items()}, out, indent=1)
