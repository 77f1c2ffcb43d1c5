"""``search_images``: find indexed images by a text description or by a similar image.

The index (``memory.image_index``) holds CLIP embeddings in a Chroma collection; scores are
cosine similarities between the query's embedding and each image's. Fill it with
:func:`memory.image_index.index_images` (or ``llava-agent index <folder>``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, PrivateAttr

from tools.base import LlavaTool, ranged

if TYPE_CHECKING:
    from agent.config import AppConfig
    from memory.image_index import ImageIndex


ResultCount = ranged(int, 1, 100)


class SearchImagesInput(BaseModel):
    query: str = Field(
        description="What the wanted images show, in words (e.g. 'a dog on a beach'), or the path of an "
        "image file to find similar images (e.g. 'photos/dog.jpg')."
    )
    k: ResultCount = Field(5, description="How many images to return, from 1 to 100.")


class SearchImagesTool(LlavaTool):
    """Search the image index with a text or an image path."""

    name: str = "search_images"
    description: str = (
        "Find the user's own indexed pictures that match a description, or that look like a given image "
        "file. Returns file paths with similarity scores. Use it when the user asks to find, look up or "
        "show photos or images they have."
    )
    args_schema: type[BaseModel] = SearchImagesInput
    clip_model: str = Field("openai/clip-vit-base-patch32", description="CLIP checkpoint the index was built with.")
    collection: str = "images"
    chroma_dir: Path | None = Field(None, description="Embedded store folder; None with chroma_url None = config's.")
    chroma_url: str | None = Field(None, description="http(s)://host:port of a Chroma server.")
    allowed_dirs: list[Path] | None = Field(None, description="Folders query images may be read from.")
    max_image_pixels: int = Field(50_000_000, gt=0)
    _index: ImageIndex | None = PrivateAttr(None)

    @classmethod
    def from_config(cls, config: AppConfig, manager: Any = None) -> SearchImagesTool:
        return cls(
            clip_model=config.tools.clip_model, collection=config.memory.image_collection,
            device=config.tools.device, chroma_dir=None if config.memory.chroma_url else config.chroma_dir,
            chroma_url=config.memory.chroma_url, allowed_dirs=config.allowed_dirs,
            max_image_pixels=config.tools.max_image_pixels, manager=manager,
        )

    @property
    def index(self) -> ImageIndex:
        """The image index this tool queries (opened on first use)."""
        if self._index is None:
            from agent.config import load_config
            from memory.image_index import ImageIndex

            config = load_config() if self.chroma_dir is None and self.chroma_url is None else None
            chroma_dir = self.chroma_dir or (config.chroma_dir if config and not config.memory.chroma_url else None)
            chroma_url = self.chroma_url or (config.memory.chroma_url if config else None)
            allowed = self.allowed_dirs if self.allowed_dirs is not None else (config or load_config()).allowed_dirs
            self._index = ImageIndex(
                collection=self.collection, clip_model=self.clip_model, device=self.device,
                chroma_dir=chroma_dir, chroma_url=chroma_url, allowed_dirs=allowed,
                max_image_pixels=self.max_image_pixels, manager=self.get_manager(),
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
