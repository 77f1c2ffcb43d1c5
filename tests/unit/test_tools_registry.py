"""The tool registry, build_tools, light imports, and the standard LangChain tool unit suites."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.tools import BaseTool
from langchain_tests.unit_tests import ToolsUnitTests

from agent.core.config import load_config
from agent.core.errors import ConfigError
from tools import available_tools, build_tools, register_tool
from tools.caption import CaptionImageTool
from tools.describe_video import DescribeVideoTool
from tools.generate import GenerateImageTool
from tools.generate_3d import Generate3DTool
from tools.generate_video import GenerateVideoTool
from tools.registry import build_tool, get_tool_factory, unregister_tool
from tools.search import SearchImagesTool
from tools.speak import SpeakTool

TOOL_NAMES = ["caption_image", "generate_image", "search_images", "speak", "describe_video"]
REPO = Path(__file__).resolve().parents[2]


def test_builtin_tools_are_registered_in_order():
    assert available_tools()[:len(TOOL_NAMES) + 2] == [*TOOL_NAMES, "generate_video", "generate_3d"]


def test_heavy_generators_are_opt_in_and_built_from_config(tmp_path):
    assert "generate_video" not in load_config(environ={}).tools.enabled
    config = load_config(overrides={"data_dir": str(tmp_path), "tools": {
        "enabled": ["generate_video", "generate_3d"], "video_model": "/models/cogvideox", "video_allow_cpu": True,
        "video_max_frames": 81, "video_offload": "model", "shape_model": "/models/shap-e", "mesh_grid_size": 96,
    }}, environ={})
    video, shape = build_tools(config)
    assert (video.model, video.allow_cpu, video.max_frames, video.offload) == ("/models/cogvideox", True, 81, "model")
    assert (shape.model, shape.image_model, shape.grid_size) == ("/models/shap-e", "openai/shap-e-img2img", 96)
    assert video.artifacts_dir == shape.artifacts_dir == tmp_path / "artifacts"


@pytest.mark.parametrize("tool_class", [GenerateVideoTool, Generate3DTool])
def test_heavy_generators_declare_example_requests(tool_class):
    assert len(tool_class.examples) >= 3 and all(isinstance(e, str) and e for e in tool_class.examples)
    assert "examples" not in tool_class().tool_call_schema.model_json_schema()["properties"]


def test_build_tools_follows_config_and_shares_one_manager(tmp_path):
    config = load_config(overrides={"data_dir": str(tmp_path), "tools": {"enabled": ["speak", "caption_image"]}})
    tools = build_tools(config)
    assert [t.name for t in tools] == ["speak", "caption_image"]
    assert all(isinstance(t, BaseTool) for t in tools)
    assert tools[0].manager is tools[1].manager
    assert tools[0].artifacts_dir == tmp_path / "artifacts"


def test_generation_steps_come_from_config():
    config = load_config(overrides={"tools": {"image_steps": 4, "enabled": ["generate_image"]}})
    assert build_tools(config)[0].default_steps == 4


def test_default_build_has_the_five_tools():
    assert [t.name for t in build_tools()] == TOOL_NAMES


def test_unknown_tool_lists_the_known_ones():
    with pytest.raises(ConfigError, match="no tool is named 'paint'.*caption_image, generate_image"):
        get_tool_factory("paint")
    config = load_config({"tools": {"enabled": ["speak", "paint"]}})
    with pytest.raises(ConfigError, match="paint"):
        build_tools(config)


def test_duplicate_registration_is_refused():
    with pytest.raises(ConfigError, match="already registered"):
        register_tool("speak", lambda config, manager: SpeakTool())


def test_plugins_register_through_the_same_path():
    @register_tool("echo_speech")
    def make(config, manager):
        return SpeakTool(name="echo_speech", manager=manager)

    try:
        assert "echo_speech" in available_tools()
        assert build_tool("echo_speech", load_config()).name == "echo_speech"
    finally:
        unregister_tool("echo_speech")
    assert "echo_speech" not in available_tools()


@pytest.mark.parametrize("bad", ["", "has space", "semi;colon"])
def test_bad_tool_names_are_refused(bad):
    with pytest.raises(ConfigError, match="letters, digits"):
        register_tool(bad, lambda config, manager: SpeakTool())


def test_importing_tools_and_memory_loads_no_heavy_library():
    code = (
        "import sys, tools, memory, tools.caption, tools.generate, tools.search, tools.speak, agent.core.model_manager, "
        "tools.registry, memory.chroma, memory.embedders, memory.image_index, tools.generate_video, tools.generate_3d; "
        "tools.build_tools(); tools.build_tool('generate_video', tools.registry.load_config()); "
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'chromadb', 'bitsandbytes', 'av', 'trimesh') "
        "if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "tool_class", [CaptionImageTool, GenerateImageTool, SearchImagesTool, SpeakTool, GenerateVideoTool, Generate3DTool]
)
def test_every_argument_is_described_for_the_model(tool_class):
    tool = tool_class()
    assert tool.response_format == "content_and_artifact"
    assert len(tool.description) > 40
    schema = tool.tool_call_schema.model_json_schema()
    assert schema["properties"]
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{tool.name}.{name} has no description"


def test_tool_names_are_exact():
    classes = (CaptionImageTool, GenerateImageTool, SearchImagesTool, SpeakTool, DescribeVideoTool)
    assert [cls().name for cls in classes] == TOOL_NAMES


class TestCaptionImageToolUnit(ToolsUnitTests):
    @property
    def tool_constructor(self):
        return CaptionImageTool

    @property
    def tool_constructor_params(self) -> dict:
        return {"model": "some/blip-checkpoint", "device": "cpu", "allowed_dirs": ["/tmp"]}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"image": "photos/cat.png", "detail": "short"}


class TestGenerateImageToolUnit(ToolsUnitTests):
    @property
    def tool_constructor(self):
        return GenerateImageTool

    @property
    def tool_constructor_params(self) -> dict:
        return {"model": "some/sd-checkpoint", "device": "cpu", "artifacts_dir": "/tmp/artifacts", "default_steps": 2}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"prompt": "a red cat", "width": 64, "height": 64, "steps": 1, "seed": 1}


class TestSearchImagesToolUnit(ToolsUnitTests):
    @property
    def tool_constructor(self):
        return SearchImagesTool

    @property
    def tool_constructor_params(self) -> dict:
        return {"clip_model": "some/clip", "device": "cpu", "chroma_dir": "/tmp/chroma"}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"query": "a dog on a beach", "k": 3}


class TestSpeakToolUnit(ToolsUnitTests):
    @property
    def tool_constructor(self):
        return SpeakTool

    @property
    def tool_constructor_params(self) -> dict:
        return {"engine": "espeak-ng", "default_voice": "en-us", "artifacts_dir": "/tmp/artifacts"}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"text": "Hello there.", "voice": "en", "speed": 1.0}


class TestGenerateVideoToolUnit(ToolsUnitTests):
    @property
    def tool_constructor(self):
        return GenerateVideoTool

    @property
    def tool_constructor_params(self) -> dict:
        return {"model": "some/cogvideox", "device": "cpu", "artifacts_dir": "/tmp/artifacts", "allow_cpu": True}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"prompt": "a paper boat drifting on a pond", "frames": 9, "fps": 8, "width": 64, "height": 64,
                "steps": 2, "seed": 1}


class TestGenerate3DToolUnit(ToolsUnitTests):
    @property
    def tool_constructor(self):
        return Generate3DTool

    @property
    def tool_constructor_params(self) -> dict:
        return {"model": "some/shap-e", "image_model": "some/shap-e-img2img", "device": "cpu",
                "artifacts_dir": "/tmp/artifacts", "grid_size": 64}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"prompt": "a red ceramic mug", "format": "glb", "steps": 8, "seed": 1}
class TestDescribeVideoToolUnit(ToolsUnitTests):
    @property
    def tool_constructor(self):
        return DescribeVideoTool

    @property
    def tool_constructor_params(self) -> dict:
        return {"caption_model": "some/blip", "device": "cpu", "artifacts_dir": "/tmp/artifacts", "max_frames": 4}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"video": "clips/party.mp4", "question": "Who is dancing?", "start": 0.0, "end": 10.0}
