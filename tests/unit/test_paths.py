"""Allowed-folder checks (and what their refusals tell others), image loading limits, artifact writes and names."""

from __future__ import annotations

import errno
import os
import re
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from agent.core.errors import ImageError, InputError, PathNotAllowedError, ToolError
from agent.core.files import (
    check_readable_file,
    open_beneath,
    read_allowed_image,
    resolve_allowed_path,
    slugify,
    without_server_paths,
    write_new_artifact,
)
from agent.core.images import open_image_file


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` pixels but holds no real pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def allowed(tmp_path) -> Path:
    folder = tmp_path / "allowed"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 6), (1, 2, 3)).save(folder / "sub" / "ok.png")
    (tmp_path / "secret.txt").write_text("secret")
    return folder


def test_path_inside_allowed_folder_resolves(allowed):
    assert resolve_allowed_path(allowed / "sub" / "ok.png", [allowed]) == (allowed / "sub" / "ok.png").resolve()


def test_relative_path_resolves_against_working_directory(allowed, monkeypatch):
    monkeypatch.chdir(allowed)
    assert resolve_allowed_path("sub/ok.png", [allowed]) == (allowed / "sub" / "ok.png").resolve()


@pytest.mark.parametrize("escape", ["../secret.txt", "sub/../../secret.txt", "/etc/passwd"])
def test_paths_escaping_the_allowed_folders_are_refused(allowed, monkeypatch, escape):
    monkeypatch.chdir(allowed)
    with pytest.raises(PathNotAllowedError, match="outside the allowed folders") as info:
        resolve_allowed_path(escape, [allowed])
    assert escape in str(info.value) and str(allowed.resolve()) in str(info.value)


def test_symlink_pointing_outside_is_refused(allowed, tmp_path):
    link = allowed / "link.txt"
    link.symlink_to(tmp_path / "secret.txt")
    with pytest.raises(PathNotAllowedError, match="resolves to"):
        resolve_allowed_path(link, [allowed])


def test_symlink_inside_allowed_folder_is_accepted(allowed):
    link = allowed / "alias.png"
    link.symlink_to(allowed / "sub" / "ok.png")
    assert resolve_allowed_path(link, [allowed]) == (allowed / "sub" / "ok.png").resolve()


def test_sibling_folder_with_common_prefix_is_refused(tmp_path, allowed):
    sibling = tmp_path / "allowed-but-not-really"
    sibling.mkdir()
    (sibling / "x.png").write_bytes(b"x")
    with pytest.raises(PathNotAllowedError):
        resolve_allowed_path(sibling / "x.png", [allowed])


def test_empty_path_is_refused(allowed):
    with pytest.raises(InputError, match="empty"):
        resolve_allowed_path("  ", [allowed])


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda d: d / "missing.png", InputError, "does not exist"),
        (lambda d: d / "sub", InputError, "is a directory"),
        (lambda d: (d / "empty.png").write_bytes(b"") or d / "empty.png", ImageError, "empty"),
    ],
    ids=["nonexistent", "directory", "zero-byte"],
)
def test_bad_files_get_clear_errors(allowed, make, error, message):
    with pytest.raises(error, match=message):
        check_readable_file(make(allowed), [allowed])


def test_corrupt_image_is_refused(allowed):
    corrupt = allowed / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png body")
    with pytest.raises(ImageError, match="not a readable image"):
        read_allowed_image(corrupt, [allowed], max_pixels=10_000)


def test_truncated_jpeg_is_refused(allowed):
    full = allowed / "full.jpg"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(full)
    truncated = allowed / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[:200])
    with pytest.raises(ImageError):
        read_allowed_image(truncated, [allowed], max_pixels=10_000)


def test_image_over_pixel_limit_is_refused_from_its_header(allowed):
    huge = png_claiming_size(allowed / "huge.png", 100_000, 100_000)
    with pytest.raises(ImageError, match="over the limit of 50000000 pixels"):
        open_image_file(huge, max_pixels=50_000_000)


def test_image_over_a_small_pixel_limit_names_its_size(allowed):
    big = png_claiming_size(allowed / "big.png", 300, 200)
    with pytest.raises(ImageError, match="300x200 = 60000 pixels, over the limit of 10000"):
        open_image_file(big, max_pixels=10_000)


def test_good_image_loads_as_rgb(allowed):
    image, resolved = read_allowed_image(allowed / "sub" / "ok.png", [allowed], max_pixels=1000)
    assert image.mode == "RGB" and image.size == (8, 6) and resolved.name == "ok.png"


def test_artifacts_never_overwrite(tmp_path):
    paths = [write_new_artifact(tmp_path, "A cat!", ".txt", lambda f, n=n: f.write(str(n).encode())) for n in range(3)]
    assert len(set(paths)) == 3
    assert sorted(p.read_text() for p in paths) == ["0", "1", "2"]
    assert all(p.name.endswith(".txt") and "a-cat" in p.name for p in paths)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_artifact_write_leaves_nothing(tmp_path):
    def fail(handle) -> None:
        handle.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ToolError, match=r"could not write .*x\.png into .* \(No space left on device\); free some disk"):
        write_new_artifact(tmp_path, "x", ".png", fail)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("text", "slug"), [("A Red Cat!", "a-red-cat"), ("???", "untitled"), ("x" * 99, "x" * 40)])
def test_slugify(text, slug):
    assert slugify(text) == slug


# ----- what a refusal tells someone other than the person at this machine ---------------------


@pytest.fixture
def folders(tmp_path) -> dict[str, Path]:
    images, data, outside = tmp_path / "images", tmp_path / "data", tmp_path / "outside (private)"
    for folder in (images, data, outside):
        folder.mkdir()
    Image.new("RGB", (5, 5), "red").save(outside / "secret.png")
    (images / "escape.png").symlink_to(outside / "secret.png")
    return {"images": images, "data": data, "outside": outside}


def _refusal(check, *args) -> str:
    with pytest.raises(InputError) as caught:
        check(*args)
    return str(caught.value)


def test_path_refusals_lose_folders_and_resolved_paths_for_others_only(folders, monkeypatch):
    images, outside = folders["images"], folders["outside"]
    allowed = [images, folders["data"]]
    monkeypatch.chdir(images)  # paths as a caller gives them: relative, naming no folder of the server
    refusals = [
        _refusal(resolve_allowed_path, "escape.png", allowed),  # a link out: where it leads
        _refusal(resolve_allowed_path, "../../etc/passwd", allowed),
        _refusal(check_readable_file, "nope.png", allowed),
        _refusal(open_beneath, outside / "secret.png", allowed, "secret.png"),
    ]
    for full in refusals:  # the person at this machine is told everything, as before
        assert str(images) in full and "one of the allowed folders" in full
    assert str(outside / "secret.png") in refusals[0] and "tools.allowed_dirs" in refusals[0]
    for full in refusals:
        shown = without_server_paths(full)
        assert str(images) not in shown and str(folders["data"]) not in shown and str(outside) not in shown
        assert "resolves to" not in shown and "tools.allowed_dirs" not in shown
    assert without_server_paths(refusals[0]) == (
        "path 'escape.png' is outside the allowed folders; use a path under one of the allowed folders"
    )  # the path that was given stays: it is the caller's own text
    assert without_server_paths(refusals[1]).startswith("path '../../etc/passwd' is outside the allowed folders;")


def test_artifact_names_are_readable_and_cannot_be_guessed(tmp_path):
    paths = [write_new_artifact(tmp_path, "My secret boat", ".png", lambda f: f.write(b"png")) for _ in range(3)]
    stamp = time.strftime("%Y%m%d")
    for path in paths:
        assert re.fullmatch(rf"{stamp}-\d{{6}}-my-secret-boat-[0-9a-f]{{16}}\.png", path.name), path.name
    assert len({path.name.rsplit("-", 1)[1] for path in paths}) == 3  # a fresh random part each time
