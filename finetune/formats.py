"""Dataset formats: read the instruction data people already have into one sample shape.

Supported formats (auto-detected from the first record, or named with ``--format``):

* ``llava``: LLaVA's instruction JSON, a list of
  ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value": "<image>\\n..."}]}``;
  ``image`` is one path (or a list of paths) and may be absent for text-only samples.
* ``sharegpt``: LLaMA-Factory's sharegpt layout, ``{"conversations": [{"from", "value"}],
  "images": [...], "system": "..."}``.
* ``messages``: OpenAI / Hugging Face chat style, usually JSONL:
  ``{"messages": [{"role", "content"}], "images": [...]}`` where ``content`` is a string holding
  ``<image>`` placeholders or a list of ``{"type": "text"|"image"}`` blocks.
* ``hf``: a Hugging Face ``datasets`` folder (``save_to_disk``) or a ``.parquet``/``.arrow`` file
  whose rows are in one of the formats above (images may be stored as pictures in the rows: they
  are read as :class:`EmbeddedImage`, decoded only when used, so one damaged picture is one bad
  row, and checked against the pixel limit like any image file).

Every format becomes a :class:`Sample`: ``system``/``user``/``assistant`` turns whose text holds
one ``<image>`` placeholder per image, in order, plus the list of images. Structural problems in
a record raise :class:`SampleError`; :mod:`finetune.validate` collects them for every record.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.errors import DatasetError

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGE_PLACEHOLDER = "<image>"
FORMATS = ("llava", "sharegpt", "messages", "hf")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
HF_SUFFIXES = (".parquet", ".arrow")


class SampleError(ValueError):
    """One record cannot be used; the message is the reason, without the record's location."""


@dataclass(frozen=True, repr=False)
class EmbeddedImage:
    """A picture stored in a dataset row as its encoded bytes, decoded only when it is used.

    :attr:`size` reads the header alone (a decompression bomb is measured, not decoded);
    :meth:`convert` decodes it. Unreadable bytes raise PIL's errors from either.
    """

    data: bytes
    name: str = "an embedded image"

    def _open(self) -> Any:
        from PIL import Image as PILImage

        from agent.core.images import DECODERS

        return PILImage.open(io.BytesIO(self.data), formats=list(DECODERS))

    @property
    def size(self) -> tuple[int, int]:
        with self._open() as opened:
            return opened.size

    def verify(self) -> None:
        with self._open() as opened:
            opened.verify()

    def convert(self, mode: str) -> Image:
        with self._open() as opened:
            opened.load()
            return opened.convert(mode)

    def __repr__(self) -> str:
        return f"{self.name} ({len(self.data)} bytes, stored in the row)"


@dataclass(frozen=True)
class Record:
    """One raw record of a dataset file and where it came from (``sample 3``, ``line 4``, ``row 2``)."""

    index: int
    location: str
    data: Any


@dataclass
class Sample:
    """One training conversation in the common shape.

    ``turns`` are ``{"role": "system"|"user"|"assistant", "content": str}`` whose text holds one
    ``<image>`` placeholder per image; ``images`` are paths (relative to the image folder) or
    pictures already in memory (Hugging Face datasets rows).
    """

    index: int
    location: str
    turns: list[dict[str, str]]
    images: list[str | Image] = field(default_factory=list)
    id: str | None = None

    @property
    def placeholder_count(self) -> int:
        return sum(turn["content"].count(IMAGE_PLACEHOLDER) for turn in self.turns)


# --------------------------------------------------------------------------- reading files


def read_records(path: str | Path) -> tuple[list[Record], str]:
    """Read the raw records of a dataset file or folder; return them with the container kind.

    The kind is ``"json"``, ``"jsonl"`` or ``"hf"``; it decides how locations are named
    (``sample N`` counted from 0, ``line N`` counted from 1, ``row N`` counted from 0).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset {path} does not exist; pass the path of a .json, .jsonl or datasets folder")
    if path.is_dir() or path.suffix in HF_SUFFIXES:
        return _read_hf(path), "hf"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"dataset {path} cannot be read ({exc}); check it is UTF-8 text") from None
    stripped = text.lstrip()
    if path.suffix == ".jsonl" or (stripped and stripped[0] == "{" and "\n{" in stripped):
        return _read_jsonl(path, text), "jsonl"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"dataset {path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "a .json file must hold one list of samples, a .jsonl file one sample per line"
        ) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DatasetError(f"dataset {path} holds a JSON {type(data).__name__}; it must hold a list of samples")
    return [Record(i, f"sample {i}", item) for i, item in enumerate(data)], "json"


def _read_jsonl(path: Path, text: str) -> list[Record]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            data = _Unparsable(f"is not valid JSON ({exc.msg} at column {exc.colno})")
        records.append(Record(len(records), f"line {number}", data))
    return records


@dataclass(frozen=True)
class _Unparsable:
    reason: str


def _read_hf(path: Path) -> list[Record]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency of the fine-tuning extra
        raise DatasetError(f"reading {path} needs the `datasets` package; pip install datasets") from None
    try:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
        else:
            builder = "parquet" if path.suffix == ".parquet" else "arrow"
            loaded = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many unrelated types for unreadable folders
        raise DatasetError(
            f"dataset {path} cannot be opened with datasets ({exc}); pass a save_to_disk folder, "
            "a .parquet/.arrow file, or a .json/.jsonl file"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DatasetError(f"dataset {path} has splits {sorted(loaded)} but no 'train' split")
        loaded = loaded["train"]
    for name, feature in loaded.features.items():  # pictures stay encoded: each row's are checked on their own
        undecoded = _undecoded(feature, datasets)
        if undecoded != feature:
            loaded = loaded.cast_column(name, undecoded)
    return [Record(i, f"row {i}", dict(row)) for i, row in enumerate(loaded)]


def _undecoded(feature: Any, datasets: Any) -> Any:
    """``feature`` with every ``Image`` in it set not to decode (lists and dicts of them too)."""
    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if isinstance(feature, dict):
        return {key: _undecoded(value, datasets) for key, value in feature.items()}
    if isinstance(feature, list):
        return [_undecoded(value, datasets) for value in feature]
    inner = getattr(feature, "feature", None)
    if inner is not None and hasattr(datasets, type(feature).__name__):  # List / Sequence / LargeList
        changed = _undecoded(inner, datasets)
        if changed != inner:
            rebuilt = copy.copy(feature)
            rebuilt.feature = changed
            return rebuilt
    return feature


# --------------------------------------------------------------------------- detection


def detect_format(records: Iterable[Record]) -> str:
    """Name the format of the first well-formed record: ``llava``, ``sharegpt`` or ``messages``."""
    for record in records:
        data = record.data
        if not isinstance(data, dict):
            continue
        if "messages" in data:
            return "messages"
        if "conversations" in data:
            return "sharegpt" if "images" in data else "llava"
    raise DatasetError(
        "cannot tell the dataset format: no record has a 'conversations' list (LLaVA, sharegpt) or a "
        "'messages' list (JSONL chat); pass --format with one of llava, sharegpt, messages"
    )


# --------------------------------------------------------------------------- parsing records


def parse_record(record: Record, fmt: str) -> Sample:
    """Turn one raw record into a :class:`Sample`, or raise :class:`SampleError` saying why not."""
    data = record.data
    if isinstance(data, _Unparsable):
        raise SampleError(data.reason)
    if not isinstance(data, dict):
        raise SampleError(f"is a JSON {type(data).__name__}, expected an object")
    parser = _PARSERS.get(fmt)
    if parser is None:
        raise DatasetError(f"format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
    turns, images = parser(data)
    sample_id = data.get("id")
    return Sample(record.index, record.location, turns, images, None if sample_id is None else str(sample_id))


def _image_list(value: Any, key: str) -> list[str | Image]:
    if value is None:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    images: list[str | Image] = []
    for position, item in enumerate(values):
        if isinstance(item, str) and item.strip():
            images.append(item)
        elif isinstance(item, dict) and isinstance(item.get("bytes"), (bytes, bytearray)) and item["bytes"]:
            name = item.get("path") if isinstance(item.get("path"), str) and item["path"] else f"'{key}'[{position}]"
            images.append(EmbeddedImage(bytes(item["bytes"]), name))  # a datasets Image stored in the row
        elif isinstance(item, dict) and isinstance(item.get("path"), str):
            images.append(item["path"])  # a datasets Image that refers to a file
        elif hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image from a datasets row
            images.append(item)
        else:
            raise SampleError(f"'{key}' entry {position} is {item!r}; expected an image path")
    return images


def _from_value_turns(data: dict[str, Any], role_key: str, text_key: str) -> list[dict[str, str]]:
    conversations = data.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise SampleError("has no 'conversations' list (or it is empty)")
    turns = []
    for position, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise SampleError(f"turn {position} is a JSON {type(turn).__name__}, expected an object")
        raw_role = turn.get(role_key)
        role = SHAREGPT_ROLES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            raise SampleError(f"turn {position} has unknown role {raw_role!r}; use one of human, gpt, system")
        text = turn.get(text_key)
        if not isinstance(text, str):
            raise SampleError(f"turn {position} has no '{text_key}' text")
        turns.append({"role": role, "content": text})
    return turns


def _parse_llava(data: dict[str, Any]) -> tuple[list[dict[str, str]], list[str | Image]]:
    turns = _from_value_turns(data, "from", "value")
    images = _image_list(data.get("image", data.get("images")), "image")
    return turns, images


def _parse_sharegpt(data: dict[str, Any]) -> tuple[list[dict[str, str]], list[str | Image]]:
    turns = _from_value_turns(data, "from", "value")
    system = data.get("system")
    if isinstance(system, str) and system.strip():
        turns.insert(0, {"role": "system", "content": system})
    return turns, _image_list(data.get("images"), "images")


def _parse_messages(data: dict[str, Any]) -> tuple[list[dict[str, str]], list[str | Image]]:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SampleError("has no 'messages' list (or it is empty)")
    images = _image_list(data.get("images"), "images")
    inline_images: list[str | Image] = []
    turns = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            raise SampleError(f"message {position} is a JSON {type(message).__name__}, expected an object")
        role = message.get("role")
        if role not in ROLES:
            raise SampleError(f"message {position} has unknown role {role!r}; use one of {', '.join(ROLES)}")
        content = message.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = _blocks_to_text(content, position, inline_images)
        elif content is None:
            raise SampleError(f"message {position} has no 'content' (a string or a list of blocks)")
        else:
            raise SampleError(
                f"message {position} has a 'content' that is a JSON {type(content).__name__} ({content!r:.40}); "
                "give a string or a list of blocks"
            )
        turns.append({"role": role, "content": text})
    if inline_images and images:
        raise SampleError("names images both in content blocks and in 'images'; use one of the two")
    return turns, images or inline_images


def _blocks_to_text(blocks: list[Any], position: int, inline_images: list[str | Image]) -> str:
    parts = []
    for number, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif kind in ("image", "image_url"):
            parts.append(IMAGE_PLACEHOLDER)
            source = block.get("image") or block.get("path") or block.get("url")
            if isinstance(block.get("image_url"), dict):
                source = block["image_url"].get("url")
            if source is not None:
                inline_images.extend(_image_list(source, "image"))
        else:
            raise SampleError(
                f"message {position} block {number} is {block!r}; expected {{'type': 'text', 'text': ...}} "
                "or {'type': 'image'}"
            )
    return "".join(parts)


_PARSERS = {"llava": _parse_llava, "sharegpt": _parse_sharegpt, "messages": _parse_messages}


def iter_samples(records: Iterable[Record], fmt: str) -> Iterator[tuple[Record, Sample | SampleError]]:
    """Parse every record, yielding the sample or the error that stopped it."""
    for record in records:
        try:
            row_format = detect_format([record]) if fmt == "hf" else fmt
        except DatasetError:
            yield record, SampleError("has neither a 'conversations' nor a 'messages' list")
            continue
        try:
            yield record, parse_record(record, row_format)
        except SampleError as exc:
            yield record, exc


# --------------------------------------------------------------------------- to chat turns


def to_chat_turns(sample: Sample, pictures: list[Image]) -> list[dict[str, Any]]:
    """Build the chat turns ``agent.llava.prompting.render_prompt`` takes, with the loaded pictures in place.

    Text around each ``<image>`` placeholder is split into text blocks; the placeholder becomes
    an image block holding the next picture. Whitespace that only separated a placeholder from
    the text (LLaVA's ``"<image>\\n"``) is dropped.
    """
    if len(pictures) != sample.placeholder_count:
        raise DatasetError(
            f"{sample.location}: {sample.placeholder_count} <image> placeholder(s) but {len(pictures)} image(s)"
        )
    remaining = iter(pictures)
    turns: list[dict[str, Any]] = []
    for turn in sample.turns:
        pieces = turn["content"].split(IMAGE_PLACEHOLDER)
        if len(pieces) == 1:
            turns.append({"role": turn["role"], "content": turn["content"]})
            continue
        blocks: list[dict[str, Any]] = []
        for number, piece in enumerate(pieces):
            if number > 0:
                blocks.append({"type": "image", "image": next(remaining)})
            if piece.strip():
                blocks.append({"type": "text", "text": piece.strip()})
        turns.append({"role": turn["role"], "content": blocks})
    return turns
