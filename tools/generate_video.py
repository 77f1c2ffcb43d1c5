"""``generate_video``: a short clip from a text prompt (diffusers ``CogVideoXPipeline`` by default).

Any checkpoint ``DiffusionPipeline`` loads as a text-to-video pipeline with CogVideoX's call
interface (``prompt``, ``negative_prompt``, ``num_frames``, ``height``, ``width``,
``num_inference_steps``, ``guidance_scale``, ``generator``; frames out) works;
``tools.video_model`` names it. The clip is written as an H.264 MP4 (PyAV, no ffmpeg program)
with a contact-sheet PNG beside it: the chat shows the sheet, a player or a web page plays the
video.

A CPU would take hours for the default clip, so on a CPU the tool refuses with an estimate (see
:mod:`tools.video_cost`) unless ``tools.video_allow_cpu`` is set. On CUDA the pipeline runs in fp16, the VAE decodes in
tiles and slices, and the pipeline is offloaded to the CPU when the GPU's free memory asks for
it (``tools.video_offload``).
"""

from __future__ import annotations

import inspect
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field

from agent.core.defaults import VIDEO_MAX_FRAMES, VIDEO_MODEL, VIDEO_STEPS
from agent.core.errors import InputError, ModelLoadError, ToolError
from agent.core.files import write_new_artifact
from agent.core.hub_access import hub_load_kwargs
from agent.core.model_manager import checkpoint_size_bytes, model_size_bytes
from agent.core.runtime import quiet_library_notices, tool_dtype
from tools.base import PIPELINE_LOAD_LOCK, LlavaTool, SharedPipeline, default_artifacts_dir, require_package
from tools.video_cost import (
    REFERENCE_CPU,
    apply_memory_plan,
    choose_offload,
    describe_duration,
    estimate_cpu_seconds,
)
from tools.video_files import contact_sheet, frames_to_uint8, mp4_bytes

if TYPE_CHECKING:
    from agent.core.config import AppConfig

logger = logging.getLogger(__name__)

SIDE_MULTIPLE = 16
"""Width and height must be multiples of this: the VAE's 8x spatial compression times 2x2 patches."""
MIN_SIDE, MAX_SIDE = 32, 1920
MAX_FPS = 60
MAX_PROMPT_CHARS = 2000
PIPELINE_ARGUMENTS = (
    "prompt", "negative_prompt", "num_frames", "height", "width", "num_inference_steps", "guidance_scale", "generator",
)  # fmt: skip
"""What a text-to-video pipeline's ``__call__`` must accept to be used by this tool."""


class GenerateVideoInput(BaseModel):
    prompt: str = Field(description="What happens in the clip, in plain words: subject, motion, setting, style.")
    negative_prompt: str | None = Field(None, description="What the clip should not show, if anything.")
    frames: int = Field(
        VIDEO_MAX_FRAMES, description="Number of frames, one more than a multiple of 4 (9, 17, 25, 33, 41 or 49)."
    )
    fps: int = Field(8, description=f"Frames per second of the video, 1 to {MAX_FPS} (49 frames at 8 fps last 6 s).")
    width: int = Field(720, description=f"Width in pixels, a multiple of {SIDE_MULTIPLE} from {MIN_SIDE} to {MAX_SIDE}.")
    height: int = Field(480, description=f"Height in pixels, a multiple of {SIDE_MULTIPLE} from {MIN_SIDE} to {MAX_SIDE}.")
    steps: int | None = Field(None, description="Denoising steps; leave empty for the model's default (50).")
    guidance: float = Field(6.0, description="Prompt guidance scale, about 6; 1 turns guidance off.")
    seed: int | None = Field(None, description="Random seed to reproduce a clip; leave empty for a new one.")


@dataclass(frozen=True)
class VideoRequest:
    """A checked call: everything the pipeline needs."""

    prompt: str
    negative_prompt: str | None
    frames: int
    fps: int
    width: int
    height: int
    steps: int
    guidance: float
    seed: int | None


class GenerateVideoTool(LlavaTool):
    """Make an MP4 clip and a contact sheet from a text prompt."""

    name: str = "generate_video"
    description: str = (
        "Create a short video clip from a text description and save it as an MP4 file, with a sheet of "
        "still frames to look at. Use it when the user asks to animate, film or make a video of something."
    )
    examples: ClassVar[list[str]] = [
        "animate a paper boat drifting on a pond",
        "make a short video of a cat chasing a red ball",
        "film a timelapse of clouds rolling over a mountain",
        "can you turn 'a campfire crackling at night' into a clip?",
    ]
    args_schema: type[BaseModel] = GenerateVideoInput
    model: str = Field(VIDEO_MODEL, description="Hub id or local folder of a text-to-video diffusers checkpoint.")
    artifacts_dir: Path | None = Field(None, description="Where MP4s and contact sheets are written; None = config's.")
    default_steps: int = Field(VIDEO_STEPS, ge=1, description="Steps when the call gives none.")
    max_steps: int = Field(200, ge=1)
    max_frames: int = Field(VIDEO_MAX_FRAMES, ge=1, description="Longest clip, in frames.")
    frame_step: int = Field(4, ge=1, description="The VAE's temporal compression: frames must be 1 + a multiple of it.")
    allow_cpu: bool = Field(False, description="Run on a CPU instead of refusing with a time estimate.")
    offload: Literal["auto", "none", "model", "sequential"] = Field("auto", description="CUDA memory saver.")

    @classmethod
    def from_config(cls, config: AppConfig, manager: Any = None) -> GenerateVideoTool:
        tools = config.tools
        return cls(
            model=tools.video_model, device=tools.device, artifacts_dir=config.artifacts_dir,
            default_steps=tools.video_steps, max_frames=tools.video_max_frames, allow_cpu=tools.video_allow_cpu,
            offload=tools.video_offload, manager=manager,
        )

    # -- checks ----------------------------------------------------------------------------------
    def validate(
        self, prompt: str, negative_prompt: str | None = None, frames: int = VIDEO_MAX_FRAMES, fps: int = 8,
        width: int = 720, height: int = 480, steps: int | None = None, guidance: float = 6.0, seed: int | None = None,
    ) -> VideoRequest:
        """Check every argument (no model is loaded); returns the request with defaults filled in."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("the prompt is empty; describe what the clip should show")
        for label, text in (("prompt", prompt), ("negative prompt", negative_prompt or "")):
            if len(text) > MAX_PROMPT_CHARS:
                raise InputError(f"the {label} has {len(text)} characters, over the limit of {MAX_PROMPT_CHARS}")
        lowest = self.frame_step + 1
        if frames > self.max_frames:
            raise InputError(
                f"frames = {frames} is too many: the limit is {self.max_frames} (tools.video_max_frames); "
                "ask for a shorter clip"
            )
        if frames < lowest or (frames - 1) % self.frame_step:
            below = max(lowest, frames - (frames - 1) % self.frame_step)
            raise InputError(
                f"frames = {frames} must be one more than a multiple of {self.frame_step}, from {lowest} to "
                f"{self.max_frames}, e.g. {below} or {min(below + self.frame_step, self.max_frames)}"
            )
        if not 1 <= fps <= MAX_FPS:
            raise InputError(f"fps = {fps} must be from 1 to {MAX_FPS} (8 is the model's native rate)")
        for label, side in (("width", width), ("height", height)):
            if not MIN_SIDE <= side <= MAX_SIDE or side % SIDE_MULTIPLE:
                nearest = min(MAX_SIDE, max(MIN_SIDE, round(side / SIDE_MULTIPLE) * SIDE_MULTIPLE))
                raise InputError(
                    f"{label} = {side} is not a supported size: it must be a multiple of {SIDE_MULTIPLE} from "
                    f"{MIN_SIDE} to {MAX_SIDE}, e.g. {nearest}"
                )
        steps = self.default_steps if steps is None else steps
        if not 1 <= steps <= self.max_steps:
            raise InputError(f"steps = {steps} must be from 1 to {self.max_steps}")
        if not 0.0 <= guidance <= 30.0:
            raise InputError(f"guidance = {guidance} must be from 0 to 30 (about 6 suits CogVideoX)")
        if seed is not None and not 0 <= seed < 2**63:
            raise InputError(f"seed = {seed} must be a non-negative integer below 2**63")
        return VideoRequest(prompt, negative_prompt or None, frames, fps, width, height, steps, guidance, seed)

    def check_device(self, request: VideoRequest, device: str) -> None:
        """Refuse a CPU run (with an estimate of its time) unless it was allowed."""
        if device != "cpu" or self.allow_cpu:
            return
        seconds = estimate_cpu_seconds(request.frames, request.height, request.width, request.steps, request.guidance)
        raise ToolError(
            f"video generation would run on the CPU here (no CUDA GPU in use), where {request.frames} frames at "
            f"{request.width}x{request.height} with {request.steps} steps would take {describe_duration(seconds)} "
            f"(estimated for a CogVideoX-2b-sized model from a benchmark on {REFERENCE_CPU.cores} CPU cores); run "
            "it with a CUDA GPU (tools.device), or set tools.video_allow_cpu = true to run on the CPU anyway "
            "(fewer frames, a smaller size and fewer steps are faster)"
        )

    # -- the model -------------------------------------------------------------------------------
    def _load(self) -> Any:
        import torch

        device = self.resolved_device()
        hub = hub_load_kwargs(self.model, what="video model", config_file="model_index.json")
        with PIPELINE_LOAD_LOCK:
            from diffusers import DiffusionPipeline

            with quiet_library_notices():
                pipeline = DiffusionPipeline.from_pretrained(
                    self.model, dtype=tool_dtype(device), use_safetensors=True, **hub
                )
        accepted = set(inspect.signature(pipeline.__call__).parameters)
        missing = [name for name in PIPELINE_ARGUMENTS if name not in accepted]
        if missing:
            raise ModelLoadError(
                f"{self.model} loads as {type(pipeline).__name__}, which is not a text-to-video pipeline with "
                f"CogVideoX's interface (its call lacks {', '.join(missing)}); set tools.video_model to a "
                "CogVideoX checkpoint"
            )
        plan = "none"
        if device.startswith("cuda"):
            components = [m for m in pipeline.components.values() if isinstance(m, torch.nn.Module)]
            free_bytes, _ = torch.cuda.mem_get_info(torch.device(device))
            plan = choose_offload(
                self.offload, free_bytes, model_size_bytes(pipeline), max(map(model_size_bytes, components), default=0)
            )
        pipeline.set_progress_bar_config(desc=f"Generating video ({device})")
        savers = apply_memory_plan(pipeline, device, plan)
        logger.info("%s on %s: %s", self.model, device, ", ".join(savers) or "no memory savers")
        return SharedPipeline(pipeline, savers)

    # -- the tool --------------------------------------------------------------------------------
    def _execute(self, **arguments: Any) -> tuple[str, dict[str, Any]]:
        import torch

        request = self.validate(**arguments)
        device = self.resolved_device()
        self.check_device(request, device)
        require_package("av", "video", "generate_video")
        seed = secrets.randbelow(2**31) if request.seed is None else request.seed
        started = time.perf_counter()
        with self.get_manager().use(
            ("text-to-video", self.model, device, self.offload), self._load, device=device,
            size_bytes=checkpoint_size_bytes(self.model),
        ) as shared, shared.lock:
            savers = shared.details
            result = shared.pipeline(
                prompt=request.prompt, negative_prompt=request.negative_prompt, num_frames=request.frames,
                height=request.height, width=request.width, num_inference_steps=request.steps,
                guidance_scale=request.guidance, generator=torch.Generator(device="cpu").manual_seed(seed),
                output_type="np",
            )
        frames = frames_to_uint8(result.frames)
        if frames.shape[1:3] != (request.height, request.width):
            raise ToolError(
                f"the pipeline made {frames.shape[2]}x{frames.shape[1]} frames instead of the {request.width}x"
                f"{request.height} asked for; {self.model} may not support this size"
            )
        metadata = {
            "prompt": request.prompt, "negative_prompt": request.negative_prompt or "", "seed": seed,
            "steps": request.steps, "guidance": request.guidance, "model": self.model,
        }
        folder = self.artifacts_dir or default_artifacts_dir()
        video = write_new_artifact(folder, request.prompt, ".mp4", lambda handle: handle.write(mp4_bytes(frames, request.fps, metadata)))
        sheet_image = contact_sheet(frames, fps=request.fps)
        sheet = write_new_artifact(
            folder, f"{request.prompt[:30]}-sheet", ".png", lambda tmp: sheet_image.save(tmp, format="PNG")
        )
        count, height, width = frames.shape[:3]
        duration = count / request.fps
        artifact = {
            "path": str(video), "video": str(video), "preview": str(sheet), "contact_sheet": str(sheet),
            "frames": count, "fps": request.fps, "duration_s": round(duration, 3), "width": width, "height": height,
            "seed": seed, "steps": request.steps, "guidance": request.guidance, "model": self.model,
            "device": device, "memory_savers": list(savers), "seconds": round(time.perf_counter() - started, 3),
        }
        return (
            f"Saved a {duration:.1f} s video ({count} frames, {width}x{height}) to {video} and its contact sheet "
            f"to {sheet} (seed {seed}).",
            artifact,
        )
