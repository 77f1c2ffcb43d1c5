"""The image rules: which formats are accepted, how big, how images are decoded and named.

This module owns the image policy of the whole application: the formats (:data:`IMAGE_FORMATS`,
with their MIME types and file suffixes), the pixel limit, and the text that stands for an
image no longer shown as pixels (:func:`earlier_image_reference`). The chat, the attachments,
the tools and the image index all decode through it, so they accept exactly the same images.

:func:`load_image` turns whatever a caller put in a message into an RGB ``PIL.Image``: a PIL
image, raw bytes, a base64 string, a ``data:`` URL, a local path or ``file://`` URL, or (only
when explicitly allowed) an ``http(s)://`` URL. :func:`open_image_file` decodes a file a tool
reads.

Every failure raises :class:`agent.core.errors.ImageError` naming where the image was
(``message 2, block 1``), what was wrong and what to do. Images over
:data:`DEFAULT_MAX_PIXELS` are refused before their pixels are decoded, so a
decompression bomb never reaches memory.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlparse

from agent.core.defaults import MAX_IMAGE_PIXELS
from agent.core.errors import ImageError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = MAX_IMAGE_PIXELS
"""Largest image (width x height) accepted; larger ones are refused as possible decompression bombs."""

IMAGE_FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    # Pillow format name: (MIME type, file suffixes)
    "PNG": ("image/png", (".png",)),
    "JPEG": ("image/jpeg", (".jpg", ".jpeg")),
    "GIF": ("image/gif", (".gif",)),
    "WEBP": ("image/webp", (".webp",)),
    "BMP": ("image/bmp", (".bmp",)),
    "TIFF": ("image/tiff", (".tif", ".tiff")),
    "MPO": ("image/jpeg", ()),  # the multi-picture JPEG some cameras write, under a .jpg name
    "ICO": ("image/x-icon", (".ico",)),
    "PPM": ("image/x-portable-anymap", (".ppm", ".pgm", ".pbm")),
}
"""Every image format accepted anywhere (chat, attachments, tools, index); nothing else is decoded."""
SUPPORTED_FORMATS = tuple(IMAGE_FORMATS)
DECODERS = tuple(name for name in IMAGE_FORMATS if name != "MPO")
"""The Pillow plugins tried on untrusted data (MPO files are opened by the JPEG plugin); no other plugin
sees it (EPS would run Ghostscript)."""
IMAGE_SUFFIXES = frozenset(suffix for _, suffixes in IMAGE_FORMATS.values() for suffix in suffixes)
"""File suffixes of the supported formats (how folders are scanned and paths recognised)."""
FORMATS_HINT = "PNG, JPEG, GIF, WebP, BMP, TIFF, ICO or PPM"


def mime_type(image_format: str | None) -> str | None:
    """The MIME type of a Pillow format name, or None when the format is not supported."""
    entry = IMAGE_FORMATS.get((image_format or "").upper())
    return entry[0] if entry else None


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """Whether a path names a file of a supported format, judged by its suffix."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def earlier_image_reference(name: str | None, caption: str | None = None) -> str:
    """The text that stands for an image no longer shown as pixels: ``[earlier image: NAME — caption: ...]``.

    The system prompt explains this form to the model, which can pass NAME (a path) to a tool.
    """
    name = " ".join(str(name).split()) if name else None  # one line: a file name cannot break the text
    caption = " ".join(str(caption).split()) if caption else None
    text = f"[earlier image: {name}" if name else "[earlier image"
    return text + (f" — caption: {caption}]" if caption else "]")

REMOTE_TIMEOUT_S = 20.0
MAX_REMOTE_BYTES = 64 * 1024 * 1024

_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I
)
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/=\s_-]+$")  # no ".": paths have one, base64 never


@dataclass(frozen=True)
class ImageLocation:
    """Where an image sits in a conversation, used to word errors."""

    message_index: int | None = None
    block_index: int | None = None

    def describe(self) -> str:
        parts = []
        if self.message_index is not None:
            parts.append(f"message {self.message_index}")
        if self.block_index is not None:
            parts.append(f"block {self.block_index}")
        return ", ".join(parts) if parts else "image input"


def _fail(location: ImageLocation, problem: str, advice: str) -> ImageError:
    return ImageError(f"{location.describe()}: {problem}; {advice}")


def _preview(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[:limit] + "..."


def load_image(
    source: Any,
    *,
    location: ImageLocation | None = None,
    allow_remote: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    mime_type: str | None = None,
) -> Image.Image:
    """Return ``source`` as a validated RGB ``PIL.Image``.

    ``source`` may be a ``PIL.Image.Image``, ``bytes``, a base64 string, a ``data:`` URL, a
    local path (``str`` or ``os.PathLike``), a ``file://`` URL, or an ``http(s)://`` URL when
    ``allow_remote`` is true. ``mime_type``, when given, must name an image type.
    """
    from PIL import Image

    location = location or ImageLocation()
    if mime_type is not None and not str(mime_type).lower().startswith("image/"):
        raise _fail(
            location, f"mime type {mime_type!r} is not an image type", "send an image/png or image/jpeg"
        )
    if isinstance(source, Image.Image):
        return _validated(source, location, max_pixels, "PIL image")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(source), location, max_pixels, "image bytes")
    if isinstance(source, os.PathLike):
        return _read_file(Path(source), location, max_pixels)
    if not isinstance(source, str):
        raise _fail(
            location,
            f"an image of type {type(source).__name__} is not supported",
            "pass a PIL image, bytes, base64 text, a data URL or a file path",
        )
    text = source.strip()
    if not text:
        raise _fail(location, "the image reference is empty", "pass image data, a data URL or a file path")
    data_url = _DATA_URL.match(text)
    if data_url:
        mime = (data_url.group("mime") or "").lower()
        if mime and not mime.startswith("image/"):
            raise _fail(
                location, f"data URL of type {mime!r} is not an image", "send an image/png or image/jpeg"
            )
        payload = text[data_url.end() :]
        if data_url.group("b64"):
            raw = _b64decode(payload, location)
        else:
            raw = unquote(payload).encode("latin-1", errors="replace")
        return _decode_bytes(raw, location, max_pixels, "data URL")
    scheme = urlparse(text).scheme.lower()
    if scheme in ("http", "https"):
        if not allow_remote:
            raise _fail(
                location,
                f"fetching the remote image {_preview(text)!r} is disabled",
                "download it and pass a local path or base64 data, or enable allow_remote_images",
            )
        return _decode_bytes(_fetch(text, location), location, max_pixels, text)
    if scheme == "file":
        return _read_file(Path(unquote(urlparse(text).path)), location, max_pixels)
    if len(scheme) > 1 and "://" in text:
        raise _fail(
            location,
            f"URL scheme {scheme!r} in {_preview(text)!r} is not supported",
            "use a path, data: or http(s)",
        )
    path = Path(text).expanduser()
    if _is_file(path):
        return _read_file(path, location, max_pixels)
    if len(text) >= 32 and _BASE64_CHARS.match(text):
        return _decode_bytes(_b64decode(text, location), location, max_pixels, "base64 data")
    return _read_file(path, location, max_pixels)


def _is_file(path: Path) -> bool:
    """``Path.is_file`` that says False for strings no file system takes (too long, NUL bytes...)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _b64decode(payload: str, location: ImageLocation) -> bytes:
    cleaned = re.sub(r"\s+", "", payload)
    try:
        if "-" in cleaned or "_" in cleaned:
            return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _fail(
            location,
            f"the image data {_preview(payload)!r} is neither valid base64 nor an existing file",
            "send base64-encoded image bytes, a data URL or the path of an image file",
        ) from None


def _read_file(path: Path, location: ImageLocation, max_pixels: int) -> Image.Image:
    try:
        exists, is_file = path.exists(), path.is_file()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
        reason = getattr(exc, "strerror", None) or exc
        raise _fail(location, f"image path {_preview(str(path))!r} cannot be checked ({reason})",
                    "pass the path of an existing image file") from None
    if not exists:
        raise _fail(location, f"image file {str(path)!r} does not exist", "check the path")
    if not is_file:
        raise _fail(location, f"{str(path)!r} is not a file", "pass the path of an image file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _fail(
            location, f"image file {str(path)!r} cannot be read ({exc})", "check its permissions"
        ) from None
    return _decode_bytes(raw, location, max_pixels, str(path))


def _fetch(url: str, location: ImageLocation) -> bytes:
    import urllib.request

    logger.info("Fetching remote image %s", url)
    request = urllib.request.Request(url, headers={"User-Agent": "llava-agent"})
    try:
        with urllib.request.urlopen(request, timeout=REMOTE_TIMEOUT_S) as response:  # noqa: S310 (scheme checked)
            raw = response.read(MAX_REMOTE_BYTES + 1)
    except OSError as exc:
        raise _fail(
            location, f"the image at {url!r} cannot be fetched ({exc})", "check the URL or pass a local file"
        ) from None
    if len(raw) > MAX_REMOTE_BYTES:
        raise _fail(
            location, f"the image at {url!r} is over {MAX_REMOTE_BYTES} bytes", "download and shrink it first"
        )
    return raw


def _decode_bytes(raw: bytes, location: ImageLocation, max_pixels: int, origin: str) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    if not raw:
        raise _fail(
            location, f"the image from {_preview(origin)} is empty (0 bytes)", "send a non-empty image file"
        )
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below replaces PIL's warning-or-error heuristics.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # only the supported formats are even tried: no other Pillow plugin (EPS runs Ghostscript) sees the data
            image = Image.open(io.BytesIO(raw), formats=DECODERS)
    except UnidentifiedImageError:
        raise _fail(
            location,
            f"the data from {_preview(origin)} is not an image in a supported format",
            f"send one of {', '.join(SUPPORTED_FORMATS)}",
        ) from None
    except Image.DecompressionBombError as exc:
        raise _fail(
            location, f"the image from {_preview(origin)} is too large ({exc})", "resize it"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise _fail(
            location, f"the image from {_preview(origin)} is corrupt ({exc})", "re-save or re-encode it"
        ) from None
    if image.format and image.format.upper() not in SUPPORTED_FORMATS:
        raise _fail(
            location,
            f"image format {image.format} from {_preview(origin)} is not supported",
            f"convert it to one of {', '.join(SUPPORTED_FORMATS)}",
        )
    _check_size(image.size, location, max_pixels, origin)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError as exc:
        raise _fail(
            location, f"the image from {_preview(origin)} is too large ({exc})", "resize it"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise _fail(
            location,
            f"the image from {_preview(origin)} is corrupt or truncated ({exc})",
            "re-save or re-encode it",
        ) from None
    return _validated(image, location, max_pixels, origin)


def _check_size(size: tuple[int, int], location: ImageLocation, max_pixels: int, origin: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise _fail(
            location,
            f"the image from {_preview(origin)} has no pixels ({width}x{height})",
            "send a real image",
        )
    if width * height > max_pixels:
        raise _fail(
            location,
            f"the image from {_preview(origin)} is {width}x{height} = {width * height:,} pixels, over the "
            f"limit of {max_pixels:,} (a possible decompression bomb)",
            "resize it before sending",
        )


def _validated(image: Image.Image, location: ImageLocation, max_pixels: int, origin: str) -> Image.Image:
    _check_size(image.size, location, max_pixels, origin)
    if image.mode != "RGB":
        try:
            image = (
                image.convert("RGBA").convert("RGB")
                if "A" in image.getbands() or image.mode == "P"
                else image.convert("RGB")
            )
        except (OSError, ValueError) as exc:
            raise _fail(
                location,
                f"the image from {_preview(origin)} cannot be converted to RGB ({exc})",
                "re-save it",
            ) from None
    return image


def image_name(source: Any) -> str | None:
    """A short human name for an image source (a file name), used in text references to it."""
    if isinstance(source, os.PathLike):
        return Path(source).name
    if isinstance(source, str):
        text = source.strip()
        if text.startswith("data:") or len(text) > 2048:
            return None
        parsed = urlparse(text)
        if parsed.scheme in ("http", "https", "file"):
            name = Path(unquote(parsed.path)).name
            return name or None
        name = Path(text).name
        # base64 data has no ".", so a dotted last component is a file name
        return name if len(text) < 1024 and "." in name else None
    filename = getattr(source, "filename", None)
    return Path(filename).name if filename else None


def _unreadable(label: str, exc: Exception) -> ImageError:
    # PIL's "cannot identify image file <_io.BytesIO object at 0x...>" says nothing the user can act on
    from PIL import UnidentifiedImageError

    reason = "" if isinstance(exc, UnidentifiedImageError) else f" ({type(exc).__name__}: {exc})"
    return ImageError(f"file {label!r} is not a readable image in a supported format{reason}; give a {FORMATS_HINT} file")


def verified_format(data: bytes, label: str) -> str:
    """The format of the image file ``data`` (checked whole, not decoded), or a clear :class:`ImageError`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=DECODERS) as image:
            image_format = image.format or ""
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _unreadable(label, exc) from None
    return image_format


def open_image_file(
    path: Path | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS, *, label: str | None = None
) -> Image.Image:
    """Decode an image file a tool reads into RGB, refusing other formats, corrupt files and images over ``max_pixels``.

    ``path`` may be an open binary file (see :func:`agent.core.files.open_allowed_image`). Only the
    decoders of :data:`SUPPORTED_FORMATS` are tried, and the size is read from the header
    before any pixel is decoded, so a file claiming huge dimensions is refused without allocating
    memory for it.
    """
    from PIL import Image, UnidentifiedImageError

    label = label or str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=DECODERS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"image {label!r} is {width}x{height} = {width * height} pixels, over the limit of "
                        f"{max_pixels}; resize it or raise tools.max_image_pixels"
                    )
                return image.convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"image {label!r} is over the limit of {max_pixels} pixels ({exc}); resize it or raise "
            "tools.max_image_pixels"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _unreadable(label, exc) from None
