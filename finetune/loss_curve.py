"""Draw the loss curve of a run as a PNG with Pillow.

Pillow is already a dependency; a line chart with axes, ticks and a legend needs nothing more,
so the fine-tuning path does not pull in matplotlib (tens of MB and a slow first import) for
one picture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

WIDTH, HEIGHT = 800, 480
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 40, 50
TRAIN_COLOUR = (31, 119, 180)
EVAL_COLOUR = (214, 39, 40)
GRID_COLOUR = (225, 225, 225)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw_step = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw_step), default=raw_step)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def draw_loss_curve(
    train: Sequence[tuple[float, float]],
    evaluation: Sequence[tuple[float, float]] = (),
    path: str | Path = "loss_curve.png",
    title: str = "loss",
) -> Path:
    """Draw ``(step, loss)`` points of training (and evaluation) loss; return the PNG path."""
    from PIL import Image, ImageDraw

    points = [p for p in (*train, *evaluation) if math.isfinite(p[1])]
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    left, top = MARGIN_LEFT, MARGIN_TOP
    right, bottom = WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM
    draw.text((left, 12), title, fill="black")
    if not points:
        draw.text((left, top + 20), "no loss was logged", fill="black")
        image.save(path)
        return Path(path)
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    y_low, y_high = min(p[1] for p in points), max(p[1] for p in points)
    x_high = x_high if x_high > x_low else x_low + 1
    pad = (y_high - y_low) * 0.05 or max(abs(y_high) * 0.05, 0.05)
    y_low, y_high = max(0.0, y_low - pad) if y_low >= 0 else y_low - pad, y_high + pad

    def to_xy(step: float, loss: float) -> tuple[float, float]:
        x = left + (step - x_low) / (x_high - x_low) * (right - left)
        y = bottom - (loss - y_low) / (y_high - y_low) * (bottom - top)
        return x, y

    for tick in _ticks(y_low, y_high):
        _, y = to_xy(x_low, tick)
        draw.line([(left, y), (right, y)], fill=GRID_COLOUR)
        draw.text((8, y - 6), f"{tick:.3g}", fill="black")
    for tick in _ticks(x_low, x_high):
        x, _ = to_xy(tick, y_low)
        draw.line([(x, bottom), (x, bottom + 5)], fill="black")
        draw.text((x - 10, bottom + 8), f"{tick:.0f}", fill="black")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) // 2 - 15, HEIGHT - 20), "step", fill="black")
    for series, colour, label, offset in ((train, TRAIN_COLOUR, "train", 0), (evaluation, EVAL_COLOUR, "eval", 1)):
        xy = [to_xy(s, v) for s, v in series if math.isfinite(v)]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for x, y in xy if len(xy) <= 50 else xy[-1:]:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        if xy:
            legend_y = top + 8 + 16 * offset
            draw.line([(right - 90, legend_y + 6), (right - 65, legend_y + 6)], fill=colour, width=3)
            draw.text((right - 60, legend_y), label, fill="black")
    image.save(path, format="PNG")
    return Path(path)
