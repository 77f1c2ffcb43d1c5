"""generate_image end to end on a tiny random Stable Diffusion pipeline (64x64, one step)."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_tests.integration_tests import ToolsIntegrationTests
from PIL import Image

from tests.tool_models import session_tool_models
from tools.generate import GenerateImageTool

pytestmark = pytest.mark.integration


def call(tool, **args):
    return tool.invoke({"type": "tool_call", "id": "call-1", "name": tool.name, "args": args})


@pytest.fixture
def generate_tool(tool_model_paths, tool_workspace):
    return GenerateImageTool(
        model=str(tool_model_paths["stable_diffusion"]), device="cpu", artifacts_dir=tool_workspace["artifacts"]
    )


def test_generated_png_carries_its_parameters(generate_tool, tool_model_paths):
    message = call(generate_tool, prompt="a red cat", negative_prompt="blurry", width=64, height=64, seed=7)
    assert message.status == "success"
    artifact = message.artifact
    assert artifact["seed"] == 7 and artifact["steps"] == 1 and (artifact["width"], artifact["height"]) == (64, 64)
    assert artifact["path"] in message.content
    with Image.open(artifact["path"]) as image:
        assert image.format == "PNG" and image.size == (64, 64)
        assert image.text["prompt"] == "a red cat"
        assert image.text["negative_prompt"] == "blurry"
        assert image.text["seed"] == "7"
        assert image.text["model"] == str(tool_model_paths["stable_diffusion"])


def test_same_seed_gives_same_pixels_and_never_overwrites(generate_tool, tool_workspace):
    first = call(generate_tool, prompt="a blue house", width=64, height=64, seed=3).artifact["path"]
    second = call(generate_tool, prompt="a blue house", width=64, height=64, seed=3).artifact["path"]
    third = call(generate_tool, prompt="a blue house", width=64, height=64, seed=4).artifact["path"]
    assert len({first, second, third}) == 3
    assert sorted(str(p) for p in tool_workspace["artifacts"].iterdir()) == sorted([first, second, third])
    pixels = [np.asarray(Image.open(p)) for p in (first, second, third)]
    assert np.array_equal(pixels[0], pixels[1])
    assert not np.array_equal(pixels[0], pixels[2])


def test_random_seed_is_reported_and_reproduces_the_image(generate_tool):
    artifact = call(generate_tool, prompt="a tree", width=64, height=64, steps=2).artifact
    assert 0 <= artifact["seed"] < 2**31 and artifact["steps"] == 2
    with Image.open(artifact["path"]) as image:
        assert image.text["seed"] == str(artifact["seed"])
    again = call(generate_tool, prompt="a tree", width=64, height=64, steps=2, seed=artifact["seed"]).artifact
    assert np.array_equal(np.asarray(Image.open(artifact["path"])), np.asarray(Image.open(again["path"])))


def test_safety_checker_policy_loads_either_way(tool_model_paths, tool_workspace):
    """A checkpoint that ships no checker gives the same image under either policy."""
    pixels = []
    for policy in (True, False):
        tool = GenerateImageTool(model=str(tool_model_paths["stable_diffusion"]), device="cpu",
                                 artifacts_dir=tool_workspace["artifacts"], safety_checker=policy)
        message = call(tool, prompt="a dog", width=64, height=64, seed=1)
        assert message.status == "success", message.content
        with Image.open(message.artifact["path"]) as image:
            assert image.size == (64, 64) and image.text["seed"] == "1"
            pixels.append(np.asarray(image.convert("RGB")))
    assert np.array_equal(pixels[0], pixels[1])
    assert len(list(tool_workspace["artifacts"].iterdir())) == 2


def test_image_flagged_by_a_shipped_safety_checker_is_not_saved(tmp_path, tool_workspace):
    from tests.tool_models import build_stable_diffusion

    checkpoint = str(build_stable_diffusion(tmp_path / "sd-with-checker", flagging_safety_checker=True))
    kept = GenerateImageTool(model=checkpoint, device="cpu", artifacts_dir=tool_workspace["artifacts"])
    message = call(kept, prompt="a dog", width=64, height=64, seed=1)
    assert message.status == "error" and "safety checker flagged the generated image" in message.content
    assert list(tool_workspace["artifacts"].iterdir()) == []

    dropped = GenerateImageTool(model=checkpoint, device="cpu", artifacts_dir=tool_workspace["artifacts"],
                                safety_checker=False)
    message = call(dropped, prompt="a dog", width=64, height=64, seed=1)
    assert message.status == "success" and len(list(tool_workspace["artifacts"].iterdir())) == 1


@pytest.mark.parametrize(
    "args",
    [{"prompt": ""}, {"prompt": "a cat", "width": 60}, {"prompt": "a cat", "steps": 0}],
    ids=["empty-prompt", "width-not-multiple-of-8", "zero-steps"],
)
def test_bad_arguments_write_nothing(generate_tool, tool_workspace, args):
    message = call(generate_tool, **args)
    assert message.status == "error" and message.content.startswith("Error running generate_image")
    assert list(tool_workspace["artifacts"].iterdir()) == []


class TestGenerateImageToolIntegration(ToolsIntegrationTests):
    @property
    def tool_constructor(self):
        return GenerateImageTool

    @property
    def tool_constructor_params(self) -> dict:
        paths = session_tool_models()
        return {"model": str(paths["stable_diffusion"]), "device": "cpu",
                "artifacts_dir": str(paths["stable_diffusion"].parent / "artifacts")}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"prompt": "a small red square", "width": 64, "height": 64, "steps": 1, "seed": 0}
