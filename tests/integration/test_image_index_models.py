"""Which CLIP built an image collection: decided by the model's weights (its fingerprint), not its name."""

from __future__ import annotations

import shutil

import pytest

from agent.core.errors import StoreError
from memory.image_index import same_model_name
from tests.integration import test_image_index
from tests.integration.test_image_index import change_weights, make_album, open_index

pytestmark = pytest.mark.integration
workspace = test_image_index.workspace  # the same fixture: an album, a store and the tiny CLIP


@pytest.fixture
def local_clip(workspace, monkeypatch):
    """A copy of the tiny CLIP at ``<root>/clip``, with the working folder at ``<root>`` so ``clip`` names it."""
    shutil.copytree(workspace["clip"], workspace["root"] / "clip")
    monkeypatch.chdir(workspace["root"])
    return workspace["root"] / "clip"


def spelled(name: str, clip) -> str:
    return str(clip) if name == "absolute" else name


@pytest.mark.parametrize(("built_with", "opened_with"), [
    ("clip", "./clip"), ("./clip", "clip/"), ("clip", "absolute"), ("absolute", "./clip/"),
])
def test_names_of_the_same_local_model_are_one_model(workspace, local_clip, built_with, opened_with):
    make_album(workspace["album"], 2)
    open_index(workspace, clip_model=spelled(built_with, local_clip)).index_folder(workspace["album"], progress=False)
    index = open_index(workspace, clip_model=spelled(opened_with, local_clip))
    assert len(index.search("a cat", k=5)) == 2
    report = index.index_folder(workspace["album"], progress=False)
    assert (report.added, report.updated, report.unchanged) == (0, 0, 2)
    rebuilt = index.reindex(progress=False)
    assert (rebuilt.added, rebuilt.unchanged) == (0, 2), "the collection is already built with this model"


def test_a_copy_of_the_same_weights_is_the_same_model(workspace):
    make_album(workspace["album"], 2)
    open_index(workspace).index_folder(workspace["album"], progress=False)
    copy = workspace["root"] / "clip-copy"
    shutil.copytree(workspace["clip"], copy)
    assert len(open_index(workspace, clip_model=str(copy)).search("a cat", k=5)) == 2


def test_different_weights_under_another_name_are_refused_naming_both(workspace, local_clip):
    make_album(workspace["album"], 2)
    open_index(workspace, clip_model="./clip").index_folder(workspace["album"], progress=False)
    other = workspace["root"] / "other-clip"
    shutil.copytree(local_clip, other)
    change_weights(other)
    with pytest.raises(StoreError, match=r"built with CLIP model '\./clip', not 'other-clip'; rebuild it"):
        open_index(workspace, clip_model="other-clip").search("a cat")


def forget_fingerprint(workspace, clip_model: str) -> None:
    """Make the store look like one from before fingerprints were kept: its metadata names only the model."""
    index = open_index(workspace, clip_model=clip_model)
    index._open_collection(write=False).modify(metadata={"clip_model": clip_model})


def test_a_store_without_a_fingerprint_is_trusted_by_the_model_it_names(workspace, local_clip):
    make_album(workspace["album"], 2)
    open_index(workspace, clip_model="clip").index_folder(workspace["album"], progress=False)
    forget_fingerprint(workspace, "clip")
    for name in ("clip", "./clip/", str(local_clip)):
        index = open_index(workspace, clip_model=name)
        assert len(index.search("a cat", k=5)) == 2
        assert index.index_folder(workspace["album"], progress=False).unchanged == 2
    other = workspace["root"] / "other-clip"
    shutil.copytree(local_clip, other)
    change_weights(other)
    with pytest.raises(StoreError, match=r"built with CLIP model 'clip', not 'other-clip'.*llava-agent index --reindex"):
        open_index(workspace, clip_model="other-clip").search("a cat")


@pytest.mark.parametrize(("first", "second", "same"), [
    ("openai/clip-vit-base-patch32", "openai/clip-vit-base-patch32", True),
    ("models/clip", "./models/clip/", True),
    ("models/clip", "models/other", False),
    ("openai/clip-vit-base-patch32", "openai/clip-vit-large-patch14", False),
])
def test_same_model_name(first, second, same):
    assert same_model_name(first, second) is same
