"""Indexing throughput of ``index_images`` against the raw CLIP image encoder on the same images.

A CLIP at the real ViT-B/32 size (random weights, built on the spot) embeds the same folder of
images two ways in one run, alternately:

* raw: open each file with PIL, run ``CLIPProcessor`` and ``CLIPModel.get_image_features`` in
  batches — the least any indexer must do;
* ours: ``ImageIndex.index_folder`` into a fresh Chroma store — walking the folder, hashing each
  file, decoding, embedding, normalising, writing vectors and metadata.

    python bench/bench_indexing.py --images 128 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from memory.chroma import release_writer_lock  # noqa: E402
from memory.image_index import ImageIndex  # noqa: E402
from tests.tool_models import build_clip  # noqa: E402


def make_images(folder: Path, count: int, rng: np.random.Generator) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        pixels = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
        path = folder / f"photo-{number:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def raw_throughput(model, processor, paths: list[Path], batch_size: int) -> float:
    import torch

    started = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(paths), batch_size):
            images = []
            for path in paths[first : first + batch_size]:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            features = model.get_image_features(pixel_values=pixels)
            getattr(features, "pooler_output", features).numpy()
    return len(paths) / (time.perf_counter() - started)


def ours_throughput(work: Path, clip: str, folder: Path, batch_size: int, run: int) -> float:
    store = work / f"chroma-{run}"
    index = ImageIndex(clip_model=clip, device="cpu", chroma_dir=store, allowed_dirs=[work])
    started = time.perf_counter()
    report = index.index_folder(folder, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - started
    release_writer_lock(store)
    assert report.added == len(list(folder.iterdir())), report.summary()
    return report.added / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="bench-indexing-"))
    clip = str(build_clip(work / "clip-base", size="base"))
    paths = make_images(work / "photos", args.images, np.random.default_rng(0))
    index = ImageIndex(clip_model=clip, device="cpu", chroma_dir=work / "warm", allowed_dirs=[work])
    with index.embedder._use() as (model, processor):  # the same weights both sides use
        raw_throughput(model, processor, paths[: args.batch_size], args.batch_size)  # warm up
        raw, ours = [], []
        for run in range(args.rounds):
            raw.append(raw_throughput(model, processor, paths, args.batch_size))
            ours.append(ours_throughput(work, clip, work / "photos", args.batch_size, run))
            print(f"round {run + 1}: raw {raw[-1]:.2f} img/s, index_images {ours[-1]:.2f} img/s")
    result = {
        "images": args.images, "batch_size": args.batch_size, "raw_images_per_s": max(raw),
        "ours_images_per_s": max(ours), "ratio": max(ours) / max(raw),
        "raw_runs": raw, "ours_runs": ours,
    }
    print(json.dumps(result))
    print(f"index_images {result['ours_images_per_s']:.2f} img/s vs raw CLIP {result['raw_images_per_s']:.2f} img/s "
          f"-> ratio {result['ratio']:.3f} (best of {args.rounds} rounds each)")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
