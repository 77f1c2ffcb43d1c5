"""search_images end to end: a real embedded Chroma store indexed with a tiny random CLIP."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from langchain_tests.integration_tests import ToolsIntegrationTests
from PIL import Image

from memory.chroma import release_writer_lock
from memory.image_index import ImageIndex
from tests.tool_models import session_tool_models
from tools.search import SearchImagesTool

pytestmark = pytest.mark.integration


@functools.lru_cache(maxsize=1)
def indexed_album() -> dict[str, Path]:
    """A small album indexed once per process into its own store."""
    root = session_tool_models()["clip"].parent / "search-album"
    album, store = root / "album", root / "chroma"
    album.mkdir(parents=True)
    for index, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 250, 250)]):
        Image.new("RGB", (32, 32), colour).save(album / f"{index}.png")
    clip = str(session_tool_models()["clip"])
    ImageIndex(clip_model=clip, device="cpu", chroma_dir=store, allowed_dirs=[root]).index_folder(album, progress=False)
    release_writer_lock(store)
    return {"root": root, "album": album, "store": store, "clip": Path(clip)}


def search_tool(**overrides) -> SearchImagesTool:
    data = indexed_album()
    settings = {"clip_model": str(data["clip"]), "device": "cpu", "chroma_dir": data["store"],
                "allowed_dirs": [data["root"]]}
    return SearchImagesTool(**{**settings, **overrides})


def call(tool, **args):
    return tool.invoke({"type": "tool_call", "id": "call-1", "name": tool.name, "args": args})


def test_text_query_returns_ranked_paths_and_scores():
    message = call(search_tool(), query="a red picture", k=3)
    results = message.artifact["results"]
    assert message.status == "success" and len(results) == 3
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    for result in results:
        assert Path(result["path"]).parent == indexed_album()["album"] and result["path"] in message.content


def test_image_query_finds_the_image_itself_first():
    query = indexed_album()["album"] / "2.png"
    results = call(search_tool(), query=str(query), k=4).artifact["results"]
    assert results[0]["path"] == str(query) and results[0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_query_image_outside_the_allowed_folders_is_refused(tmp_path):
    outside = tmp_path / "q.png"
    Image.new("RGB", (8, 8)).save(outside)
    message = call(search_tool(), query=str(outside))
    assert message.status == "error" and "outside the allowed folders" in message.content


@pytest.mark.parametrize(("k", "bound"), [(0, "greater than or equal to 1"), (101, "less than or equal to 100")])
def test_k_out_of_range_is_refused(k, bound):
    message = call(search_tool(), query="cat", k=k)
    assert message.status == "error"
    assert message.content == (
        f"Error running search_images with k={k}: k: Input should be {bound}. Please fix the arguments and try again."
    )


def test_empty_store_says_so(tmp_path):
    message = call(search_tool(chroma_dir=tmp_path / "empty-store"), query="a cat")
    assert message.status == "success" and message.artifact["results"] == []
    assert "No images are indexed yet" in message.content


class TestSearchImagesToolIntegration(ToolsIntegrationTests):
    @property
    def tool_constructor(self):
        return SearchImagesTool

    @property
    def tool_constructor_params(self) -> dict:
        data = indexed_album()
        return {"clip_model": str(data["clip"]), "device": "cpu", "chroma_dir": str(data["store"]),
                "allowed_dirs": [str(data["root"])]}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"query": "a green square", "k": 2}
