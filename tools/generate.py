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

from pydantic import BaseModel, Field

from agent.errors import InputError, ToolError
from tools.base import LlavaTool, default_artifacts_dir, ranged
from tools.paths import write_new_artifact

if TYPE_CHECKING:
    from agent.config import AppConfig

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_MODEL = "stabilityai/sd-turbo"
MIN_SIDE, MAX_SIDE = 64, 2048
MAX_PROMPT_CHARS = 2000
MAX_STEPS = 100
MAX_GUIDANCE = 30
MAX_SEED = 2**32 - 1
Side = ranged(int, MIN_SIDE, MAX_SIDE)
Steps = ranged(int, 1, MAX_STEPS, optional=True)
Guidance = ranged(float, 0, MAX_GUIDANCE)
Seed = ranged(int, 0, MAX_SEED, optional=True)


class GenerateImageInput(BaseModel):
    prompt: str = Field(description="What the picture should show, in plain words (subject, style, setting).")
    negative_prompt: str | None = Field(None, description="What the picture should not show, if anything.")
    width: Side = Field(512, description=f"Width in pixels, a multiple of 8 from {MIN_SIDE} to {MAX_SIDE}.")
    height: Side = Field(512, description=f"Height in pixels, a multiple of 8 from {MIN_SIDE} to {MAX_SIDE}.")
    steps: Steps = Field(None, description="Denoising steps; leave empty for the model's default.")
    guidance: Guidance = Field(0.0, description="Prompt guidance scale; 0 for turbo models, about 7 for others.")
    seed: Seed = Field(None, description="Random seed to reproduce an image; leave empty for a new one.")


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
    default_steps: int = Field(1, ge=1, description="Steps when the call gives none (1-4 for sd-turbo).")
    max_steps: int = Field(MAX_STEPS, ge=1)
    safety_checker: bool = Field(True, description="Keep the checkpoint's safety checker if it has one.")

    @classmethod
    def from_config(cls, config: AppConfig, manager: Any = None) -> GenerateImageTool:
        return cls(
            model=config.tools.image_model, device=config.tools.device, artifacts_dir=config.artifacts_dir,
            safety_checker=config.tools.safety_checker, default_steps=config.tools.image_steps, manager=manager,
        )

    def _load(self) -> Any:
        import torch
        from diffusers import AutoPipelineForText2Image

        device = self.resolved_device()
        kwargs: dict[str, Any] = {
            "dtype": torch.float16 if device.startswith("cuda") else torch.float32,
            "use_safetensors": True,
        }
        if not self.safety_checker:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
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
            if not MIN_SIDE <= side <= MAX_SIDE or side % 8:
                raise InputError(
                    f"{label} = {side} must be a multiple of 8 from {MIN_SIDE} to {MAX_SIDE}, e.g. 512"
                )
        steps = self.default_steps if steps is None else steps
        if not 1 <= steps <= self.max_steps:
            raise InputError(f"steps = {steps} must be from 1 to {self.max_steps}")
        if not 0.0 <= guidance <= MAX_GUIDANCE:
            raise InputError(f"guidance = {guidance} must be from 0 to {MAX_GUIDANCE} (0 for turbo models)")
        if seed is not None and not 0 <= seed < 2**63:
            raise InputError(f"seed = {seed} must be a non-negative integer below 2**63")
        return steps

    def _execute(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        width: int = 512,
        height: int = 512,
        steps: int | None = None,
        guidance: float = 0.0,
        seed: int | None = None,
    ) -> tuple[str, dict[str, Any]]:
        import torch
        from PIL.PngImagePlugin import PngInfo

        from tools.model_manager import checkpoint_size_bytes

        steps = self.validate(prompt, width, height, steps, guidance, seed)
        seed = secrets.randbelow(2**31) if seed is None else seed
        device = self.resolved_device()
        started = time.perf_counter()
        with self.get_manager().use(
            ("text-to-image", self.model, device, self.safety_checker), self._load, device=device,
            size_bytes=checkpoint_size_bytes(self.model),
        ) as pipeline:
            generator = torch.Generator(device="cpu" if device == "mps" else device).manual_seed(seed)
            result = pipeline(
                prompt=prompt, negative_prompt=negative_prompt or None, width=width, height=height,
                num_inference_steps=steps, guidance_scale=guidance, generator=generator,
            )
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
        path = write_new_artifact(folder, prompt, ".png", lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
        seconds = round(time.perf_counter() - started, 3)
        artifact = {"path": str(path), "seed": seed, "width": width, "height": height, "steps": steps,
                    "guidance": guidance, "model": self.model, "seconds": seconds}
        return f"Saved the generated image to {path} (seed {seed}).", artifact
