"""Query latency of ``search_images``' index against a raw chromadb query on the same collection.

A collection is filled once with random normalised 512-d vectors (10k, then extended to 100k),
and at each size the same query vectors go through ``ImageIndex.search`` (our path: argument
checks, the CLIP-model check, the query, building results) and through a raw
``collection.query`` with the same ``n_results`` and ``include``, interleaved so both see the
same machine load. The query vectors are computed once, outside the timing; with ``--with-text``
the CLIP text encoding of a query is included on both sides as well (a real-size CLIP with
random weights): ours through ``ImageIndex.search(text)``, raw as tokenizer + text tower +
normalisation on the same weights, then ``collection.query``.

    python bench/bench_search.py                 # 10k and 100k
    python bench/bench_search.py --sizes 10000 --queries 100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from memory.chroma import release_writer_lock  # noqa: E402
from memory.image_index import ImageIndex  # noqa: E402

DIMENSION = 512


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def fill(collection, start: int, stop: int, rng: np.random.Generator, batch: int = 5000) -> None:
    for first in tqdm(range(start, stop, batch), desc=f"Inserting vectors to {stop}", unit="batch"):
        last = min(first + batch, stop)
        vectors = rng.standard_normal((last - first, DIMENSION), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"/images/{i:07d}.png" for i in range(first, last)]
        collection.add(ids=ids, embeddings=vectors, metadatas=[{"path": i} for i in ids], documents=[""] * len(ids))


def raw_text_encoder(model, processor):
    """Raw CLIP text encoding: tokenizer, text tower, normalisation."""
    import torch

    def encode(text: str) -> np.ndarray:
        with torch.inference_mode():
            tokens = processor.tokenizer([text], padding=True, truncation=True, max_length=77, return_tensors="pt")
            features = model.get_text_features(**tokens)
        vector = getattr(features, "pooler_output", features)[0].numpy()
        return vector / np.linalg.norm(vector)

    return encode


def measure(index: ImageIndex, collection, queries: np.ndarray, k: int, encode=None, texts=None) -> dict:
    ours, raw = [], []
    for number, vector in enumerate(queries):
        for side in ((0, 1) if number % 2 == 0 else (1, 0)):  # alternate which side goes first
            started = time.perf_counter()
            if side == 0:
                index.search(texts[number] if texts else vector, k)
                ours.append(time.perf_counter() - started)
            else:
                query = encode(texts[number]) if texts else vector
                collection.query(query_embeddings=[query], n_results=k)
                raw.append(time.perf_counter() - started)
    result = {
        "ours_p50_ms": 1000 * percentile(ours, 50), "ours_p95_ms": 1000 * percentile(ours, 95),
        "raw_p50_ms": 1000 * percentile(raw, 50), "raw_p95_ms": 1000 * percentile(raw, 95),
    }
    result["ratio_p50"] = result["raw_p50_ms"] / result["ours_p50_ms"]
    result["ratio_p95"] = result["raw_p95_ms"] / result["ours_p95_ms"]
    result["ratio_mean"] = statistics.fmean(raw) / statistics.fmean(ours)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--with-text", action="store_true", help="also time with the CLIP text encode on both sides")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    clip_id = "bench/clip-vit-base-patch32-random"
    if args.with_text:
        from tests.tool_models import build_clip

        clip_id = str(build_clip(work / "clip-base", size="base"))
    index = ImageIndex(clip_model=clip_id, device="cpu", chroma_dir=work / "chroma", allowed_dirs=[work])
    collection = index._open_collection(write=True)
    queries = rng.standard_normal((args.queries, DIMENSION), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    texts = [f"a photo of a red car number {i}" for i in range(min(args.queries, 100))]

    results = []
    stored = 0
    for size in sorted(args.sizes):
        fill(collection, stored, size, rng)
        stored = size
        measure(index, collection, queries[:20], args.k)  # warm up
        row = {"stored": collection.count(), "mode": "vector", **measure(index, collection, queries, args.k)}
        results.append(row)
        print(json.dumps(row))
        if args.with_text:
            with index.embedder.manager.use(index.embedder.key, index.embedder._load, device="cpu") as loaded:
                model, processor = loaded
            encode = raw_text_encoder(model, processor)
            measure(index, collection, queries[:5], args.k, encode, texts[:5])
            row = {"stored": collection.count(), "mode": "text+clip",
                   **measure(index, collection, queries[: len(texts)], args.k, encode, texts)}
            results.append(row)
            print(json.dumps(row))

    print(f"\n{'stored':>8} {'mode':>10} {'ours p50':>9} {'ours p95':>9} {'raw p50':>8} {'raw p95':>8} "
          f"{'ratio p50':>9} {'ratio p95':>9}")
    for row in results:
        print(f"{row['stored']:>8} {row['mode']:>10} {row['ours_p50_ms']:>8.2f}m {row['ours_p95_ms']:>8.2f}m "
              f"{row['raw_p50_ms']:>7.2f}m {row['raw_p95_ms']:>7.2f}m {row['ratio_p50']:>9.3f} {row['ratio_p95']:>9.3f}")
    print("ratio = raw latency / our latency (>= 0.9 means our overhead is at most ~10%)")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
    release_writer_lock(work / "chroma")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
