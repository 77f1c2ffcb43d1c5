"""Captions in the image index: caption pictures so that one failure costs only its own caption,
and store captions beside the embeddings a collection already holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agent.core.errors import ModelLoadError, ModelNotFoundError
from memory.index_report import IndexReport, not_captioned

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection


def caption_each(captioner: Any, images: Sequence[Any], paths: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Captions for ``images``, in order, and ``(path, reason)`` for each image the captioner failed on.

    An image that fails gets the caption "". A failing batch is captioned again image by image,
    so one bad picture costs only its own caption. A caption model that cannot be found or
    loaded would fail every image: that error is raised.
    """
    try:
        captions = [str(text) for text in captioner.caption_images(list(images))]
        if len(captions) != len(images):
            raise ValueError(f"the captioner returned {len(captions)} captions for {len(images)} images")
    except (ModelNotFoundError, ModelLoadError):
        raise
    except Exception as exc:  # a captioner may fail in any way on one picture (decoding, memory, its own checks)
        if len(images) == 1:
            return [""], [(paths[0], f"captioning failed ({type(exc).__name__}: {exc})")]
        captions, failures = [], []
        for image, path in zip(images, paths, strict=True):
            caption, failed = caption_each(captioner, [image], [path])
            captions += caption
            failures += failed
        return captions, failures
    return captions, []


def store_captions(collection: Collection, captions: Mapping[str, str]) -> None:
    """Set the captions (documents) of indexed items, keeping their embeddings, in one write."""
    if not captions:
        return
    # Chroma embeds the documents of an update that comes without embeddings: give the stored ones back
    stored = collection.get(ids=list(captions), include=["embeddings"])
    collection.update(
        ids=stored["ids"], embeddings=stored["embeddings"], documents=[captions[item_id] for item_id in stored["ids"]]
    )


def caption_into_report(captioner: Any, images: list[Any], paths: list[str], report: IndexReport) -> list[str]:
    """Captions for ``images`` ("" for one the captioner failed on, listed in the report)."""
    captions, failures = caption_each(captioner, images, paths)
    report.captioned += sum(bool(text.strip()) for text in captions)
    report.uncaptioned += [not_captioned(path, reason, report.folder) for path, reason in failures]
    return captions
