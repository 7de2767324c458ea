"""What the semantic cache's embedder costs, and how far the ONNX exports stray from torch's embeddings.

Compares all-MiniLM-L6-v2 through torch (SentenceTransformerEmbedder) with the ONNX Runtime exports
(OnnxEmbedder, fp32 and int8), every one on one thread as a gateway worker runs it:

- agreement: on bench/cache_pairs.jsonl, each pair's cosine similarity through each embedder, the mean and largest
  difference from torch's, and the pairs that land on the other side of the serving threshold;
- time: ms per `embed` call for one short text and for a batch of eight;
- load: seconds and RSS of a fresh Django process that loads the embedder and embeds one text;
- workers: `uvicorn llmops.asgi:application --workers 2` with each embedder: seconds until /healthz answers, and
  each worker's RSS once it has loaded the model.

    .venv/bin/python bench/embedder_cost.py [--skip-workers]

The ONNX files must be exported (`make install`, or `manage.py embedder_export`). Figures, not a test.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from overhead import database_url_argument, ensure_database, refuse_busy_port  # noqa: E402

from core.jsonl import jsonl_lines  # noqa: E402

PYTHON = sys.executable
PAIRS = ROOT / "bench" / "cache_pairs.jsonl"
EMBEDDERS = {
    "torch": ("routing.cache.embedders.SentenceTransformerEmbedder", {}),
    "onnx fp32": ("routing.cache.embedders.OnnxEmbedder", {"precision": "fp32"}),
    "onnx int8": ("routing.cache.embedders.OnnxEmbedder", {"precision": "int8"}),
}
ONE = ["How do I reset my password?"]
EIGHT = [
    "How do I reset my password?",
    "What is the capital of France?",
    "Write a SQL query that counts orders per customer in 2024",
    "Explain the difference between PUT and PATCH in HTTP",
    "Summarise this paragraph about quarterly revenue growth",
    "How many vacation days do new employees get?",
    "Convert a tuple to a list in Python",
    "Is Mars larger than Venus?",
]
LOAD_AND_EMBED = """
import json, os, sys, time
started = time.perf_counter()
import django
django.setup()
from django.utils.module_loading import import_string
embedder = import_string(sys.argv[1])(**json.loads(sys.argv[2]))
embedder.embed(["How do I reset my password?"])
seconds = time.perf_counter() - started
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")) / 1024
print(json.dumps({"seconds": seconds, "rss_mb": rss, "torch": "torch" in sys.modules}))
"""


def load_embedders() -> dict:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmops.settings")
    import django

    django.setup()
    from django.utils.module_loading import import_string

    return {name: import_string(path)(**options) for name, (path, options) in EMBEDDERS.items()}


def agreement(embedders: dict, threshold: float) -> None:
    """Pairs as the cache embeds them (normalised prompts), each text alone and in batches of
    LLMOPS_CACHE_EMBED_BATCH as they form under load (int8 quantises activations per batch, so a text's
    embedding moves a little with its batch-mates), against torch's embeddings of each text alone."""
    import numpy as np
    from django.conf import settings

    from routing.cache.keys import normalize_prompt

    pairs = [json.loads(line) for line in jsonl_lines(PAIRS.read_text()) if line.strip()]
    texts = [normalize_prompt(pair[side]) for side in ("stored", "asked") for pair in pairs]
    batch = settings.LLMOPS_CACHE_EMBED_BATCH

    def pair_similarities(embedder, size: int):
        vectors = np.vstack([embedder.embed(texts[start : start + size]) for start in range(0, len(texts), size)])
        return np.sum(vectors[: len(pairs)] * vectors[len(pairs) :], axis=1)

    reference = pair_similarities(embedders["torch"], 1)
    print(f"agreement with torch on {PAIRS.name}: {len(pairs)} pairs' cosine similarity; threshold {threshold}")
    print(f"{'embedder':<11}{'texts':>10}{'mean |diff|':>12}{'max |diff|':>12}{'other side of threshold':>25}")
    for name, embedder in embedders.items():
        if name == "torch":
            continue
        for size in (1, batch):
            values = pair_similarities(embedder, size)
            difference = np.abs(values - reference)
            flipped = [i for i in range(len(pairs)) if (values[i] >= threshold) != (reference[i] >= threshold)]
            label = "alone" if size == 1 else f"by {size}"
            print(f"{name:<11}{label:>10}{difference.mean():>12.4f}{difference.max():>12.4f}{len(flipped):>25}")
            for i in flipped:
                print(
                    f"    {pairs[i]['label']}: {pairs[i]['stored']!r} / {pairs[i]['asked']!r}: "
                    f"torch {reference[i]:.3f}, {name} {values[i]:.3f}"
                )


def timing(embedders: dict) -> None:
    """Wall and CPU time (of this thread, where a one-thread model runs): CPU time moves less with other load."""
    print("ms per embed call, one thread, median of 7 rounds: wall (CPU)")
    print(f"{'embedder':<11}{'1 text':>17}{'8 texts':>17}")
    for name, embedder in embedders.items():
        row = []
        for texts, calls in ((ONE, 100), (EIGHT, 25)):
            for _ in range(5):
                embedder.embed(texts)
            walls, cpus = [], []
            for _ in range(7):
                wall, cpu = time.perf_counter(), time.thread_time()
                for _ in range(calls):
                    embedder.embed(texts)
                walls.append((time.perf_counter() - wall) / calls * 1000)
                cpus.append((time.thread_time() - cpu) / calls * 1000)
            row.append(f"{statistics.median(walls):.2f} ({statistics.median(cpus):.2f})")
        print(f"{name:<11}{row[0]:>17}{row[1]:>17}")


def load_cost() -> None:
    print("a fresh Django process that loads the embedder and embeds one text")
    print(f"{'embedder':<11}{'seconds':>9}{'RSS MB':>9}  torch imported")
    for name, (path, options) in EMBEDDERS.items():
        output = subprocess.run(
            [PYTHON, "-c", LOAD_AND_EMBED, path, json.dumps(options)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        report = json.loads(output.strip().splitlines()[-1])
        print(f"{name:<11}{report['seconds']:>9.2f}{report['rss_mb']:>9.0f}  {report['torch']}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker_start(args) -> None:
    """Two uvicorn workers per embedder: seconds until /healthz answers, then each worker's RSS once it has held
    still for 3 s (the model loads on a thread after start)."""
    ensure_database(args.database_url)
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "LOG_LEVEL": "WARNING",
        "SERVE_STATIC": "false",
        "DJANGO_SETTINGS_MODULE": "llmops.settings",
    }
    subprocess.run([PYTHON, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=env, check=True)
    print("uvicorn --workers 2, semantic cache on")
    print(f"{'embedder':<11}{'healthz s':>10}{'settled s':>10}  worker RSS MB")
    for name in ("torch", "onnx int8"):
        path, _ = EMBEDDERS[name]
        refuse_busy_port(args.port)
        command = [PYTHON, "-m", "uvicorn", "llmops.asgi:application", "--host", "127.0.0.1", "--port", str(args.port)]
        command += ["--workers", "2", "--no-access-log", "--log-level", "warning"]
        started = time.monotonic()
        server = subprocess.Popen(command, cwd=ROOT, env={**env, "LLMOPS_CACHE_EMBEDDER": path})
        try:
            healthz = _wait_for_healthz(f"http://127.0.0.1:{args.port}/healthz", started)
            workers = _uvicorn_workers(server.pid)
            sizes, settled = _settled_rss(workers, started)
            print(f"{name:<11}{healthz:>10.1f}{settled:>10.1f}  {', '.join(f'{size:.0f}' for size in sizes)}")
        finally:
            server.terminate()
            server.wait(timeout=30)


def _wait_for_healthz(url: str, started: float) -> float:
    while time.monotonic() - started < 120:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def _uvicorn_workers(master_pid: int) -> list[int]:
    """The master's children but multiprocessing's resource tracker."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return [int(pid) for pid in children if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]


def _settled_rss(workers: list[int], started: float) -> tuple[list[float], float]:
    """The workers' RSS once it has changed by under 1 MB for 3 s, and when that stretch began."""
    history: list[tuple[float, list[float]]] = []
    while time.monotonic() - started < 180:
        history.append((time.monotonic() - started, [rss_mb(pid) for pid in workers]))
        recent = history[-7:]
        first = recent[0][1]
        if len(recent) == 7 and all(abs(a - b) < 1 for _, row in recent for a, b in zip(row, first, strict=True)):
            return recent[-1][1], recent[0][0]
        time.sleep(0.5)
    return history[-1][1], history[-1][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-workers", action="store_true", help="leave out the uvicorn workers' start")
    database_url_argument(parser)
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"))
    parser.add_argument("--port", type=int, default=8192)
    args = parser.parse_args()

    embedders = load_embedders()
    from django.conf import settings

    agreement(embedders, settings.LLMOPS_CACHE_SEMANTIC_THRESHOLD)
    timing(embedders)
    load_cost()
    if not args.skip_workers:
        worker_start(args)


if __name__ == "__main__":
    main()
