"""Image-caption pairs: the data of ``finetune clip`` and ``finetune caption``, read and checked.

Accepted data (``--pairs DATA``):

* a **CSV** file with a header naming an image column (``image``, ``file``, ``path`` or
  ``file_name``) and a caption column (``caption``, ``text`` or ``description``);
* a **JSONL** file of ``{"image": ..., "caption": ...}`` objects (same key choices), or a
  **JSON** file holding a list of them;
* a **folder** of images: its ``captions.csv``/``captions.jsonl``/``metadata.jsonl`` when there is
  one, else every image in it (recursively) with no caption.

Image paths are relative to ``image_folder`` (default: the data file's folder). Captions that
are missing or empty can be written by a captioning model: pass ``captioner`` (a function from a
list of images to a list of captions; the CLI wires the ``caption_image`` tool's model). Every bad
row is reported with its line and the reason before anything trains; ``skip_invalid`` leaves them
out instead.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.defaults import MAX_IMAGE_PIXELS
from agent.core.errors import DatasetError, ImageError
from agent.core.images import is_image_path, open_image_file

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_KEYS = ("image", "file", "path", "file_name", "filename")
CAPTION_KEYS = ("caption", "text", "description")
FOLDER_INDEXES = ("captions.csv", "captions.jsonl", "metadata.jsonl")
MAX_CAPTION_CHARS = 1000
MAX_LISTED_PROBLEMS = 50
Captioner = Callable[[Sequence["Image.Image"]], list[str]]


@dataclass(frozen=True)
class Pair:
    """One image and its caption, and where the row came from (``line 4``, ``image photos/a.jpg``)."""

    image: Path
    caption: str
    location: str


@dataclass
class PairsReport:
    """What was read: the usable pairs, the bad rows, and how many captions a model wrote."""

    source: str
    pairs: list[Pair] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    captioned: int = 0

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "pairs": len(self.pairs), "invalid": len(self.problems),
                "captioned_by_model": self.captioned, "distinct_captions": len({p.caption for p in self.pairs})}


def _pick(row: dict[str, Any], keys: Sequence[str]) -> Any:
    lowered = {str(k).strip().lower(): v for k, v in row.items()}
    for key in keys:
        if key in lowered:
            return lowered[key]
    return None


def _read_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"pairs file {path} cannot be read ({exc}); give a UTF-8 CSV or JSONL file") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip().lower() for h in reader.fieldnames or []]
        if not set(header) & set(IMAGE_KEYS) or not set(header) & set(CAPTION_KEYS):
            raise DatasetError(
                f"pairs file {path} has the header {reader.fieldnames!r}; it needs an image column (one of "
                f"{', '.join(IMAGE_KEYS)}) and a caption column (one of {', '.join(CAPTION_KEYS)})"
            )
        rows, last = [], reader.line_num
        for row in reader:
            first, last = last + 1, reader.line_num
            if last > first:  # a quoted field ran over line ends: an unclosed quote swallows the rows after it
                row = {"__error__": f"has a quoted field that runs from line {first} to line {last} (an unclosed "
                                    "quote?); close the quote, or keep each caption on one line"}
            rows.append((f"line {first}", row))
        return rows
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"pairs file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, list):
            raise DatasetError(f"pairs file {path} must hold a JSON list of {{'image', 'caption'}} objects")
        return [(f"item {n}", row) for n, row in enumerate(data)]
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                rows.append((f"line {number}", {"__error__": f"is not valid JSON ({exc.msg})"}))
        return rows
    raise DatasetError(f"pairs file {path} is not a .csv, .jsonl or .json file, nor a folder of images")


def read_pairs(
    data: str | os.PathLike[str],
    *,
    image_folder: str | os.PathLike[str] | None = None,
    captioner: Captioner | None = None,
    skip_invalid: bool = False,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> PairsReport:
    """Read and check image-caption pairs (see the module docstring for the layouts)."""
    source = Path(data).expanduser()
    if not source.exists():
        raise DatasetError(f"pairs data {str(data)!r} does not exist; give a CSV/JSONL file or a folder of images")
    rows: list[tuple[str, dict[str, Any]]]
    if source.is_dir():
        index = next((source / name for name in FOLDER_INDEXES if (source / name).is_file()), None)
        if index is not None:
            rows, base = _read_rows(index), source
        else:
            images = sorted(p for p in source.rglob("*") if is_image_path(p) and p.is_file())
            rows, base = [(f"image {p.relative_to(source)}", {"image": str(p), "caption": ""}) for p in images], source
    else:
        rows, base = _read_rows(source), source.parent
    base = Path(image_folder).expanduser() if image_folder is not None else base
    report = PairsReport(source=str(source))
    pending: list[tuple[str, Path, str]] = []  # rows whose images decode: (location, path, caption)
    for location, row in rows:
        if not isinstance(row, dict):
            report.problems.append(f"{location}: is a JSON {type(row).__name__}, expected an object")
            continue
        if "__error__" in row:
            report.problems.append(f"{location}: {row['__error__']}")
            continue
        image, caption = _pick(row, IMAGE_KEYS), _pick(row, CAPTION_KEYS)
        if not isinstance(image, str) or not image.strip():
            report.problems.append(f"{location}: has no image path (a column or key named {' or '.join(IMAGE_KEYS)})")
            continue
        if caption is not None and not isinstance(caption, str):
            report.problems.append(f"{location}: caption {caption!r} is not text")
            continue
        caption = " ".join((caption or "").split())
        if len(caption) > MAX_CAPTION_CHARS:
            report.problems.append(f"{location}: the caption has {len(caption)} characters, over {MAX_CAPTION_CHARS}")
            continue
        path = Path(image).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            open_image_file(path, max_image_pixels, label=image).close()
        except (ImageError, FileNotFoundError) as exc:
            reason = f"image {image!r} does not exist" if not path.exists() else str(exc)
            report.problems.append(f"{location}: {reason}")
            continue
        pending.append((location, path, caption))
    missing = [entry for entry in pending if not entry[2]]
    if missing and captioner is None:
        for location, path, _ in missing:
            report.problems.append(f"{location}: image {path.name!r} has no caption; write one, or let the "
                                   "captioning model write the missing ones (--caption-missing)")
        pending = [entry for entry in pending if entry[2]]
    elif missing:
        logger.info("Captioning %d image(s) without a caption", len(missing))
        written: dict[Path, str] = {}
        for start in range(0, len(missing), 16):
            batch = missing[start : start + 16]
            pictures = [open_image_file(path, max_image_pixels) for _, path, _ in batch]
            written.update(zip([path for _, path, _ in batch], captioner(pictures), strict=True))
        report.captioned = len(missing)
        pending = [(loc, path, caption or " ".join(written[path].split())) for loc, path, caption in pending]
    report.pairs = [Pair(path, caption, location) for location, path, caption in pending if caption]
    if report.problems and not skip_invalid:
        shown = "\n  ".join(report.problems[:MAX_LISTED_PROBLEMS])
        more = len(report.problems) - MAX_LISTED_PROBLEMS
        raise DatasetError(
            f"{len(report.problems)} bad row(s) in {source}:\n  {shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nfix them, or pass --skip-invalid to leave them out"
        )
    if not report.pairs:
        raise DatasetError(f"no usable image-caption pairs in {source}")
    return report


def split_pairs(pairs: Sequence[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """``(train, held_out)``: a seeded random ``fraction`` of the pairs held out (at least one of each)."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"the held-out fraction must be between 0 and 1, got {fraction}")
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    held = max(1, round(len(shuffled) * fraction))
    if held >= len(shuffled):
        raise DatasetError(f"{len(shuffled)} pair(s) are too few to hold {fraction:.0%} out; give more pairs")
    return shuffled[held:], shuffled[:held]


def load_images(pairs: Sequence[Pair], max_image_pixels: int = MAX_IMAGE_PIXELS) -> list[Image.Image]:
    return [open_image_file(pair.image, max_image_pixels) for pair in pairs]


# -- the training loop's plan, shared by finetune clip and finetune caption --------------------------
def step_plan(pair_count: int, batch_size: int, epochs: float, max_steps: int | None) -> tuple[int, int, int]:
    """(batch size, total steps, warm-up steps) for ``pair_count`` training pairs."""
    batch_size = min(batch_size, pair_count)
    steps_per_epoch = max(1, pair_count // batch_size)
    total = max_steps or max(1, math.ceil(epochs * steps_per_epoch))
    return batch_size, total, max(1, total // 20)


def cosine_schedule(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def shuffled_batches(pairs: Sequence[Pair], batch_size: int, seed: int) -> Iterator[list[Pair]]:
    """Endless batches: each pass over ``pairs`` in a new seeded order; a pass's short remainder is dropped."""
    rng = random.Random(seed)
    order: list[Pair] = []
    while True:
        if len(order) < batch_size:
            order = list(pairs)
            rng.shuffle(order)
        batch, order = order[:batch_size], order[batch_size:]
        yield batch
