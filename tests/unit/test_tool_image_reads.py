"""Tools decode only the chat's image formats, from the very file that passed the path check."""

from __future__ import annotations

import os

import pytest
from PIL import Image

import agent.core.files
from agent.core.errors import ImageError, PathNotAllowedError
from agent.core.files import read_allowed_image

EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 16 16
%%EndComments
newpath 0 0 moveto 16 0 lineto 16 16 lineto closepath fill
showpage
%%EOF
"""


@pytest.fixture
def ghostscript_calls(monkeypatch):
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(OSError("gs")))
    return calls


def test_an_eps_file_named_png_is_refused_without_running_ghostscript(tmp_path, ghostscript_calls):
    (tmp_path / "innocent.png").write_bytes(EPS)
    with pytest.raises(ImageError, match="not a readable image in a supported format"):
        read_allowed_image(tmp_path / "innocent.png", [tmp_path], max_pixels=10_000)
    assert ghostscript_calls == []


def test_the_caption_tool_refuses_it_too(tmp_path, ghostscript_calls):
    from tools.caption import CaptionImageTool

    (tmp_path / "photo.png").write_bytes(EPS)
    tool = CaptionImageTool(allowed_dirs=[tmp_path], device="cpu")
    message = tool.invoke({"type": "tool_call", "id": "c", "name": "caption_image", "args": {"image": str(tmp_path / "photo.png")}})
    assert message.status == "error" and "supported format" in message.content and ghostscript_calls == []


def test_a_folder_swapped_for_a_symlink_after_the_check_is_not_followed(tmp_path, monkeypatch):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "album").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (4, 4), (0, 255, 0)).save(allowed / "album" / "cat.png")
    Image.new("RGB", (4, 4), (255, 0, 0)).save(outside / "cat.png")  # the secret the attacker wants read
    checked = agent.core.files.check_readable_file

    def check_then_swap(path, allowed_dirs):
        resolved = checked(path, allowed_dirs)
        os.rename(allowed / "album", allowed / "album-real")  # the race: after the check, before the open
        (allowed / "album").symlink_to(outside)
        return resolved

    monkeypatch.setattr(agent.core.files, "check_readable_file", check_then_swap)
    with pytest.raises(PathNotAllowedError, match="changed while it was opened"):
        read_allowed_image(allowed / "album" / "cat.png", [allowed], max_pixels=10_000)

