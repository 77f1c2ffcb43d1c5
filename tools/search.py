"""``search_images``: find indexed images by a text description or by a similar image.

The index (``memory.image_index``) holds CLIP embeddings in a Chroma collection; scores are
cosine similarities between the query's embedding and each image's. Fill it with
:func:`memory.image_index.index_images` (or ``llava-agent index <folder>``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from agent.core.chroma_auth import server_from_config
from agent.core.config import AppConfig
from agent.core.defaults import CLIP_MODEL, MAX_IMAGE_PIXELS
from memory.image_index import ImageIndex
from tools.base import LlavaTool, built_in_defaults

MAX_RESULTS = 100  # memory.image_index.MAX_K


class SearchImagesInput(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)  # NaN and infinities are refused like any bad value

    query: str = Field(
        min_length=1,
        description="What the wanted images show, in words (e.g. 'a dog on a beach'), or the path of an "
        "image file to find similar images (e.g. 'photos/dog.jpg').",
    )
    k: int = Field(5, ge=1, le=MAX_RESULTS, description=f"How many images to return, from 1 to {MAX_RESULTS}.")


class SearchImagesTool(LlavaTool):
    """Search the image index with a text or an image path."""

    name: str = "search_images"
    description: str = (
        "Find the user's own indexed pictures that match a description, or that look like a given image "
        "file. Returns file paths with similarity scores. Use it when the user asks to find, look up or "
        "show photos or images they have."
    )
    args_schema: type[BaseModel] = SearchImagesInput
    clip_model: str = Field(CLIP_MODEL, description="CLIP checkpoint the index was built with.")
    collection: str = "images"
    chroma_dir: Path | None = Field(
        None, description="Embedded store folder; with chroma_url also None, the built-in default <data_dir>/chroma."
    )
    chroma_url: str | None = Field(None, description="http(s)://host:port of a Chroma server.")
    allowed_dirs: list[Path] | None = Field(None, description="Folders query images may be read from.")
    max_image_pixels: int = Field(MAX_IMAGE_PIXELS, gt=0)
    chroma_server: Any = Field(None, exclude=True, description="Server credentials (agent.core.chroma_auth); never shown.")
    _index: ImageIndex | None = PrivateAttr(None)

    @classmethod
    def from_config(cls, config: AppConfig, manager: Any = None) -> SearchImagesTool:
        return cls(
            clip_model=config.tools.clip_model, collection=config.memory.image_collection,
            device=config.tools.device, chroma_dir=None if config.memory.chroma_url else config.chroma_dir,
            chroma_url=config.memory.chroma_url, allowed_dirs=config.allowed_dirs,
            max_image_pixels=config.tools.max_image_pixels, manager=manager,
            chroma_server=server_from_config(config.memory),
            allow_pickle_weights=config.tools.allow_pickle_weights,
        )

    @property
    def index(self) -> ImageIndex:
        """The image index this tool queries (opened on first use)."""
        if self._index is None:
            defaults = built_in_defaults()
            chroma_dir = self.chroma_dir if self.chroma_dir or self.chroma_url else defaults.chroma_dir
            allowed = self.allowed_dirs if self.allowed_dirs is not None else defaults.allowed_dirs
            self._index = ImageIndex(
                collection=self.collection, clip_model=self.clip_model, device=self.device,
                chroma_dir=chroma_dir, chroma_url=self.chroma_url, allowed_dirs=allowed,
                max_image_pixels=self.max_image_pixels, manager=self.get_manager(), chroma_server=self.chroma_server,
                allow_pickle_weights=self.allow_pickle_weights,
            )
        return self._index

    def _execute(self, query: str, k: int = 5) -> tuple[str, dict[str, Any]]:
        started = time.perf_counter()
        hits = self.index.search(query, k)
        artifact = {
            "query": query,
            "results": [{"path": h.path, "score": round(h.score, 4), "caption": h.caption} for h in hits],
            "seconds": round(time.perf_counter() - started, 4),
        }
        if not hits:
            return "No images are indexed yet; index a folder of images first.", artifact
        lines = [f"{n}. {h.path} (similarity {h.score:.3f})" for n, h in enumerate(hits, 1)]
        return f"Found {len(hits)} image(s) for {query!r}:\n" + "\n".join(lines), artifact
