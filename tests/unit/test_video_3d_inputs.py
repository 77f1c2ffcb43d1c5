"""generate_video and generate_3d without a model: argument checks, the CPU refusal and its estimate,
the CUDA memory plan, MP4 and contact-sheet writing, mesh files and previews."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from agent.core.errors import ImageError, InputError, PathNotAllowedError, ToolError
from agent.core.model_manager import ModelManager
from tools.generate_3d import Generate3DTool
from tools.generate_video import GenerateVideoTool
from tools.mesh_files import mesh_bytes, preview_image, srgb_to_linear, z_up_to_y_up
from tools.video_cost import (
    GIB,
    choose_offload,
    describe_duration,
    estimate_cpu_seconds,
    transformer_flops,
    video_tokens,
)
from tools.video_files import contact_sheet, frames_to_uint8, sheet_frame_indices, write_mp4

VALID_VIDEO = {"prompt": "a paper boat", "negative_prompt": None, "frames": 49, "fps": 8, "width": 720,
               "height": 480, "steps": None, "guidance": 6.0, "seed": None}


def call(tool, **args):
    return tool.invoke({"type": "tool_call", "id": "call-1", "name": tool.name, "args": args})


# -- generate_video: arguments ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"prompt": " "}, "prompt is empty"),
        ({"prompt": "x" * 2001}, "2001 characters, over the limit"),
        ({"negative_prompt": "x" * 2001}, "negative prompt has 2001 characters"),
        ({"frames": 53}, "frames = 53 is too many: the limit is 49 \\(tools.video_max_frames\\)"),
        ({"frames": 20}, "frames = 20 must be one more than a multiple of 4, from 5 to 49, e.g. 17 or 21"),
        ({"frames": 1}, "frames = 1 must be one more than a multiple of 4"),
        ({"width": 100}, "width = 100 is not a supported size: it must be a multiple of 16 from 32 to 1920, e.g. 96"),
        ({"height": 16}, "height = 16 is not a supported size"),
        ({"height": 4096}, "e.g. 1920"),
        ({"fps": 0}, "fps = 0 must be from 1 to 60"),
        ({"steps": 0}, "steps = 0 must be from 1 to 200"),
        ({"guidance": -1.0}, "guidance = -1.0"),
        ({"seed": -1}, "seed = -1"),
    ],
)
def test_video_rejects_bad_arguments(arguments, message):
    with pytest.raises(InputError, match=message):
        GenerateVideoTool().validate(**{**VALID_VIDEO, **arguments})


def test_video_defaults_and_limits_follow_the_tool():
    tool = GenerateVideoTool(default_steps=7, max_frames=81)
    request = tool.validate(**{**VALID_VIDEO, "frames": 81, "negative_prompt": ""})
    assert request.steps == 7 and request.frames == 81 and request.negative_prompt is None


def test_bad_video_arguments_fail_before_any_model_loads(tmp_path):
    manager = ModelManager()
    tool = GenerateVideoTool(model=str(tmp_path / "no-such-model"), device="cpu", allow_cpu=True,
                             artifacts_dir=tmp_path / "out", manager=manager)
    for args in ({"prompt": "a boat", "width": 50}, {"prompt": "a boat", "frames": 97}, {"prompt": ""}):
        message = call(tool, **args)
        assert message.status == "error" and "Please fix the arguments" in message.content
    assert manager.load_count == {} and not (tmp_path / "out").exists()


def test_cpu_run_is_refused_with_an_estimate_before_loading(tmp_path):
    manager = ModelManager()
    tool = GenerateVideoTool(model=str(tmp_path / "no-such-model"), device="cpu", manager=manager)
    message = call(tool, prompt="a paper boat drifting on a pond")
    assert message.status == "error"
    assert ("video generation would run on the CPU here (no CUDA GPU in use), where 49 frames at 720x480 with 50 "
            "steps would take about") in message.content
    assert "hours" in message.content or "days" in message.content
    assert "tools.video_allow_cpu = true" in message.content
    assert manager.load_count == {}


def test_allowed_cpu_or_a_gpu_is_not_refused():
    request = GenerateVideoTool().validate(**VALID_VIDEO)
    GenerateVideoTool(allow_cpu=True).check_device(request, "cpu")
    GenerateVideoTool().check_device(request, "cuda:0")
    with pytest.raises(ToolError, match="would take"):
        GenerateVideoTool().check_device(request, "cpu")


# -- the estimate and the memory plan -----------------------------------------------------------
def test_tokens_follow_the_vae_and_the_patches():
    assert video_tokens(49, 480, 720) == 13 * 30 * 45
    assert video_tokens(9, 256, 256) == 3 * 16 * 16


def test_estimate_grows_with_the_clip_and_halves_without_guidance():
    base = estimate_cpu_seconds(49, 480, 720, 50, 6.0)
    assert estimate_cpu_seconds(9, 480, 720, 50, 6.0) < base
    assert estimate_cpu_seconds(49, 240, 368, 50, 6.0) < base
    assert estimate_cpu_seconds(49, 480, 720, 100, 6.0) == pytest.approx(2 * base, rel=0.02)
    assert estimate_cpu_seconds(49, 480, 720, 50, 1.0) == pytest.approx(base / 2, rel=0.02)
    assert base > 3600  # the default clip on a CPU is a matter of hours


def test_attention_makes_long_clips_cost_more_than_linearly():
    assert transformer_flops(2 * 10_000) > 2 * transformer_flops(10_000)


@pytest.mark.parametrize(("seconds", "text"), [
    (12, "about 12 s"), (600, "about 10 minutes"), (3 * 3600, "about 3.0 hours"), (5 * 86400, "about 5.0 days"),
])
def test_durations_read_naturally(seconds, text):
    assert describe_duration(seconds) == text


@pytest.mark.parametrize(("free_gib", "plan"), [(40, "none"), (16, "model"), (8, "sequential")])
def test_offload_follows_free_memory(free_gib, plan):
    assert choose_offload("auto", free_gib * GIB, 13 * GIB, 9 * GIB) == plan


def test_offload_setting_wins_over_measurement():
    assert choose_offload("sequential", 80 * GIB, 13 * GIB, 9 * GIB) == "sequential"
    with pytest.raises(ValueError, match="offload 'some'"):
        choose_offload("some", 0, 0, 0)


# -- MP4 and contact sheet ----------------------------------------------------------------------
def colour_frames(count: int, height: int = 32, width: int = 48) -> np.ndarray:
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    for index in range(count):
        frames[index] = (index * 25 % 256, 128, 255 - index * 25 % 256)
    return frames


def test_mp4_is_h264_with_its_frames_rate_and_metadata(tmp_path):
    av = pytest.importorskip("av")
    frames = colour_frames(9)
    path = tmp_path / "clip.mp4"
    write_mp4(frames, 8, path, {"prompt": "a boat", "seed": 3})
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 8
        assert (stream.width, stream.height) == (48, 32)
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert container.metadata["title"] == "a boat"
        assert json.loads(container.metadata["comment"]) == {"prompt": "a boat", "seed": 3}
    assert len(decoded) == 9
    for original, back in zip(frames, decoded, strict=True):
        assert np.abs(original.astype(int) - back.astype(int)).mean() < 6


def test_mp4_needs_even_sides(tmp_path):
    pytest.importorskip("av")
    with pytest.raises(ToolError, match="even width and height"):
        write_mp4(colour_frames(2, 31, 48), 8, tmp_path / "x.mp4")


def test_frames_from_floats_are_scaled_and_clipped():
    frames = frames_to_uint8(np.array([[[[[-0.5, 0.5, 2.0]]]]], dtype=np.float32))  # a batch of one clip
    assert frames.shape == (1, 1, 1, 3) and frames.tolist() == [[[[0, 128, 255]]]]
    with pytest.raises(ToolError, match="frames of shape"):
        frames_to_uint8(np.zeros((2, 4, 4)))


def test_sheet_spreads_frames_over_the_clip():
    assert sheet_frame_indices(49) == [0, 7, 14, 21, 27, 34, 41, 48]
    assert sheet_frame_indices(5) == [0, 1, 2, 3, 4]
    sheet = contact_sheet(colour_frames(49, 240, 368), fps=8)
    assert sheet.size == (4 * (256 + 4) + 4, 2 * (167 + 14 + 4) + 4)
    pixel = sheet.getpixel((4 + 128, 4 + 14 + 80))
    assert pixel[1] == pytest.approx(128, abs=3)  # the first frame's colour, below its label


# -- generate_3d: arguments ---------------------------------------------------------------------
@pytest.fixture
def shape_tool(tool_workspace):
    return Generate3DTool(model="no/such-model", image_model="no/such-model", device="cpu",
                          allowed_dirs=[tool_workspace["allowed"]], artifacts_dir=tool_workspace["artifacts"],
                          manager=ModelManager())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "neither a prompt nor an image was given"),
        ({"prompt": "  "}, "neither a prompt nor an image"),
        ({"prompt": "a mug", "image": "mug.png"}, "either a prompt or an image, not both"),
        ({"prompt": "x" * 1001}, "1001 characters"),
        ({"prompt": "a mug", "format": "stl"}, "format = 'stl' is not supported; use one of glb, ply, obj"),
        ({"prompt": "a mug", "steps": 0}, "steps = 0"),
        ({"prompt": "a mug", "guidance": 99.0}, "guidance = 99.0"),
        ({"prompt": "a mug", "seed": -2}, "seed = -2"),
    ],
)
def test_3d_rejects_bad_arguments(shape_tool, arguments, message):
    with pytest.raises(InputError, match=message):
        shape_tool.validate(**arguments)


def test_3d_guidance_default_depends_on_the_source(shape_tool, tool_workspace):
    photo = tool_workspace["allowed"] / "mug.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(photo)
    assert shape_tool.validate(prompt="a mug").guidance == 15.0
    request = shape_tool.validate(image=str(photo))
    assert request.guidance == 3.0 and request.image.size == (40, 30) and request.image_path == photo.resolve()


def test_3d_refuses_images_outside_allowed_folders_and_corrupt_ones(shape_tool, tool_workspace):
    outside = tool_workspace["outside"] / "mug.png"
    Image.new("RGB", (8, 8)).save(outside)
    corrupt = tool_workspace["allowed"] / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    with pytest.raises(PathNotAllowedError, match="outside the allowed folders"):
        shape_tool.validate(image=str(outside))
    with pytest.raises(ImageError):
        shape_tool.validate(image=str(corrupt))
    for image in (str(outside), str(corrupt), str(tool_workspace["allowed"] / "missing.png")):
        message = call(shape_tool, image=image)
        assert message.status == "error" and message.content.startswith("Error running generate_3d")
    assert shape_tool.manager.load_count == {} and list(tool_workspace["artifacts"].iterdir()) == []


# -- mesh files and previews --------------------------------------------------------------------
def octahedron() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vertices = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float32)
    faces = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    colors = np.tile(np.array([[0.9, 0.2, 0.1]], dtype=np.float32), (6, 1))
    return vertices, faces, colors


@pytest.mark.parametrize("file_format", ["glb", "ply", "obj"])
def test_mesh_files_load_back_with_their_triangles_and_colours(tmp_path, file_format):
    trimesh = pytest.importorskip("trimesh")
    vertices, faces, colors = octahedron()
    path = tmp_path / f"shape.{file_format}"
    path.write_bytes(mesh_bytes(vertices, faces, colors, file_format))
    mesh = trimesh.load(path, force="mesh", process=False)
    assert len(mesh.faces) == 8 and len(mesh.vertices) == 6 and mesh.is_watertight
    expected = srgb_to_linear(colors[0]) if file_format == "glb" else colors[0]
    assert np.allclose(mesh.visual.vertex_colors[0][:3] / 255.0, expected, atol=0.01)
    assert mesh.volume == pytest.approx(4 / 3, rel=1e-5)


def test_unknown_mesh_format_is_refused():
    with pytest.raises(ToolError, match="mesh format 'stl'"):
        mesh_bytes(*octahedron(), "stl")


def test_z_up_becomes_y_up():
    assert z_up_to_y_up(np.array([[1.0, 2.0, 3.0]])).tolist() == [[1.0, 3.0, -2.0]]


def test_preview_shows_the_shape_in_every_view():
    vertices, faces, colors = octahedron()
    image = np.asarray(preview_image(vertices, faces, colors, size=64))
    assert image.shape == (128, 128, 3)
    for top, left in ((0, 0), (0, 64), (64, 0), (64, 64)):
        view = image[top : top + 64, left : left + 64].astype(int)
        assert (view[0, 0] == 255).all()  # background in the corner
        centre = view[32, 32]
        assert centre[0] > 2 * centre[1] and centre[0] > 2 * centre[2]  # lit red in the middle
        assert ((view != 255).any(axis=2)).mean() > 0.2


def test_preview_of_nothing_is_blank():
    image = np.asarray(preview_image(np.zeros((0, 3)), np.zeros((0, 3), dtype=int), np.zeros((0, 3)), size=32))
    assert (image == 255).all()


class RecordingPipeline:
    """Stands for a diffusers pipeline (no CUDA here): records how apply_memory_plan places it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.vae = self

    def to(self, device):
        self.calls.append(("to", device))

    def enable_model_cpu_offload(self, device):
        self.calls.append(("model offload", device))

    def enable_sequential_cpu_offload(self, device):
        self.calls.append(("sequential offload", device))

    def enable_tiling(self):
        self.calls.append(("tiling", ""))

    def enable_slicing(self):
        self.calls.append(("slicing", ""))


@pytest.mark.parametrize(("device", "plan", "calls", "savers"), [
    ("cpu", "none", [("to", "cpu")], []),
    ("cuda", "none", [("to", "cuda"), ("tiling", ""), ("slicing", "")], ["VAE tiling", "VAE slicing"]),
    ("cuda:1", "model", [("model offload", "cuda:1"), ("tiling", ""), ("slicing", "")],
     ["model CPU offload", "VAE tiling", "VAE slicing"]),
    ("cuda", "sequential", [("sequential offload", "cuda"), ("tiling", ""), ("slicing", "")],
     ["sequential CPU offload", "VAE tiling", "VAE slicing"]),
])
def test_memory_plan_places_the_pipeline(device, plan, calls, savers):
    from tools.video_cost import apply_memory_plan

    pipeline = RecordingPipeline()
    assert apply_memory_plan(pipeline, device, plan) == savers
    assert pipeline.calls == calls
