"""The CLIP image index behind ``search_images``: a Chroma collection of image embeddings.

:func:`index_images` walks a folder recursively and is incremental: each file's SHA-256 is
stored, so new files are added, changed files re-embedded, deleted files removed, and unchanged
files (same size and modification time, or same hash) cost nothing. Images are embedded in
batches with a progress bar while the next batch is read from disk; unreadable files are
skipped and listed in the returned :class:`IndexReport`. With a captioner, indexed images that
have no caption yet are captioned too, keeping their embeddings.

The CLIP model that built a collection is stored in its metadata: its id and its fingerprint
(:func:`agent.core.model_manager.model_fingerprint`, which changes when a folder's weights
change, e.g. after ``llava-agent finetune clip`` wrote into it again). The fingerprint decides
whether a model is the one that built the collection, so ``./clip``, ``clip/`` and the folder's
absolute path are one model; a collection from before fingerprints were kept is trusted by the
model it names. Indexing into or querying a collection with another model is refused with a
message saying which model built it and how to rebuild it: :meth:`ImageIndex.reindex`
(``llava-agent index --reindex``) re-embeds every
indexed image with the current model into a side collection, batch by batch (an interrupted
rebuild resumes where it stopped; captions are kept), then swaps it in.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.chroma_auth import server_from_config
from agent.core.config import AppConfig, load_config
from agent.core.defaults import CLIP_MODEL, MAX_IMAGE_PIXELS
from agent.core.errors import InputError, LlavaAgentError, StoreError
from agent.core.files import open_allowed_image, read_allowed_image, resolve_allowed_path
from agent.core.images import is_image_path, open_image_file
from agent.core.model_manager import ModelManager, model_fingerprint
from memory.chroma import acquire_writer_lock, open_chroma_client, release_writer_lock
from memory.embedders import ClipEmbedder, clip_embedding_function
from memory.index_captions import caption_into_report, store_captions
from memory.index_report import IndexReport, SkippedFile, not_captioned

if TYPE_CHECKING:
    import numpy as np
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection


logger = logging.getLogger(__name__)

MAX_K = 100
REINDEX_SUFFIX = ".reindex"
RETIRED_SUFFIX = ".retired"


@dataclass(frozen=True)
class ImageHit:
    """One search result: the image's path and its cosine similarity to the query."""

    path: str
    score: float
    caption: str | None = None


def same_model_name(first: str, second: str) -> bool:
    """Whether two ``clip_model`` settings name one model: the same id, or paths to the same folder."""
    if first == second:
        return True
    one, two = Path(first).expanduser(), Path(second).expanduser()
    if one.is_dir() and two.is_dir():
        return os.path.samefile(one, two)
    return os.path.normpath(one) == os.path.normpath(two)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ImageIndex:
    """A Chroma collection of CLIP image embeddings, keyed by each image's resolved path.

    Give either ``chroma_dir`` (embedded store), ``chroma_url`` (server) or an open ``client``.
    """

    def __init__(
        self,
        *,
        collection: str = "images",
        clip_model: str = CLIP_MODEL,
        device: str = "auto",
        chroma_dir: str | os.PathLike[str] | None = None,
        chroma_url: str | None = None,
        client: ClientAPI | None = None,
        allowed_dirs: Iterable[str | os.PathLike[str]] | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        manager: ModelManager | None = None,
        chroma_server: Any = None,
        allow_pickle_weights: bool = False,
    ) -> None:
        if client is None and (chroma_dir is None) == (chroma_url is None):
            raise InputError("ImageIndex needs exactly one of chroma_dir, chroma_url or client")
        self.collection_name = collection
        self.clip_model = clip_model
        self.chroma_dir = Path(chroma_dir).expanduser() if chroma_dir is not None else None
        self.chroma_url = chroma_url
        self.chroma_server = chroma_server  # credentials, tenant, database (agent.core.chroma_auth.ChromaServer)
        self.allowed_dirs = [Path(d) for d in allowed_dirs] if allowed_dirs is not None else [Path.cwd()]
        self.max_image_pixels = max_image_pixels
        self.embedder = ClipEmbedder(clip_model, device, manager)
        self.embedder.allow_pickle_weights = allow_pickle_weights
        self._client = client
        self._collection: Collection | None = None
        self._writer = False
        self._fingerprint: str | None = None

    @property
    def clip_fingerprint(self) -> str:
        """The fingerprint of this index's CLIP weights (computed once)."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.clip_model)
        return self._fingerprint

    def _model_metadata(self) -> dict[str, Any]:
        return {"clip_model": self.clip_model, "clip_fingerprint": self.clip_fingerprint, "hnsw:space": "cosine"}

    @classmethod
    def from_config(cls, config: AppConfig | None = None, manager: ModelManager | None = None) -> ImageIndex:
        config = config or load_config()
        return cls(
            collection=config.memory.image_collection,
            clip_model=config.tools.clip_model,
            device=config.tools.device,
            chroma_dir=None if config.memory.chroma_url else config.chroma_dir,
            chroma_url=config.memory.chroma_url,
            allowed_dirs=config.allowed_dirs,
            max_image_pixels=config.tools.max_image_pixels,
            manager=manager,
            chroma_server=server_from_config(config.memory),
            allow_pickle_weights=config.tools.allow_pickle_weights,
        )

    # -- the store -------------------------------------------------------------------------------
    def _get_client(self, write: bool) -> ClientAPI:
        if write and not self._writer and self.chroma_dir is not None:
            acquire_writer_lock(self.chroma_dir)
            self._writer = True
        if self._client is None:
            if self.chroma_url is not None:
                self._client = open_chroma_client(url=self.chroma_url, server=self.chroma_server)
            else:
                self._client = open_chroma_client(path=self.chroma_dir)
        return self._client

    def _open_collection(self, *, write: bool) -> Collection | None:
        """The collection (created when writing), checked to hold embeddings of our CLIP model."""
        if self._collection is None or write:
            client = self._get_client(write)
            function = clip_embedding_function(self.clip_model, self.embedder.device, self.embedder.manager)
            try:
                if write:
                    collection = client.get_or_create_collection(
                        self.collection_name, embedding_function=function, metadata=self._model_metadata(),
                    )
                else:
                    names = {getattr(c, "name", c) for c in client.list_collections()}
                    if self.collection_name not in names:
                        return None
                    collection = client.get_collection(self.collection_name, embedding_function=function)
            except LlavaAgentError:
                raise
            except Exception as exc:
                raise StoreError(
                    f"cannot open the image collection {self.collection_name!r} ({type(exc).__name__}: {exc}); "
                    "check the Chroma store or re-index into another collection (memory.image_collection)"
                ) from None
            self._check_model(collection)
            self._collection = collection
        return self._collection

    def _built_with_this_model(self, metadata: dict[str, Any]) -> bool:
        """Whether a collection's metadata names this index's CLIP weights (by fingerprint, not by name)."""
        stored, stored_print = metadata.get("clip_model"), metadata.get("clip_fingerprint")
        if stored_print is not None:
            return stored_print == self.clip_fingerprint
        # a collection from before fingerprints were kept is trusted by the model it names
        return isinstance(stored, str) and same_model_name(stored, self.clip_model)

    def _check_model(self, collection: Collection) -> None:
        metadata = collection.metadata or {}
        if self._built_with_this_model(metadata):
            return
        stored = metadata.get("clip_model")
        if isinstance(stored, str) and same_model_name(stored, self.clip_model):
            what = f"an earlier version of CLIP model {stored!r} (its weights have changed since)"
        else:
            what = f"CLIP model {stored!r}, not {self.clip_model!r}"
        raise StoreError(
            f"the image collection {self.collection_name!r} was built with {what}; rebuild it with the "
            f"current model with `llava-agent index --reindex`, or set tools.clip_model back to the model "
            "that built it"
        )

    def count(self) -> int:
        collection = self._open_collection(write=False)
        return 0 if collection is None else collection.count()

    # -- indexing --------------------------------------------------------------------------------
    def index_folder(
        self, folder: str | os.PathLike[str], *, batch_size: int = 32, captioner: Any = None, progress: bool = True
    ) -> IndexReport:
        """Bring the collection up to date with the images under ``folder`` (recursively).

        ``captioner`` (e.g. a :class:`tools.caption.CaptionImageTool`) stores a caption per image,
        also for images indexed earlier without one (their embeddings are kept, not recomputed).
        An image the captioner fails on stays indexed without a caption and is listed in the
        report's ``uncaptioned``; a caption model that cannot load ends the run, after the
        embeddings of the batch at hand are written. An entry that cannot be read (a broken or
        looping symlink, an unreadable or undecodable file) is skipped and listed in the report;
        it never ends the run. The store's writer lock is held for this run only.
        """
        held = self._writer
        try:
            return self._index_folder(folder, batch_size=batch_size, captioner=captioner, progress=progress)
        finally:
            if self._writer and not held and self.chroma_dir is not None:

                release_writer_lock(self.chroma_dir)
                self._writer = False

    def _index_folder(
        self, folder: str | os.PathLike[str], *, batch_size: int, captioner: Any, progress: bool
    ) -> IndexReport:
        from tqdm.auto import tqdm

        started = time.perf_counter()
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        root = resolve_allowed_path(folder, self.allowed_dirs)
        if not root.is_dir():
            raise InputError(f"{str(folder)!r} is not a folder; give the folder of images to index")
        collection = self._open_collection(write=True)
        report = IndexReport(folder=str(root), captioning=captioner is not None)

        existing: dict[str, dict[str, Any]] = {}
        with_caption: set[str] = set()
        stored = collection.get(include=["metadatas", "documents"] if captioner is not None else ["metadatas"])
        prefix = str(root) + os.sep
        documents = stored.get("documents") or [None] * len(stored["ids"])
        for item_id, metadata, document in zip(stored["ids"], stored["metadatas"] or [], documents, strict=False):
            if item_id.startswith(prefix):
                existing[item_id] = dict(metadata or {})
                if document and document.strip():
                    with_caption.add(item_id)

        to_embed: list[tuple[Path, dict[str, Any]]] = []
        to_caption: list[tuple[Path, dict[str, Any]]] = []  # indexed and unchanged, without a caption yet
        seen: set[str] = set()
        for path in sorted(p for p in root.rglob("*") if is_image_path(p)):
            try:
                resolved = resolve_allowed_path(path, self.allowed_dirs)
                if not resolved.is_file():
                    continue
                stat = resolved.stat()
            except (LlavaAgentError, OSError, RuntimeError, ValueError) as exc:  # one bad entry never ends the run
                report.skipped.append(SkippedFile(str(path), str(exc)))
                continue
            item_id = str(path)  # the path inside the folder; a symlink keeps its own name
            seen.add(item_id)
            old = existing.get(item_id)
            wants_caption = captioner is not None and item_id not in with_caption
            if old and old.get("size") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns:
                report.unchanged += 1
                if wants_caption:
                    to_caption.append((resolved, {"path": item_id}))
                continue
            if stat.st_size == 0:
                report.skipped.append(SkippedFile(item_id, "empty file (0 bytes)"))
                continue
            metadata = {"path": item_id, "sha256": file_sha256(resolved), "size": stat.st_size,
                        "mtime_ns": stat.st_mtime_ns}
            if old and old.get("sha256") == metadata["sha256"]:
                collection.update(ids=[item_id], metadatas=[{**old, **metadata}])
                report.unchanged += 1
                if wants_caption:
                    to_caption.append((resolved, {"path": item_id}))
                continue
            to_embed.append((resolved, {**metadata, "_new": old is None}))

        removed = [item_id for item_id in existing if item_id not in seen]
        for start in range(0, len(removed), 1000):
            collection.delete(ids=removed[start : start + 1000])
        report.removed = len(removed)

        batches = [to_embed[i : i + batch_size] for i in range(0, len(to_embed), batch_size)]
        bar = tqdm(total=len(to_embed), desc="Indexing images", unit="img", disable=not progress or not to_embed)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-reader") as reader:
            pending = reader.submit(self._read_batch, batches[0]) if batches else None
            for number in range(len(batches)):
                loaded = pending.result()
                pending = reader.submit(self._read_batch, batches[number + 1]) if number + 1 < len(batches) else None
                images, metadatas = [], []
                for (_resolved, original), (image, metadata) in zip(batches[number], loaded, strict=True):
                    if image is None:
                        report.skipped.append(SkippedFile(original["path"], str(metadata)))
                        if not original["_new"]:  # a file that became unreadable leaves the index
                            collection.delete(ids=[original["path"]])
                            report.removed += 1
                        continue
                    images.append(image)
                    metadatas.append(metadata)
                if images:
                    self._store_batch(collection, images, metadatas, captioner, report)
                bar.update(len(batches[number]))
        bar.close()
        if to_caption:
            self._caption_indexed(collection, to_caption, captioner, report, batch_size=batch_size, progress=progress)
        report.seconds = time.perf_counter() - started
        logger.info("Indexed %s", report.summary())
        return report

    def _read_batch(self, batch: Sequence[tuple[Path, dict[str, Any]]]) -> list[tuple[Any, dict[str, Any] | str]]:
        """Each file's image and metadata, or ``None`` and why it could not be read."""
        out: list[tuple[Any, dict[str, Any] | str]] = []
        for resolved, metadata in batch:
            try:
                picture = open_allowed_image(resolved, self.allowed_dirs, self.max_image_pixels, label=metadata["path"])
                out.append((picture, metadata))
            except (LlavaAgentError, OSError, ValueError) as exc:
                out.append((None, str(exc)))
        return out

    def _store_batch(self, collection: Collection, images: list[Any], metadatas: list[dict[str, Any]],
                     captioner: Any, report: IndexReport) -> None:
        vectors = self.embedder.embed_images(images, batch_size=len(images))
        captions = [""] * len(images)
        try:
            if captioner is not None:
                captions = caption_into_report(captioner, images, [m["path"] for m in metadatas], report)
        finally:  # the embeddings are written even when the caption model cannot run
            for metadata in metadatas:
                if metadata.pop("_new"):
                    report.added += 1
                else:
                    report.updated += 1
            collection.upsert(
                ids=[m["path"] for m in metadatas], embeddings=vectors, metadatas=metadatas, documents=captions
            )

    def _caption_indexed(self, collection: Collection, items: Sequence[tuple[Path, dict[str, Any]]], captioner: Any,
                         report: IndexReport, *, batch_size: int, progress: bool) -> None:
        """Caption indexed images that have none yet, batch by batch, keeping their stored embeddings."""
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="Captioning indexed images", unit="img", disable=not progress)
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            images, ids = [], []
            for (_resolved, metadata), (image, loaded) in zip(batch, self._read_batch(batch), strict=True):
                if image is None:
                    report.uncaptioned.append(not_captioned(metadata["path"], str(loaded), report.folder))
                    continue
                images.append(image)
                ids.append(metadata["path"])
            captions = caption_into_report(captioner, images, ids, report) if images else []
            store_captions(collection, {i: text for i, text in zip(ids, captions, strict=True) if text.strip()})
            bar.update(len(batch))
        bar.close()

    # -- rebuilding with another CLIP ------------------------------------------------------------
    def reindex(self, *, batch_size: int = 32, progress: bool = True) -> IndexReport:
        """Re-embed every indexed image with this index's CLIP model, resumably, then swap the result in.

        The new embeddings go to a side collection (``<name>.reindex``) batch by batch, each
        batch written as soon as it is embedded; a run that is interrupted resumes from what that
        collection holds. Captions and file metadata are carried over; files that are gone are
        dropped. Finally the old collection is retired and the new one takes its name.
        """
        from tqdm.auto import tqdm

        started = time.perf_counter()
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        client = self._get_client(write=True)
        function = clip_embedding_function(self.clip_model, self.embedder.device, self.embedder.manager)
        name, side_name, retired_name = (self.collection_name, self.collection_name + REINDEX_SUFFIX,
                                         self.collection_name + RETIRED_SUFFIX)
        report = IndexReport(folder=f"reindex of {name!r} with {self.clip_model}")
        names = {getattr(c, "name", c) for c in client.list_collections()}
        if name not in names and side_name in names and retired_name in names:
            self._swap(client, name, side_name, retired_name, function)  # a run stopped between the two renames
            report.seconds = time.perf_counter() - started
            return report
        if name not in names:
            raise StoreError(f"there is no image collection {name!r} to rebuild; index a folder first")
        old = client.get_collection(name, embedding_function=function)
        if self._built_with_this_model(old.metadata or {}):
            report.unchanged = old.count()
            report.seconds = time.perf_counter() - started
            logger.info("The image collection %r is already built with %s", name, self.clip_model)
            return report
        if side_name in names:
            side = client.get_collection(side_name, embedding_function=function)
            if (side.metadata or {}).get("clip_fingerprint") != self.clip_fingerprint:
                client.delete_collection(side_name)  # an interrupted rebuild for yet another model
        side = client.get_or_create_collection(side_name, embedding_function=function,
                                               metadata={**self._model_metadata(), "rebuild_of": name})
        done = set(side.get(include=[])["ids"])
        stored = old.get(include=["metadatas", "documents"])
        items = list(zip(stored["ids"], stored["metadatas"] or [], stored["documents"] or [], strict=False))
        report.unchanged = sum(item_id in done for item_id, _, _ in items)
        todo = [item for item in items if item[0] not in done]
        bar = tqdm(total=len(todo), desc="Re-embedding images", unit="img", disable=not progress or not todo)
        for start in range(0, len(todo), batch_size):
            images, ids, metadatas, documents = [], [], [], []
            for item_id, metadata, document in todo[start : start + batch_size]:
                path = Path(str((metadata or {}).get("path", item_id)))
                try:
                    resolved = resolve_allowed_path(path, self.allowed_dirs)
                    images.append(open_image_file(resolved, self.max_image_pixels, label=str(path)))
                except (LlavaAgentError, OSError) as exc:
                    if not path.exists():
                        report.removed += 1
                    else:
                        report.skipped.append(SkippedFile(str(path), str(exc)))
                    continue
                ids.append(item_id)
                metadatas.append(dict(metadata or {"path": item_id}))
                documents.append(document or "")
            if images:
                vectors = self.embedder.embed_images(images, batch_size=len(images))
                side.upsert(ids=ids, embeddings=vectors, metadatas=metadatas, documents=documents)
                report.added += len(ids)
            bar.update(len(todo[start : start + batch_size]))
        bar.close()
        self._swap(client, name, side_name, retired_name, function)
        report.seconds = time.perf_counter() - started
        logger.info("Rebuilt %s", report.summary())
        return report

    def _swap(self, client: ClientAPI, name: str, side_name: str, retired_name: str, function: Any) -> None:
        """Retire the old collection and give the rebuilt one its name (each step a rename)."""
        names = {getattr(c, "name", c) for c in client.list_collections()}
        if retired_name in names and name in names:
            client.delete_collection(retired_name)
        if name in names:
            client.get_collection(name, embedding_function=function).modify(name=retired_name)
        client.get_collection(side_name, embedding_function=function).modify(name=name)
        client.delete_collection(retired_name)
        self._collection = None

    # -- searching -------------------------------------------------------------------------------
    def embed_query(self, query: str | os.PathLike[str]) -> np.ndarray:
        """Embed a text query, or an image query when ``query`` names an image file (by its suffix)."""
        if isinstance(query, os.PathLike) or (isinstance(query, str) and is_image_path(query)):
            image, _ = read_allowed_image(query, self.allowed_dirs, self.max_image_pixels)
            return self.embedder.embed_images([image])[0]
        if not isinstance(query, str) or not query.strip():
            raise InputError("the search query is empty; describe the images to find, or give an image path")
        return self.embedder.embed_texts([query])[0]

    def search(self, query: str | os.PathLike[str] | Sequence[float], k: int = 5) -> list[ImageHit]:
        """The ``k`` indexed images most similar to a text, an image path, or a query vector."""
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InputError(f"k = {k!r} must be an integer from 1 to {MAX_K}")
        collection = self._open_collection(write=False)
        if collection is None:
            return []
        vector = self.embed_query(query) if isinstance(query, (str, os.PathLike)) else query
        try:
            result = collection.query(
                query_embeddings=[vector], n_results=k, include=["distances", "metadatas", "documents"]
            )
        except Exception as exc:
            raise StoreError(
                f"the image collection {self.collection_name!r} could not be queried ({type(exc).__name__}: "
                f"{exc}); re-index it with the current CLIP model"
            ) from None
        documents = (result.get("documents") or [[]])[0] or [None] * len(result["ids"][0])
        return [
            ImageHit(path=str(meta.get("path", item_id)), score=1.0 - float(distance), caption=doc or None)
            for item_id, meta, distance, doc in zip(
                result["ids"][0], result["metadatas"][0], result["distances"][0], documents, strict=False
            )
        ]


def index_images(folder: str | os.PathLike[str], config: AppConfig | None = None, **kwargs: Any) -> IndexReport:
    """Index (incrementally) the images under ``folder`` into the configured collection."""
    return ImageIndex.from_config(config).index_folder(folder, **kwargs)


def search(query: str | os.PathLike[str], k: int = 5, config: AppConfig | None = None) -> list[ImageHit]:
    """Search the configured image collection with a text or an image path."""
    return ImageIndex.from_config(config).search(query, k)
