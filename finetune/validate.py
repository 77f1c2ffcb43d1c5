"""Dataset validation: every bad sample, with its index or line number and the reason, before training.

:func:`validate` reads a dataset in any supported format, checks each sample and returns a
:class:`ValidationReport`. With problems it raises :class:`agent.core.errors.DatasetError` holding the
full report, unless ``skip_invalid`` is set, in which case the bad samples are left out and
counted. Training always runs it first.

Checks, per sample: the record parses in its format; turns are non-empty, use known roles,
start with the user (after an optional system turn), alternate user/assistant and end with an
assistant reply; images sit only in user turns; the number of ``<image>`` placeholders equals the
number of images; every image exists and decodes; and, when a processor is given, the rendered
sample fits in ``max_length`` tokens with its image tokens (which are never cut).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.errors import DatasetError, InputError
from agent.core.images import DECODERS, DEFAULT_MAX_PIXELS
from finetune.collator import resolve_image_path
from finetune.formats import (
    FORMATS,
    IMAGE_PLACEHOLDER,
    EmbeddedImage,
    Sample,
    SampleError,
    detect_format,
    iter_samples,
    read_records,
)

if TYPE_CHECKING:
    from finetune.collator import ConversationEncoder

logger = logging.getLogger(__name__)

MAX_LISTED_PROBLEMS = 200


@dataclass(frozen=True)
class Problem:
    """Why one sample cannot be used."""

    location: str
    reason: str

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


@dataclass
class ValidationReport:
    """The outcome of validating one dataset."""

    path: str
    format: str
    total: int
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    token_lengths: list[int] = field(default_factory=list)
    assistant_tokens: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        """The report as text: a count line, then one line per bad sample."""
        head = f"{self.path} ({self.format}): {len(self.samples)} of {self.total} samples are valid"
        if not self.problems:
            return head
        lines = [str(p) for p in self.problems[:MAX_LISTED_PROBLEMS]]
        if len(self.problems) > MAX_LISTED_PROBLEMS:
            lines.append(f"... and {len(self.problems) - MAX_LISTED_PROBLEMS} more")
        return head + f", {len(self.problems)} invalid:\n  " + "\n  ".join(lines)

    def summary(self) -> dict[str, Any]:
        """Numbers worth saving next to an adapter trained on this data."""
        images = sum(len(s.images) for s in self.samples)
        lengths = self.token_lengths
        return {
            "path": self.path,
            "format": self.format,
            "samples_total": self.total,
            "samples_valid": len(self.samples),
            "samples_skipped": len(self.problems),
            "images": images,
            "turns": sum(len(s.turns) for s in self.samples),
            "tokens_total": sum(lengths) if lengths else None,
            "tokens_max": max(lengths) if lengths else None,
            "tokens_mean": round(sum(lengths) / len(lengths), 1) if lengths else None,
            "assistant_tokens": self.assistant_tokens if lengths else None,
            "problems": Counter(_reason_kind(p.reason) for p in self.problems),
        }


def _reason_kind(reason: str) -> str:
    for kind in ("not found", "cannot be read", "placeholder", "longer than max_length", "alternate", "role"):
        if kind in reason:
            return kind
    return "other"


def check_structure(sample: Sample) -> None:
    """Raise :class:`SampleError` when a sample's turns cannot make a training conversation."""
    turns = sample.turns
    position = 0
    if turns and turns[0]["role"] == "system":
        position = 1
    if position >= len(turns):
        raise SampleError("has no user turn")
    expected = "user"
    for number in range(position, len(turns)):
        turn = turns[number]
        if turn["role"] == "system":
            raise SampleError(f"turn {number} is a system turn; only the first turn may be a system turn")
        if not turn["content"].strip():
            raise SampleError(f"turn {number} ({turn['role']}) is empty")
        if turn["role"] != expected:
            raise SampleError(
                f"turns do not alternate: turn {number} is {turn['role']!r} where {expected!r} was expected"
            )
        if turn["role"] == "assistant" and IMAGE_PLACEHOLDER in turn["content"]:
            raise SampleError(f"turn {number} (assistant) holds {IMAGE_PLACEHOLDER}; images go in user turns")
        expected = "assistant" if expected == "user" else "user"
    if turns[-1]["role"] != "assistant":
        raise SampleError("ends with a user turn that has no assistant reply")
    if sample.placeholder_count != len(sample.images):
        raise SampleError(
            f"has {sample.placeholder_count} {IMAGE_PLACEHOLDER} placeholder(s) but {len(sample.images)} image(s); "
            f"put one {IMAGE_PLACEHOLDER} in the user text per image"
        )


def check_images(
    sample: Sample, image_folder: str | Path | None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> None:
    """Raise :class:`SampleError` for the first image that is outside ``image_folder``, missing,
    of a format the chat does not accept, over ``max_pixels``, or that does not decode."""
    import warnings

    from PIL import Image, UnidentifiedImageError


    for image in sample.images:
        if not isinstance(image, str):
            _check_picture(image, max_pixels)
            continue
        path = resolve_image_path(image, image_folder)
        if not path.is_file():
            raise SampleError(f"image {image!r} not found (looked at {path})")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path, formats=list(DECODERS)) as opened:
                    width, height = opened.size
                    if width * height > max_pixels:
                        raise SampleError(
                            f"image {image!r} is {width}x{height} pixels, over the limit of {max_pixels}; resize it "
                            "or raise --max-image-pixels"
                        )
                    opened.verify()
        except Image.DecompressionBombError as exc:
            raise SampleError(
                f"image {image!r} is over the limit of {max_pixels} pixels ({exc}); resize it or raise --max-image-pixels"
            ) from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            if isinstance(exc, SampleError):
                raise
            raise SampleError(f"image {image!r} cannot be read ({type(exc).__name__}: {exc})") from None


def _check_picture(image: Any, max_pixels: int) -> None:
    """An image held in the row (:class:`~finetune.formats.EmbeddedImage`, or a decoded picture):
    readable, and within ``max_pixels``, as an image file must be."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = image.size
            if width * height > max_pixels:
                raise SampleError(
                    f"image {image!r} is {width}x{height} pixels, over the limit of {max_pixels}; resize it "
                    "or raise --max-image-pixels"
                )
            if isinstance(image, EmbeddedImage):
                image.verify()
    except Image.DecompressionBombError as exc:
        raise SampleError(
            f"image {image!r} is over the limit of {max_pixels} pixels ({exc}); resize it or raise --max-image-pixels"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        if isinstance(exc, SampleError):
            raise
        reason = "not an image in a format the chat accepts" if isinstance(exc, UnidentifiedImageError) else exc
        raise SampleError(f"image {image!r} cannot be read ({reason})") from None


def validate(
    data: str | Path,
    *,
    image_folder: str | Path | None = None,
    format: str | None = None,
    encoder: ConversationEncoder | None = None,
    skip_invalid: bool = False,
    max_image_pixels: int | None = None,
) -> ValidationReport:
    """Check every sample of a dataset; return the report or raise ``DatasetError`` listing the bad ones.

    ``format`` is one of ``llava``, ``sharegpt``, ``messages``, ``hf`` (``None`` or ``"auto"``
    detects it). ``encoder`` (a :class:`finetune.collator.ConversationEncoder` for the base model)
    adds the token-length check against its ``max_length``. With ``skip_invalid`` the bad samples
    are dropped and counted instead of stopping.
    """
    records, container = read_records(data)
    if not records:
        raise DatasetError(f"dataset {data} holds no samples")
    if format in (None, "auto"):
        fmt = "hf" if container == "hf" else detect_format(records)
    elif format in FORMATS:
        fmt = format
    else:
        raise DatasetError(f"format {format!r} is not supported; use auto or one of {', '.join(FORMATS)}")
    report = ValidationReport(path=str(data), format=fmt, total=len(records))
    for record, parsed in iter_samples(records, fmt):
        try:
            if isinstance(parsed, SampleError):
                raise parsed
            check_structure(parsed)
            check_images(parsed, image_folder, max_image_pixels or getattr(encoder, "max_image_pixels", DEFAULT_MAX_PIXELS))
            if encoder is not None:
                encoded = _encode(encoder, parsed)
                report.token_lengths.append(encoded.length)
                report.assistant_tokens += encoded.assistant_tokens
        except SampleError as exc:
            report.problems.append(Problem(record.location, str(exc)))
            continue
        report.samples.append(parsed)
    if report.problems and not skip_invalid:
        raise DatasetError(report.render() + "\nFix these samples, or pass --skip-invalid to leave them out")
    if report.problems:
        logger.warning("%s\nSkipping %d invalid sample(s)", report.render(), len(report.problems))
    if not report.samples:
        raise DatasetError(f"{data}: no valid samples left to train on\n{report.render()}")
    logger.info("%s", report.render())
    return report


def _encode(encoder: ConversationEncoder, sample: Sample) -> Any:
    try:
        return encoder.encode(sample)
    except InputError as exc:  # DatasetError, or the template refusing the conversation
        message = str(exc)
        prefix = f"{sample.location}: "
        raise SampleError(message[len(prefix) :] if message.startswith(prefix) else message) from None
