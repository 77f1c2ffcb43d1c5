"""generate_video and generate_3d end to end on tiny random CogVideoX and Shap-E pipelines:
through the tools, the agent (a scripted model) and the CLI.

Random weights make noise, so the assertions are on files and invariants: the MP4 decodes as
H.264 with the asked frames, size and rate; the same seed gives the same clip; every mesh is
closed (the built marching-cubes table guarantees it, noise or not) and loads back from its file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from langchain_core.messages import AIMessage
from langchain_tests.integration_tests import ToolsIntegrationTests
from PIL import Image

from agent.app.multimodal_agent import MultimodalAgent
from agent.cli.main import main
from agent.core.config import config_to_toml, load_config
from agent.core.model_manager import ModelManager
from tests.scripted_chat_model import ScriptedChatModel, tool_call
from tests.video_3d_models import session_video_3d_models
from tools.generate_3d import Generate3DTool
from tools.generate_video import GenerateVideoTool

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]
av = pytest.importorskip("av")
trimesh = pytest.importorskip("trimesh")

CLIP = {"frames": 9, "width": 48, "height": 32, "steps": 2, "fps": 4}


def call(tool, **args):
    return tool.invoke({"type": "tool_call", "id": "call-1", "name": tool.name, "args": args})


def decoded_frames(path: str) -> tuple[list[np.ndarray], object]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        return frames, (stream.codec_context.name, stream.average_rate, stream.width, stream.height)


@pytest.fixture(scope="module")
def shared_manager() -> ModelManager:
    return ModelManager()


@pytest.fixture
def video_tool(video_3d_model_paths, tool_workspace, shared_manager):
    return GenerateVideoTool(model=str(video_3d_model_paths["cogvideox"]), device="cpu", allow_cpu=True,
                             artifacts_dir=tool_workspace["artifacts"], manager=shared_manager)


@pytest.fixture
def shape_tool(video_3d_model_paths, tool_workspace, shared_manager):
    return Generate3DTool(model=str(video_3d_model_paths["shap_e"]), image_model=str(video_3d_model_paths["shap_e_img2img"]),
                          device="cpu", allowed_dirs=[tool_workspace["allowed"]], artifacts_dir=tool_workspace["artifacts"],
                          grid_size=20, preview_size=64, manager=shared_manager)


# -- generate_video -----------------------------------------------------------------------------
def test_video_is_an_h264_mp4_with_a_contact_sheet(video_tool, tool_workspace):
    message = call(video_tool, prompt="a paper boat drifting on a pond", negative_prompt="blurry", seed=5, **CLIP)
    assert message.status == "success", message.content
    artifact = message.artifact
    frames, (codec, rate, width, height) = decoded_frames(artifact["path"])
    assert (codec, rate, width, height) == ("h264", 4, 48, 32) and len(frames) == 9
    assert artifact["frames"] == 9 and artifact["duration_s"] == 2.25 and artifact["seed"] == 5
    assert artifact["video"] == artifact["path"] and artifact["path"] in message.content
    assert Path(artifact["path"]).parent == tool_workspace["artifacts"]
    with Image.open(artifact["contact_sheet"]) as sheet:
        assert sheet.format == "PNG" and sheet.width > 48
    assert artifact["preview"] == artifact["contact_sheet"]
    with av.open(artifact["path"]) as container:
        assert json.loads(container.metadata["comment"])["negative_prompt"] == "blurry"


def test_same_seed_same_clip_other_seed_other_clip(video_tool):
    first, second, third = (call(video_tool, prompt="a red car", seed=seed, **CLIP).artifact["path"] for seed in (1, 1, 2))
    assert len({first, second, third}) == 3  # never overwritten
    a, b, c = (np.stack(decoded_frames(path)[0]).astype(int) for path in (first, second, third))
    assert np.abs(a - b).max() <= 1
    assert np.abs(a - c).mean() > 1


def test_video_is_refused_on_the_cpu_unless_allowed(video_3d_model_paths, tool_workspace):
    manager = ModelManager()
    tool = GenerateVideoTool(model=str(video_3d_model_paths["cogvideox"]), device="cpu",
                             artifacts_dir=tool_workspace["artifacts"], manager=manager)
    message = call(tool, prompt="a red car", **CLIP)
    assert message.status == "error" and "tools.video_allow_cpu = true" in message.content
    assert manager.load_count == {} and list(tool_workspace["artifacts"].iterdir()) == []


def test_a_pipeline_without_the_video_interface_is_refused(video_3d_model_paths, tool_workspace):
    tool = GenerateVideoTool(model=str(video_3d_model_paths["shap_e"]), device="cpu", allow_cpu=True,
                             artifacts_dir=tool_workspace["artifacts"], manager=ModelManager())
    message = call(tool, prompt="a red car", **CLIP)
    assert message.status == "error" and "is not a text-to-video pipeline with CogVideoX's interface" in message.content


# -- generate_3d --------------------------------------------------------------------------------
def load_mesh(path: str):
    return trimesh.load(path, force="mesh", process=False)


def test_text_to_glb_is_closed_and_matches_its_artifact(shape_tool):
    message = call(shape_tool, prompt="a red ceramic mug", steps=2, seed=3)
    assert message.status == "success", message.content
    artifact = message.artifact
    assert artifact["format"] == "glb" and artifact["source"] == "text" and artifact["grid_size"] == 20
    mesh = load_mesh(artifact["path"])
    assert len(mesh.faces) == artifact["faces"] > 0 and len(mesh.vertices) == artifact["vertices"]
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.visual.vertex_colors.shape == (artifact["vertices"], 4)
    with Image.open(artifact["preview"]) as preview:
        assert preview.size == (128, 128)
    same = call(shape_tool, prompt="a red ceramic mug", steps=2, seed=3).artifact
    assert (same["faces"], same["vertices"]) == (artifact["faces"], artifact["vertices"])


@pytest.mark.parametrize("file_format", ["ply", "obj"])
def test_photo_to_mesh_in_other_formats(shape_tool, tool_workspace, file_format):
    photo = tool_workspace["allowed"] / "mug.jpg"
    Image.new("RGB", (64, 48), (180, 40, 30)).save(photo)
    message = call(shape_tool, image=str(photo), format=file_format, steps=2, seed=1)
    assert message.status == "success", message.content
    artifact = message.artifact
    assert artifact["path"].endswith(f".{file_format}") and artifact["source"] == "image"
    assert artifact["image"] == str(photo.resolve()) and artifact["guidance"] == 3.0
    assert "the photo mug.jpg" in message.content
    mesh = load_mesh(artifact["path"])
    assert len(mesh.faces) == artifact["faces"] and mesh.is_watertight


def test_parallel_calls_take_turns_on_the_shared_pipeline(shape_tool):
    """The agent runs a turn's tool calls in threads; a pipeline's scheduler state must not be shared mid-call."""
    from concurrent.futures import ThreadPoolExecutor

    alone = call(shape_tool, prompt="a red ceramic mug", steps=3, seed=11).artifact
    with ThreadPoolExecutor(max_workers=3) as pool:
        together = list(pool.map(lambda _: call(shape_tool, prompt="a red ceramic mug", steps=3, seed=11), range(3)))
    assert all(m.status == "success" for m in together)
    assert {(m.artifact["faces"], m.artifact["vertices"]) for m in together} == {(alone["faces"], alone["vertices"])}


def test_a_noise_surface_over_the_face_limit_is_refused(shape_tool, tool_workspace):
    limited = shape_tool.model_copy(update={"max_faces": 10})
    message = call(limited, prompt="a chair", steps=1, seed=0)
    assert message.status == "error" and "over the limit of 10: the shape is noise" in message.content
    assert list(tool_workspace["artifacts"].iterdir()) == []


def test_the_renderer_table_is_built_so_the_pipelines_own_mesh_path_works(shape_tool, video_3d_model_paths):
    call(shape_tool, prompt="a chair", steps=1, seed=0)
    key = ("3d", str(video_3d_model_paths["shap_e"]), "cpu")
    with shape_tool.get_manager().use(key, lambda: None, device="cpu") as shared:
        pipeline = shared.pipeline
        renderer = pipeline.shap_e_renderer
        assert renderer.mesh_decoder.masks.any()
        latent = pipeline("a chair", num_inference_steps=1, output_type="latent").images[0]
        mesh = renderer.decode_to_mesh(latent[None], "cpu", grid_size=16)
    faces = mesh.faces.numpy()
    assert len(faces) > 0 and trimesh.Trimesh(mesh.verts.numpy(), faces, process=False).is_watertight


def test_diffusers_mesh_decoder_closes_a_sphere_with_the_built_table():
    import torch
    from diffusers.pipelines.shap_e.renderer import MeshDecoder

    from tools.marching_cubes import build_lookup_table, marching_cubes, table_is_empty

    decoder = MeshDecoder()
    assert table_is_empty(decoder.masks.numpy())
    cases, masks = build_lookup_table()
    decoder.cases.copy_(torch.from_numpy(cases))
    decoder.masks.copy_(torch.from_numpy(masks))
    axis = np.linspace(-1, 1, 32)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    field = 0.6 - np.sqrt(x**2 + y**2 + z**2)
    output = decoder(torch.from_numpy(np.pad(field, 1, constant_values=-1.0)).float(),
                     torch.tensor([-1.0] * 3), torch.tensor([2.0] * 3))
    mesh = trimesh.Trimesh(output.verts.numpy(), output.faces.numpy(), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    assert len(output.faces) == len(marching_cubes(field)[1])


# -- through the agent and the CLI --------------------------------------------------------------
def settings(data_dir: Path, paths: dict[str, Path]) -> dict:
    return {
        "data_dir": str(data_dir),
        "tools": {
            "device": "cpu", "enabled": ["generate_video", "generate_3d"], "video_model": str(paths["cogvideox"]),
            "video_allow_cpu": True, "video_steps": 2, "shape_model": str(paths["shap_e"]),
            "shape_image_model": str(paths["shap_e_img2img"]), "shape_steps": 2, "mesh_grid_size": 16,
            "allowed_dirs": [str(data_dir.parent)],
        },
        "agent": {"long_term_memory": False, "recursion_limit": 4},
    }


def test_agent_runs_both_tools_in_one_turn(tmp_path, video_3d_model_paths):
    photo = tmp_path / "mug.png"
    Image.new("RGB", (40, 40), (30, 90, 200)).save(photo)
    calls = [
        tool_call("generate_video", {"prompt": "animate a paper boat drifting on a pond", **CLIP}, "v"),
        tool_call("generate_3d", {"image": str(photo), "seed": 2}, "m"),
        tool_call("generate_3d", {"image": "/etc/hostname"}, "bad"),
    ]
    model = ScriptedChatModel(replies=[AIMessage("", tool_calls=calls), "Here they are."])
    agent = MultimodalAgent(model, config=load_config(settings(tmp_path / "data", video_3d_model_paths), environ={}))
    assert {"generate_video", "generate_3d"} <= {tool.name for tool in agent.tools}
    reply = agent.chat("animate a paper boat, and make a 3D model of the mug in this photo")
    assert reply.text == "Here they are."
    statuses = [(c["name"], c["status"]) for c in reply.tool_calls]
    assert statuses == [("generate_video", "success"), ("generate_3d", "success"), ("generate_3d", "error")]
    by_tool = {a["tool"]: a for a in reply.artifacts}
    assert decoded_frames(by_tool["generate_video"]["path"])[1][0] == "h264"
    assert load_mesh(by_tool["generate_3d"]["path"]).is_watertight
    for artifact in by_tool.values():
        assert Path(artifact["preview"]).is_file() and Path(artifact["path"]).parent == agent.config.artifacts_dir


def test_cli_commands(tmp_path, video_3d_model_paths, capsys):
    config = tmp_path / "config.toml"
    values = settings(tmp_path / "data", video_3d_model_paths)
    values["tools"]["video_allow_cpu"] = False
    config.write_text(config_to_toml(load_config(values, environ={})))
    base = ["--config", str(config)]

    assert main([*base, "video", "a boat", "--frames", "9", "--width", "48", "--height", "32"]) == 1
    refusal = capsys.readouterr().err
    assert refusal.startswith("error: video generation would run on the CPU here (no CUDA GPU in use)") and refusal.count("\n") == 1
    assert main([*base, "video", "a boat", "--frames", "10", "--allow-cpu"]) == 1
    assert "frames = 10 must be one more than a multiple of 4" in capsys.readouterr().err
    assert main([*base, "video", "a boat", "--frames", "9", "--width", "48", "--height", "32", "--steps", "1",
                 "--allow-cpu", "--json"]) == 0
    video = json.loads(capsys.readouterr().out)
    assert video["artifact"]["frames"] == 9 and Path(video["artifact"]["path"]).is_file()

    assert main([*base, "3d", "a wooden chair", "--format", "obj", "--grid", "24", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Saved a 3-D model of 'a wooden chair' to ") and ".obj" in out
    assert main([*base, "3d", "--image", "/etc/hostname"]) == 1
    assert "is outside the allowed folders" in capsys.readouterr().err
    assert main([*base, "3d"]) == 1
    assert "neither a prompt nor an image was given" in capsys.readouterr().err

    assert main([*base, "tools"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("generate_video: Create a short video clip") and "\ngenerate_3d: Create a 3-D model" in listed


# -- the standard LangChain tool suites ---------------------------------------------------------
class TestGenerateVideoToolIntegration(ToolsIntegrationTests):
    @property
    def tool_constructor(self):
        return GenerateVideoTool

    @property
    def tool_constructor_params(self) -> dict:
        paths = session_video_3d_models()
        return {"model": str(paths["cogvideox"]), "device": "cpu", "allow_cpu": True,
                "artifacts_dir": str(paths["cogvideox"].parent / "artifacts")}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"prompt": "a small red square", "seed": 0, **CLIP, "steps": 1}


class TestGenerate3DToolIntegration(ToolsIntegrationTests):
    @property
    def tool_constructor(self):
        return Generate3DTool

    @property
    def tool_constructor_params(self) -> dict:
        paths = session_video_3d_models()
        return {"model": str(paths["shap_e"]), "image_model": str(paths["shap_e_img2img"]), "device": "cpu",
                "grid_size": 16, "preview_size": 32, "artifacts_dir": str(paths["shap_e"].parent / "artifacts")}

    @property
    def tool_invoke_params_example(self) -> dict:
        return {"prompt": "a small red cube", "format": "glb", "steps": 1, "seed": 0}
