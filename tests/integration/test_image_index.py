"""The CLIP image index on a real embedded Chroma store with a tiny random CLIP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from agent.core.errors import InputError, ModelLoadError, PathNotAllowedError, StoreError
from memory.chroma import LOCK_FILE_NAME, release_writer_lock
from memory.image_index import ImageIndex
from tests.unit.test_paths import png_claiming_size

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def make_album(folder: Path, count: int = 5) -> list[Path]:
    (folder / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        sub = ["", "nested", "nested/deeper"][index % 3]
        path = folder / sub / f"img{index}.png"
        Image.new("RGB", (40 + index, 30), COLOURS[index % len(COLOURS)]).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def workspace(tmp_path, tool_model_paths):
    album = tmp_path / "album"
    album.mkdir()
    store = tmp_path / "chroma"
    yield {"album": album, "store": store, "root": tmp_path, "clip": str(tool_model_paths["clip"])}
    release_writer_lock(store)


def open_index(ws, **kwargs) -> ImageIndex:
    settings = {"clip_model": ws["clip"], "device": "cpu", "chroma_dir": ws["store"], "allowed_dirs": [ws["root"]]}
    return ImageIndex(**{**settings, **kwargs})


def test_add_modify_delete_and_reindex_exact_counts(workspace):
    paths = make_album(workspace["album"])
    index = open_index(workspace)
    report = index.index_folder(workspace["album"], batch_size=2, progress=False)
    assert (report.added, report.updated, report.removed, report.unchanged, report.skipped) == (5, 0, 0, 0, [])
    assert index.count() == 5

    again = index.index_folder(workspace["album"], progress=False)
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 5)

    Image.new("RGB", (50, 50), (9, 9, 9)).save(paths[1])  # changed content
    paths[2].unlink()  # deleted
    Image.new("RGB", (20, 20), (99, 0, 99)).save(workspace["album"] / "nested" / "new.png")  # new
    os.utime(paths[3], ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same content
    report = index.index_folder(workspace["album"], progress=False)
    assert (report.added, report.updated, report.removed, report.unchanged) == (1, 1, 1, 3)
    assert index.count() == 5
    assert report.summary().startswith(f"{workspace['album'].resolve()}: 1 added, 1 updated, 1 removed")


def test_changed_image_is_re_embedded(workspace):
    paths = make_album(workspace["album"], 3)
    index = open_index(workspace)
    index.index_folder(workspace["album"], progress=False)
    before = index.search(str(paths[0]), k=1)[0]
    assert before.path == str(paths[0]) and before.score == pytest.approx(1.0, abs=1e-4)
    Image.new("RGB", (40, 30), (0, 0, 0)).save(paths[0])
    index.index_folder(workspace["album"], progress=False)
    hits = index.search(str(paths[0]), k=3)
    assert hits[0].path == str(paths[0]) and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_unreadable_files_are_skipped_with_a_report(workspace):
    make_album(workspace["album"], 2)
    album = workspace["album"]
    (album / "empty.png").write_bytes(b"")
    (album / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    png_claiming_size(album / "huge.png", 30_000, 30_000)
    outside = workspace["root"].parent / f"{workspace['root'].name}-outside.png"
    Image.new("RGB", (5, 5)).save(outside)
    (album / "escape.png").symlink_to(outside)
    (album / "readme.txt").write_text("not an image, not reported")
    report = open_index(workspace, max_image_pixels=1_000_000).index_folder(album, progress=False)
    skipped = {Path(s.path).name: s.reason for s in report.skipped}
    assert report.added == 2
    assert set(skipped) == {"empty.png", "corrupt.jpg", "huge.png", "escape.png"}
    assert "over the limit" in skipped["huge.png"] and "outside the allowed folders" in skipped["escape.png"]
    assert "not a readable image" in skipped["corrupt.jpg"]
    outside.unlink()


def test_text_and_image_queries_return_paths_and_cosine_scores(workspace):
    paths = make_album(workspace["album"])
    index = open_index(workspace)
    index.index_folder(workspace["album"], progress=False)
    hits = index.search("a red square", k=3)
    assert len(hits) == 3 and all(-1.0 <= h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert {h.path for h in hits} <= {str(p) for p in paths}
    same = index.search(str(paths[4]), k=5)
    assert same[0].path == str(paths[4]) and same[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(index.search("anything", k=50)) == 5


def test_bad_queries_and_folders_are_refused(workspace, tmp_path):
    make_album(workspace["album"], 1)
    index = open_index(workspace)
    index.index_folder(workspace["album"], progress=False)
    for k in (0, 101, 2.5):
        with pytest.raises(InputError, match=f"k = {k} must be an integer from 1 to 100"):
            index.search("cat", k=k)
    with pytest.raises(InputError, match="query is empty"):
        index.search("  ")
    with pytest.raises(PathNotAllowedError):
        index.search("/etc/passwd.png")
    with pytest.raises(InputError, match="does not exist"):
        index.search(str(workspace["album"] / "missing.jpg"))
    with pytest.raises(PathNotAllowedError):
        index.index_folder("/usr/share", progress=False)
    with pytest.raises(InputError, match="not a folder"):
        index.index_folder(workspace["album"] / "img0.png", progress=False)


def test_empty_store_returns_no_hits(workspace):
    index = open_index(workspace)
    assert index.search("a cat") == [] and index.count() == 0


def change_weights(clip: Path) -> None:
    """Change one weight matrix of the CLIP checkpoint in ``clip`` in place, as retraining into it would."""
    from safetensors.torch import load_file, save_file

    weights = next(clip.glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(n for n, t in tensors.items() if t.is_floating_point() and t.ndim == 2)
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, weights, metadata={"format": "pt"})


def test_another_clip_model_is_refused(workspace):
    make_album(workspace["album"], 2)
    open_index(workspace).index_folder(workspace["album"], progress=False)
    other = workspace["root"] / "other-clip"
    shutil.copytree(workspace["clip"], other)
    change_weights(other)  # a copy of the same weights would be the same model
    mismatched = open_index(workspace, clip_model=str(other))
    for action in (lambda: mismatched.search("a cat"), lambda: mismatched.index_folder(workspace["album"])):
        with pytest.raises(StoreError, match="was built with CLIP model .*llava-agent index --reindex") as info:
            action()
        assert workspace["clip"] in str(info.value) and str(other) in str(info.value)


def test_clip_weights_changed_in_place_are_refused_until_reindexed(workspace):
    """Retraining CLIP into the same folder keeps its id but not its fingerprint: the index says so."""
    make_album(workspace["album"], 2)
    clip = workspace["root"] / "clip-retrained"
    shutil.copytree(workspace["clip"], clip)
    open_index(workspace, clip_model=str(clip)).index_folder(workspace["album"], progress=False)
    change_weights(clip)

    retrained = open_index(workspace, clip_model=str(clip))
    with pytest.raises(StoreError, match="earlier version of CLIP model .*llava-agent index --reindex"):
        retrained.search("a cat")
    report = retrained.reindex(progress=False)
    assert (report.added, report.unchanged) == (2, 0)
    assert len(open_index(workspace, clip_model=str(clip)).search("a cat", k=5)) == 2


def run_python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, **kwargs,
    )


def test_store_reopens_in_a_new_process(workspace):
    paths = make_album(workspace["album"])
    index = open_index(workspace)
    index.index_folder(workspace["album"], progress=False)
    expected = [(h.path, round(h.score, 4)) for h in index.search(str(paths[0]), k=5)]
    release_writer_lock(workspace["store"])
    result = run_python(f"""
        import json
        from memory.image_index import ImageIndex
        index = ImageIndex(clip_model={workspace['clip']!r}, device="cpu", chroma_dir={str(workspace['store'])!r},
                           allowed_dirs=[{str(workspace['root'])!r}])
        hits = index.search({str(paths[0])!r}, k=5)
        report = index.index_folder({str(workspace['album'])!r}, progress=False)
        print(json.dumps({{"count": index.count(), "hits": [(h.path, round(h.score, 4)) for h in hits],
                          "unchanged": report.unchanged}}))
    """)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["count"] == 5 and data["unchanged"] == 5
    assert [(p, pytest.approx(s, abs=1e-3)) for p, s in data["hits"]] == expected


def test_second_writer_process_gets_a_clear_error(workspace):
    make_album(workspace["album"], 1)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from memory.chroma import acquire_writer_lock
            acquire_writer_lock({str(workspace['store'])!r})
            print("locked", flush=True)
            sys.stdin.readline()
        """)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        index = open_index(workspace)
        with pytest.raises(StoreError, match=f"already open for writing by another process \\(pid {holder.pid}\\)") as info:
            index.index_folder(workspace["album"], progress=False)
        assert str(workspace["store"].resolve()) in str(info.value)
        assert index.search("a cat") == []  # reading needs no lock
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert (workspace["store"] / LOCK_FILE_NAME).exists()
    report = open_index(workspace).index_folder(workspace["album"], progress=False)  # the lock was released
    assert report.added == 1


class SizeCaptioner:
    """A captioner whose captions can be predicted: each names its image's size."""

    def caption_images(self, images):
        return [f"a picture {image.width} by {image.height} pixels" for image in images]


def test_each_image_is_stored_with_its_own_caption(workspace):
    paths = make_album(workspace["album"], 5)
    expected = {str(p): f"a picture {40 + i} by 30 pixels" for i, p in enumerate(paths)}
    index = open_index(workspace)
    index.index_folder(workspace["album"], captioner=SizeCaptioner(), batch_size=2, progress=False)
    hits = index.search("a photo", k=5)
    assert {h.path: h.caption for h in hits} == expected
    for path in paths[:2]:  # an image query finds the image itself first, with its caption
        assert index.search(str(path), k=1)[0].caption == expected[str(path)]


def test_captions_are_stored_when_a_captioner_is_given(workspace, tool_model_paths):
    from tools.caption import CaptionImageTool

    paths = make_album(workspace["album"], 2)
    captioner = CaptionImageTool(model=str(tool_model_paths["blip"]), device="cpu")
    index = open_index(workspace)
    index.index_folder(workspace["album"], captioner=captioner, progress=False)
    images = [Image.open(p).convert("RGB") for p in paths]
    expected = dict(zip([str(p) for p in paths], captioner.caption_images(images), strict=True))
    assert all(expected.values()), f"the tiny captioner wrote an empty caption: {expected}"
    hits = index.search("a photo", k=2)
    assert {h.path: h.caption for h in hits} == expected


class CountingEmbedder:
    """Wraps an index's CLIP embedder to count the images it embeds."""

    def __init__(self, index: ImageIndex) -> None:
        self.images = 0
        self._embed = index.embedder.embed_images
        index.embedder.embed_images = self

    def __call__(self, images, **kwargs):
        self.images += len(images)
        return self._embed(images, **kwargs)


def stored_embeddings(index: ImageIndex) -> dict[str, list[float]]:
    stored = index._open_collection(write=False).get(include=["embeddings"])
    return {item_id: [float(x) for x in vector] for item_id, vector in zip(stored["ids"], stored["embeddings"], strict=True)}


def test_captions_are_added_to_images_indexed_without_them(workspace):
    paths = make_album(workspace["album"], 3)
    index = open_index(workspace)
    index.index_folder(workspace["album"], progress=False)
    before = stored_embeddings(index)
    new = workspace["album"] / "nested" / "new.png"
    Image.new("RGB", (60, 30), (9, 9, 9)).save(new)
    embedded = CountingEmbedder(index)

    report = index.index_folder(workspace["album"], captioner=SizeCaptioner(), batch_size=2, progress=False)
    expected = {str(p): f"a picture {40 + i} by 30 pixels" for i, p in enumerate(paths)}
    expected[str(new)] = "a picture 60 by 30 pixels"
    assert {h.path: h.caption for h in index.search("a photo", k=10)} == expected
    assert (report.added, report.unchanged, report.captioned, report.uncaptioned) == (1, 3, 4, [])
    assert embedded.images == 1, "only the new image is embedded; the others keep their embeddings"
    after = stored_embeddings(index)
    for item_id, vector in before.items():
        assert after[item_id] == pytest.approx(vector, abs=1e-6)
    assert ", 4 captioned in " in report.summary()

    again = index.index_folder(workspace["album"], captioner=SizeCaptioner(), progress=False)
    assert (again.unchanged, again.captioned, embedded.images) == (4, 0, 1)
    assert ", 0 captioned in " in again.summary()


class FailingCaptioner(SizeCaptioner):
    """Fails on any batch holding an image ``width`` pixels wide, as a model running out of memory would."""

    def __init__(self, width: int) -> None:
        self.width = width

    def caption_images(self, images):
        if any(image.width == self.width for image in images):
            raise RuntimeError("out of memory while decoding")
        return super().caption_images(images)


@pytest.mark.parametrize("indexed_before", [False, True], ids=["new-images", "indexed-images"])
def test_an_image_that_cannot_be_captioned_is_named_and_the_others_keep_theirs(workspace, indexed_before):
    paths = make_album(workspace["album"], 5)
    index = open_index(workspace)
    if indexed_before:
        index.index_folder(workspace["album"], progress=False)
    report = index.index_folder(workspace["album"], captioner=FailingCaptioner(width=41), batch_size=2, progress=False)
    assert index.count() == 5, "an image that cannot be captioned is still indexed"
    assert report.captioned == 4 and [s.path for s in report.uncaptioned] == [str(paths[1])]
    reason = report.uncaptioned[0].reason
    assert "RuntimeError: out of memory while decoding" in reason and "--captions` again" in reason
    assert f"not captioned {paths[1]}: captioning failed" in report.summary()
    captions = {h.path: h.caption for h in index.search("a photo", k=5)}
    assert captions == {str(p): None if i == 1 else f"a picture {40 + i} by 30 pixels" for i, p in enumerate(paths)}

    retry = index.index_folder(workspace["album"], captioner=SizeCaptioner(), progress=False)
    assert (retry.captioned, retry.unchanged, retry.embedded) == (1, 5, 0)
    assert index.search(str(paths[1]), k=1)[0].caption == "a picture 41 by 30 pixels"


class UnloadableCaptioner:
    def caption_images(self, images):
        raise ModelLoadError("the caption model 'missing-blip' could not be loaded; check tools.caption_model")


def test_a_caption_model_that_cannot_load_ends_the_run_keeping_the_embeddings(workspace):
    make_album(workspace["album"], 3)
    index = open_index(workspace)
    with pytest.raises(ModelLoadError, match="missing-blip"):
        index.index_folder(workspace["album"], captioner=UnloadableCaptioner(), batch_size=2, progress=False)
    assert index.count() == 2, "the batch embedded before the caption model failed is written"
    report = index.index_folder(workspace["album"], captioner=SizeCaptioner(), progress=False)
    assert (report.added, report.unchanged, report.captioned) == (1, 2, 3)


def test_symlink_loops_are_skipped_and_reported_never_ending_the_run(workspace):
    make_album(workspace["album"], 2)
    album = workspace["album"]
    (album / "self.png").symlink_to("self.png")
    (album / "a.png").symlink_to("b.png")
    (album / "b.png").symlink_to("a.png")
    (album / "gone.png").symlink_to(album / "missing.png")
    index = open_index(workspace)
    report = index.index_folder(album, progress=False)
    skipped = {Path(s.path).name: s.reason for s in report.skipped}
    assert report.added == 2
    assert set(skipped) >= {"self.png", "a.png", "b.png"}
    assert "symlink that points to itself" in skipped["self.png"]
    assert index._writer is False, "the writer lock is held for the run only"
    probe = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from memory.chroma import acquire_writer_lock
        acquire_writer_lock({str(workspace['store'])!r})
    """)], cwd=REPO, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
