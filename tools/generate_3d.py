"""``generate_3d``: a 3-D object from a sentence or from a photo, with diffusers' Shap-E pipelines.

* From text: ``ShapEPipeline`` (``tools.shape_model``, default ``openai/shap-e``).
* From an image in an allowed folder (an attached photo, say): ``ShapEImg2ImgPipeline``
  (``tools.shape_image_model``, default ``openai/shap-e-img2img``).

The pipeline makes a latent; :mod:`tools.shape_decoding` turns it into a coloured mesh on a
``tools.mesh_grid_size``^3 grid, written as GLB (default), PLY or OBJ through trimesh
(:mod:`tools.mesh_files`), with a preview PNG of four views beside it.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field

from agent.core.defaults import MAX_IMAGE_PIXELS, MESH_GRID_SIZE, SHAPE_IMAGE_MODEL, SHAPE_MODEL, SHAPE_STEPS
from agent.core.errors import InputError, ModelLoadError, ToolError
from agent.core.files import read_allowed_image, write_new_artifact
from agent.core.hub_access import hub_load_kwargs
from agent.core.model_manager import checkpoint_size_bytes
from agent.core.runtime import quiet_library_notices, tool_dtype
from tools.base import (
    PIPELINE_LOAD_LOCK,
    LlavaTool,
    SharedPipeline,
    default_allowed_dirs,
    default_artifacts_dir,
    require_package,
)
from tools.mesh_files import MESH_FORMATS, MeshFormat, mesh_bytes, preview_image, z_up_to_y_up
from tools.shape_decoding import decode_latent_to_mesh, ensure_mesh_table

if TYPE_CHECKING:
    from PIL import Image

    from agent.core.config import AppConfig

logger = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 1000
TEXT_GUIDANCE, IMAGE_GUIDANCE = 15.0, 3.0
"""Shap-E's recommended guidance scales from text and from an image."""


class Generate3DInput(BaseModel):
    prompt: str | None = Field(
        None, description="The object to make, in a few words (e.g. 'a red ceramic mug'); leave empty when giving an image."
    )
    image: str | None = Field(
        None, description="Path of a photo of the object to turn into 3-D (e.g. an attached image); leave empty for text."
    )
    format: MeshFormat = Field("glb", description="File format: 'glb' (default, for web and most viewers), 'ply' or 'obj'.")
    steps: int | None = Field(None, description="Denoising steps; leave empty for the model's default (64).")
    guidance: float | None = Field(
        None, description=f"Guidance scale; leave empty for the default ({TEXT_GUIDANCE:g} from text, {IMAGE_GUIDANCE:g} from an image)."
    )
    seed: int | None = Field(None, description="Random seed to reproduce an object; leave empty for a new one.")


@dataclass(frozen=True)
class ShapeRequest:
    """A checked call; ``image`` is decoded already (so a bad file fails before any model loads)."""

    prompt: str | None
    image: Image.Image | None
    image_path: Path | None
    format: str
    steps: int
    guidance: float
    seed: int | None


class Generate3DTool(LlavaTool):
    """Make a textured 3-D mesh from a text prompt or an image."""

    name: str = "generate_3d"
    description: str = (
        "Create a 3-D model (a mesh file, GLB by default) of an object, either from a short text description or "
        "from a photo of the object, with a preview picture. Use it when the user asks for a 3-D model, a mesh "
        "or a 3-D print of something."
    )
    examples: ClassVar[list[str]] = [
        "make a 3D model of the mug in this photo",
        "create a 3D model of a wooden chair",
        "turn this picture of my toy car into a 3D object I can print",
        "I need an OBJ mesh of a small red teapot",
    ]
    args_schema: type[BaseModel] = Generate3DInput
    model: str = Field(SHAPE_MODEL, description="Hub id or local folder of a Shap-E text-to-3D checkpoint.")
    image_model: str = Field(SHAPE_IMAGE_MODEL, description="Hub id or local folder of a Shap-E image-to-3D checkpoint.")
    allowed_dirs: list[Path] | None = Field(None, description="Folders images may be read from; None = config's.")
    artifacts_dir: Path | None = Field(None, description="Where meshes and previews are written; None = config's.")
    max_image_pixels: int = Field(MAX_IMAGE_PIXELS, gt=0)
    default_steps: int = Field(SHAPE_STEPS, ge=1, description="Steps when the call gives none.")
    max_steps: int = Field(200, ge=1)
    grid_size: int = Field(MESH_GRID_SIZE, ge=16, le=512, description="Samples per side of the meshing grid.")
    preview_size: int = Field(256, ge=32, le=1024, description="Pixels per side of each preview view.")
    max_faces: int = Field(
        2_000_000, gt=0, description="Largest mesh kept, in triangles; more means the shape came out as noise."
    )

    @classmethod
    def from_config(cls, config: AppConfig, manager: Any = None) -> Generate3DTool:
        tools = config.tools
        return cls(
            model=tools.shape_model, image_model=tools.shape_image_model, device=tools.device,
            allowed_dirs=config.allowed_dirs, artifacts_dir=config.artifacts_dir,
            max_image_pixels=tools.max_image_pixels, default_steps=tools.shape_steps,
            grid_size=tools.mesh_grid_size, manager=manager,
        )

    # -- checks ----------------------------------------------------------------------------------
    def validate(
        self, prompt: str | None = None, image: str | None = None, format: str = "glb", steps: int | None = None,
        guidance: float | None = None, seed: int | None = None,
    ) -> ShapeRequest:
        """Check every argument and decode the image, without loading a model."""
        prompt = prompt.strip() if isinstance(prompt, str) else None
        image = image.strip() if isinstance(image, str) else None
        if prompt and image:
            raise InputError("give either a prompt or an image, not both: Shap-E works from one or the other")
        if not prompt and not image:
            raise InputError("neither a prompt nor an image was given; describe the object or give the path of a photo")
        if prompt and len(prompt) > MAX_PROMPT_CHARS:
            raise InputError(f"the prompt has {len(prompt)} characters, over the limit of {MAX_PROMPT_CHARS}")
        if format not in MESH_FORMATS:
            raise InputError(f"format = {format!r} is not supported; use one of {', '.join(MESH_FORMATS)}")
        steps = self.default_steps if steps is None else steps
        if not 1 <= steps <= self.max_steps:
            raise InputError(f"steps = {steps} must be from 1 to {self.max_steps}")
        guidance = (IMAGE_GUIDANCE if image else TEXT_GUIDANCE) if guidance is None else guidance
        if not 0.0 <= guidance <= 50.0:
            raise InputError(f"guidance = {guidance} must be from 0 to 50 ({TEXT_GUIDANCE:g} suits text, {IMAGE_GUIDANCE:g} images)")
        if seed is not None and not 0 <= seed < 2**63:
            raise InputError(f"seed = {seed} must be a non-negative integer below 2**63")
        picture = resolved = None
        if image:
            allowed = self.allowed_dirs if self.allowed_dirs is not None else default_allowed_dirs()
            picture, resolved = read_allowed_image(image, allowed, self.max_image_pixels)
        return ShapeRequest(prompt or None, picture, resolved, format, steps, guidance, seed)

    # -- the models ------------------------------------------------------------------------------
    def _loader(self, model: str, from_image: bool):
        def load() -> Any:
            device = self.resolved_device()
            hub = hub_load_kwargs(model, what="3-D model", config_file="model_index.json")
            with PIPELINE_LOAD_LOCK:
                import diffusers

                expected = diffusers.ShapEImg2ImgPipeline if from_image else diffusers.ShapEPipeline
                with quiet_library_notices():
                    pipeline = diffusers.DiffusionPipeline.from_pretrained(
                        model, dtype=tool_dtype(device), use_safetensors=True, **hub
                    )
            if not isinstance(pipeline, expected):
                setting = "shape_image_model" if from_image else "shape_model"
                raise ModelLoadError(
                    f"{model} loads as {type(pipeline).__name__}, not {expected.__name__}; set tools.{setting} to a "
                    "Shap-E checkpoint"
                )
            table = ensure_mesh_table(pipeline.shap_e_renderer)
            pipeline.set_progress_bar_config(desc=f"Generating 3-D ({device})")
            return SharedPipeline(pipeline.to(device), table)

        return load

    # -- the tool --------------------------------------------------------------------------------
    def _execute(self, **arguments: Any) -> tuple[str, dict[str, Any]]:
        import torch

        request = self.validate(**arguments)
        require_package("trimesh", "3d", "generate_3d")
        from_image = request.image is not None
        model = self.image_model if from_image else self.model
        seed = secrets.randbelow(2**31) if request.seed is None else request.seed
        device = self.resolved_device()
        started = time.perf_counter()
        with self.get_manager().use(
            ("3d", model, device), self._loader(model, from_image), device=device, size_bytes=checkpoint_size_bytes(model)
        ) as shared, shared.lock:
            pipeline, table = shared.pipeline, shared.details
            condition = {"image": request.image} if request.image is not None else {"prompt": request.prompt}
            latents = pipeline(
                **condition, num_inference_steps=request.steps, guidance_scale=request.guidance,
                generator=torch.Generator(device="cpu").manual_seed(seed), output_type="latent",
            ).images
            sampled = time.perf_counter()
            vertices, faces, colors = decode_latent_to_mesh(
                pipeline.shap_e_renderer, latents[0], self.grid_size, table, max_faces=self.max_faces
            )
        if len(faces) == 0:
            raise ToolError(
                "the model produced no surface for this request (the whole box came out empty or full); try another "
                "seed, more steps or a different prompt or photo"
            )
        vertices = z_up_to_y_up(vertices)
        data = mesh_bytes(vertices, faces, colors, request.format)
        stem = request.prompt or f"3d-{request.image_path.stem}"
        folder = self.artifacts_dir or default_artifacts_dir()
        path = write_new_artifact(folder, stem, f".{request.format}", lambda handle: handle.write(data))
        preview = preview_image(vertices, faces, colors, self.preview_size)
        preview_path = write_new_artifact(
            folder, f"{stem[:30]}-preview", ".png", lambda tmp: preview.save(tmp, format="PNG")
        )
        extent = (vertices.max(axis=0) - vertices.min(axis=0)).round(4).tolist()
        artifact = {
            "path": str(path), "mesh": str(path), "preview": str(preview_path), "format": request.format,
            "vertices": int(len(vertices)), "faces": int(len(faces)), "extent": extent, "grid_size": self.grid_size,
            "source": "image" if request.image is not None else "text",
            "image": str(request.image_path) if request.image_path else None, "prompt": request.prompt,
            "seed": seed, "steps": request.steps, "guidance": request.guidance, "model": model, "device": device,
            "sampling_seconds": round(sampled - started, 3), "seconds": round(time.perf_counter() - started, 3),
        }
        source = f"the photo {request.image_path.name}" if request.image_path else repr(request.prompt)
        return (
            f"Saved a 3-D model of {source} to {path} ({len(faces)} triangles, {request.format.upper()}) and a "
            f"preview to {preview_path} (seed {seed}).",
            artifact,
        )
