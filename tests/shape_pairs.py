"""A synthetic image-caption set: one solid shape (circle, square or triangle) in one of four colours.

Captions are ``"a red circle"`` and the like: twelve distinct captions, so a model that has
learnt nothing retrieves the right kind of image 1 time in 12.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

SHAPE_COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 40, 220), "yellow": (235, 215, 30)}
SHAPES = ("circle", "square", "triangle")


SIDES = ("left", "right")


def draw_on_side(colour: str, where: str, rng: random.Random, side: int = 48):
    """A square of ``colour`` in the left or right half of the picture."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), tuple(rng.randint(235, 255) for _ in range(3)))
    size = rng.randint(side // 3, side * 5 // 12)
    x = rng.randint(0, side // 2 - size) if where == "left" else rng.randint(side // 2, side - size)
    y = rng.randint(0, side - size)
    ImageDraw.Draw(image).rectangle([x, y, x + size, y + size], fill=SHAPE_COLOURS[colour])
    return image


def draw_shape(colour: str, shape: str, rng: random.Random, side: int = 48):
    from PIL import Image, ImageDraw

    background = tuple(rng.randint(235, 255) for _ in range(3))
    image = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(image)
    size = rng.randint(side * 2 // 3, side * 9 // 10)
    x, y = rng.randint(0, side - size), rng.randint(0, side - size)
    fill = SHAPE_COLOURS[colour]
    if shape == "circle":
        draw.ellipse([x, y, x + size, y + size], fill=fill)
    elif shape == "square":
        draw.rectangle([x, y, x + size, y + size], fill=fill)
    else:
        draw.polygon([(x + size // 2, y), (x, y + size), (x + size, y + size)], fill=fill)
    return image


def write_shape_pairs(
    folder: Path, count: int, seed: int, name: str, fmt: str = "csv", shapes: tuple[str, ...] = SHAPES,
    sides: bool = False,
) -> Path:
    """Write ``count`` images (every caption about equally often) and a CSV or JSONL of pairs; returns the file.

    ``sides=True`` writes the other task: a square on the left or the right (``"a red square on the left"``).
    """
    rng = random.Random(seed)
    folder = Path(folder)
    (folder / name).mkdir(parents=True, exist_ok=True)
    combos = [(c, s) for c in sorted(SHAPE_COLOURS) for s in (SIDES if sides else shapes)]
    rows = []
    for index in range(count):
        colour, shape = combos[index % len(combos)] if index < count - count % len(combos) else rng.choice(combos)
        relative = f"{name}/{index:04d}.png"
        if sides:
            draw_on_side(colour, shape, rng).save(folder / relative)
            rows.append({"image": relative, "caption": f"a {colour} square on the {shape}"})
        else:
            draw_shape(colour, shape, rng).save(folder / relative)
            rows.append({"image": relative, "caption": f"a {colour} {shape}"})
    rng.shuffle(rows)
    if fmt == "csv":
        path = folder / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["image", "caption"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path
