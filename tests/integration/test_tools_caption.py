"""caption_image end to end on a tiny random BLIP loaded through from_pretrained."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ToolsIntegrationTests
from PIL import Image

from agent.core.model_manager import ModelManager
from tests.tool_models import session_tool_models
from tests.unit.test_paths import png_claiming_size
from tools.caption import CaptionImageTool

pytestmark = pytest.mark.integration


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def link(path, target):
    path.symlink_to(target)
    return path


def call(tool, **args):
    return tool.invoke({"type": "tool_call", "id": "call-1", "name": tool.name, "args": args})


@pytest.fixture
def caption_tool(tool_model_paths, tool_workspace):
    return CaptionImageTool(model=str(tool_model_paths["blip"]), device="cpu", allowed_dirs=[tool_workspace["allowed"]],
                            detailed_max_new_tokens=12)


@pytest.fixture
def photo(tool_workspace):
    path = tool_workspace["allowed"] / "photo.png"
    Image.new("RGB", (48, 40), (200, 30, 30)).save(path)
    return path


@pytest.mark.parametrize("detail", ["short", "detailed"])
def test_caption_returns_text_and_artifact(caption_tool, photo, detail):
    message = call(caption_tool, image=str(photo), detail=detail)
    assert message.status == "success"
    assert message.content.startswith(f"Caption of {photo}:")
    artifact = message.artifact
    assert set(artifact) == {"image", "caption", "detail", "model", "seconds"}
    assert artifact["image"] == str(photo.resolve()) and artifact["detail"] == detail
    assert isinstance(artifact["caption"], str) and artifact["seconds"] >= 0


def test_two_caption_tools_share_one_copy_of_the_weights(tool_model_paths, tool_workspace, photo):
    manager = ModelManager()
    tools = [
        CaptionImageTool(model=str(tool_model_paths["blip"]), device="cpu", allowed_dirs=[tool_workspace["allowed"]],
                         manager=manager)
        for _ in range(2)
    ]
    for tool in tools:
        assert call(tool, image=str(photo)).status == "success"
    assert manager.load_count == {("caption", str(tool_model_paths["blip"]), "cpu"): 1}


def test_caption_folder_captions_every_readable_image(caption_tool, tool_workspace):
    folder = tool_workspace["allowed"] / "album"
    (folder / "nested").mkdir(parents=True)
    for index, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (20, 20), colour).save(folder / ("nested" if index == 2 else ".") / f"{index}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("ignored")
    captions, skipped = caption_tool.caption_folder(folder, batch_size=2, progress=False)
    assert sorted(captions) == sorted(str(p) for p in folder.rglob("*.png"))
    assert all(isinstance(c, str) for c in captions.values())
    assert list(skipped) == [str(folder / "broken.jpg")]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda ws: ws["allowed"] / "missing.png", "does not exist"),
        (lambda ws: ws["allowed"], "is a directory"),
        (lambda ws: write(ws["allowed"] / "empty.png", b""), "empty (0 bytes)"),
        (lambda ws: write(ws["allowed"] / "bad.png", b"garbage!"), "not a readable image"),
        (lambda ws: png_claiming_size(ws["allowed"] / "huge.png", 20_000, 20_000), "over the limit"),
        (lambda ws: ws["allowed"] / ".." / "outside" / "x.png", "outside the allowed folders"),
        (lambda ws: "/etc/hostname", "outside the allowed folders"),
        (lambda ws: link(ws["allowed"] / "escape.png", ws["outside"] / "x.png"), "outside the allowed folders"),
    ],
    ids=["nonexistent", "directory", "zero-byte", "corrupt", "over-pixel-limit", "dotdot", "absolute", "symlink"],
)
def test_bad_images_come_back_as_clear_messages(caption_tool, tool_workspace, make, expected):
    Image.new("RGB", (4, 4)).save(tool_workspace["outside"] / "x.png")
    caption_tool.max_image_pixels = 1_000_000
    target = make(tool_workspace)
    message = call(caption_tool, image=str(target))
    assert message.status == "error"
    assert message.content.startswith(f"Error running caption_image with image={str(target)!r}")
    assert expected in message.content
    assert message.content.endswith("Please fix the arguments and try again.")


class TestCaptionImageToolIntegration(ToolsIntegrationTests):
    @property
    def tool_constructor(self):
        return CaptionImageTool

    @property
    def tool_constructor_params(self) -> dict:
        paths = session_tool_models()
        return {"model": str(paths["blip"]), "device": "cpu", "allowed_dirs": [str(paths["blip"].parent)]}

    @property
    def tool_invoke_params_example(self) -> dict:
        sample = session_tool_models()["blip"].parent / "sample.png"
        if not sample.exists():
            Image.new("RGB", (32, 32), (10, 200, 10)).save(sample)
        return {"image": str(sample), "detail": "short"}
