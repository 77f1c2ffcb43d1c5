"""``generate_image``: text-to-image with diffusers (``stabilityai/sd-turbo`` by default).

Any SD 1.x/2.x/SDXL checkpoint ``AutoPipelineForText2Image`` loads works (safetensors only);
fp16 on CUDA, fp32 elsewhere. The PNG carries its prompt, negative prompt, seed, steps,
guidance and model in PNG text chunks and is written into the artifacts folder under a new
name, never over an existing file.

Safety checker policy (``tools.safety_checker``): ``true`` (default) keeps the checker a
checkpoint ships (SD 1.x does; sd-turbo and SDXL ship none) and refuses to save an image it
flags; ``false`` loads the pipeline without it.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from agent.core.defaults import IMAGE_MODEL, IMAGE_STEPS
from agent.core.errors import InputError, ToolError
from agent.core.files import write_new_artifact
from agent.core.hub_access import hub_load_kwargs
from agent.core.model_manager import checkpoint_size_bytes
from agent.core.runtime import quiet_library_notices, tool_dtype
from tools.base import PIPELINE_LOAD_LOCK, LlavaTool, default_artifacts_dir
from tools.cancellation import cancelled, raise_if_cancelled
from tools.shared_state import exclusive

if TYPE_CHECKING:
    from agent.core.config import AppConfig

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_MODEL = IMAGE_MODEL
MIN_SIDE, MAX_SIDE = 64, 2048
MAX_PROMPT_CHARS = 2000


def _stop_when_cancelled(pipeline: Any, step: int, timestep: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Diffusers step callback: a call past its time limit skips its remaining steps."""
    if cancelled():
        pipeline._interrupt = True
    return values


MAX_STEPS = 100
MAX_GUIDANCE = 30.0
# Any number of up to 18 digits: below torch's 2**63 limit, and a range constrained decoding
# spells with a few automaton states (an exact 2**63 - 1 bound costs about 200 more).
MAX_SEED = 10**18 - 1


class GenerateImageInput(BaseModel):
    """Every bounded argument carries its bounds, so constrained decoding writes only values the tool takes."""

    model_config = ConfigDict(allow_inf_nan=False)  # NaN and infinities are refused like any bad value

    prompt: str = Field(min_length=1, description="What the picture should show, in plain words (subject, style, setting).")
    negative_prompt: str | None = Field(None, description="What the picture should not show, if anything.")
    width: int = Field(
        512, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8,
        description=f"Width in pixels, a multiple of 8 from {MIN_SIDE} to {MAX_SIDE}.",
    )
    height: int = Field(
        512, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8,
        description=f"Height in pixels, a multiple of 8 from {MIN_SIDE} to {MAX_SIDE}.",
    )
    steps: int | None = Field(
        None, ge=1, le=MAX_STEPS, description=f"Denoising steps (1 to {MAX_STEPS}); leave empty for the model's default."
    )
    guidance: float = Field(
        0.0, ge=0.0, le=MAX_GUIDANCE, description="Prompt guidance scale from 0 to 30; 0 for turbo models, about 7 for others."
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Random seed to reproduce an image; leave empty for a new one."
    )


class GenerateImageTool(LlavaTool):
    """Create a PNG from a text prompt."""

    name: str = "generate_image"
    description: str = (
        "Create a new picture from a text description and save it as a PNG file. Use it when the user "
        "asks to draw, paint, render or generate an image."
    )
    args_schema: type[BaseModel] = GenerateImageInput
    model: str = Field(DEFAULT_IMAGE_MODEL, description="Hub id or local folder of a diffusers checkpoint.")
    artifacts_dir: Path | None = Field(None, description="Where PNGs are written; None = config's.")
    default_steps: int = Field(IMAGE_STEPS, ge=1, description="Steps when the call gives none (1-4 for sd-turbo).")
    max_steps: int = Field(MAX_STEPS, ge=1, le=MAX_STEPS, description="The most denoising steps a call may ask for.")
    max_side: int = Field(MAX_SIDE, ge=MIN_SIDE, le=MAX_SIDE, description="The widest and tallest picture a call may ask for.")

    @model_validator(mode="after")
    def _schema_with_these_limits(self) -> GenerateImageTool:
        """The schema promises only what this tool accepts, so constrained decoding writes nothing else."""
        if self.default_steps > self.max_steps:
            raise ValueError(f"the default of {self.default_steps} steps (tools.image_steps) is over the limit of "
                             f"{self.max_steps} (tools.image_max_steps); lower one or raise the other")
        fields: dict[str, Any] = {}
        if self.max_steps != MAX_STEPS:
            fields["steps"] = (int | None, Field(
                None, ge=1, le=self.max_steps,
                description=f"Denoising steps (1 to {self.max_steps}); leave empty for the model's default."))
        if self.max_side != MAX_SIDE:
            for label in ("width", "height"):
                fields[label] = (int, Field(
                    self.default_side, ge=MIN_SIDE, le=self.largest_side, multiple_of=8,
                    description=f"{label.capitalize()} in pixels, a multiple of 8 from {MIN_SIDE} to {self.largest_side}."))
        if fields:
            self.args_schema = create_model("GenerateImageInput", __base__=GenerateImageInput, **fields)
        return self

    @property
    def largest_side(self) -> int:
        """The widest or tallest picture a call may ask for: ``max_side`` down to a multiple of 8."""
        return self.max_side - self.max_side % 8

    @property
    def default_side(self) -> int:
        """Width and height when a call gives none."""
        return min(512, self.largest_side)

    safety_checker: bool = Field(True, description="Keep the checkpoint's safety checker if it has one.")

    @classmethod
    def from_config(cls, config: AppConfig, manager: Any = None) -> GenerateImageTool:
        return cls(
            model=config.tools.image_model, device=config.tools.device, artifacts_dir=config.artifacts_dir,
            safety_checker=config.tools.safety_checker, default_steps=config.tools.image_steps, manager=manager,
            allow_pickle_weights=config.tools.allow_pickle_weights, max_steps=config.tools.image_max_steps,
            max_side=config.tools.image_max_side,
        )

    def _load(self) -> Any:
        device = self.resolved_device()
        kwargs: dict[str, Any] = {
            "dtype": tool_dtype(device),
            "use_safetensors": not self.allow_pickle_weights or None,
        }
        if not self.safety_checker:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        kwargs.update(hub_load_kwargs(self.model, what="image model", config_file="model_index.json"))
        with PIPELINE_LOAD_LOCK:  # diffusers' lazy imports are not thread-safe on first use
            from diffusers import AutoPipelineForText2Image

            with quiet_library_notices():
                pipeline = AutoPipelineForText2Image.from_pretrained(self.model, **kwargs)
        return pipeline.to(device)

    def validate(
        self, prompt: str, width: int, height: int, steps: int | None, guidance: float, seed: int | None
    ) -> int:
        """Check the arguments; returns the number of steps to run."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("the prompt is empty; describe the picture to create")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InputError(f"the prompt has {len(prompt)} characters, over the limit of {MAX_PROMPT_CHARS}")
        for label, side in (("width", width), ("height", height)):
            if not MIN_SIDE <= side <= self.largest_side or side % 8:
                raise InputError(f"{label} = {side} must be a multiple of 8 from {MIN_SIDE} to {self.largest_side}, "
                                 f"e.g. {self.default_side}")
        steps = self.default_steps if steps is None else steps
        if not 1 <= steps <= self.max_steps:
            raise InputError(f"steps = {steps} must be from 1 to {self.max_steps}")
        if not 0.0 <= guidance <= MAX_GUIDANCE:
            raise InputError(f"guidance = {guidance} must be from 0 to 30 (0 for turbo models)")
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise InputError(f"seed = {seed} must be an integer from 0 to {MAX_SEED}")
        return steps

    def _execute(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        guidance: float = 0.0,
        seed: int | None = None,
    ) -> tuple[str, dict[str, Any]]:
        import torch
        from PIL.PngImagePlugin import PngInfo

        width = self.default_side if width is None else width
        height = self.default_side if height is None else height
        steps = self.validate(prompt, width, height, steps, guidance, seed)
        seed = secrets.randbelow(2**31) if seed is None else seed
        device = self.resolved_device()
        started = time.perf_counter()
        with self.get_manager().use(
            ("text-to-image", self.model, device, self.safety_checker), self._load, device=device,
            size_bytes=checkpoint_size_bytes(self.model),
        ) as shared, exclusive(shared) as pipeline:  # the pipeline and its scheduler hold per-call state
            generator = torch.Generator(device="cpu" if device == "mps" else device).manual_seed(seed)
            result = pipeline(
                prompt=prompt, negative_prompt=negative_prompt or None, width=width, height=height,
                num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                callback_on_step_end=_stop_when_cancelled,
            )
        raise_if_cancelled()  # past its time limit: nothing is saved
        flagged = getattr(result, "nsfw_content_detected", None)
        if flagged and any(flagged):
            raise ToolError(
                "the safety checker flagged the generated image, so it was not saved; change the prompt "
                "(tools.safety_checker controls this policy)"
            )
        image = result.images[0]
        info = PngInfo()
        metadata = {
            "prompt": prompt, "negative_prompt": negative_prompt or "", "seed": str(seed), "steps": str(steps),
            "guidance": str(guidance), "model": self.model, "width": str(width), "height": str(height),
        }
        for key, value in metadata.items():
            info.add_itxt(key, value)
        folder = self.artifacts_dir or default_artifacts_dir()
        path = write_new_artifact(folder, prompt, ".png", lambda handle: image.save(handle, format="PNG", pnginfo=info))
        seconds = round(time.perf_counter() - started, 3)
        artifact = {"path": str(path), "seed": seed, "width": width, "height": height, "steps": steps,
                    "guidance": guidance, "model": self.model, "seconds": seconds}
        return f"Saved the generated image to {path} (seed {seed}).", artifact
