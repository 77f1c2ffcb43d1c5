"""``caption_image``: describe an image in words with an image-to-text model (BLIP by default).

Any checkpoint transformers loads with ``AutoModelForImageTextToText`` and ``AutoProcessor``
and that captions without a prompt works (BLIP, GIT...). :meth:`CaptionImageTool.caption_folder`
captions a whole folder in batches with a progress bar.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.core.defaults import CAPTION_MODEL, MAX_IMAGE_PIXELS
from agent.core.errors import ImageError, InputError, ModelLoadError
from agent.core.files import open_allowed_image, read_allowed_image, resolve_allowed_path
from agent.core.hub_access import hub_load_kwargs
from agent.core.images import is_image_path
from agent.core.model_manager import checkpoint_size_bytes
from agent.core.runtime import quiet_library_notices, tool_dtype
from agent.core.weights_policy import weight_kwargs
from tools.base import LlavaTool, default_allowed_dirs
from tools.cancellation import raise_if_cancelled

if TYPE_CHECKING:
    from PIL import Image

    from agent.core.config import AppConfig

logger = logging.getLogger(__name__)

DEFAULT_CAPTION_MODEL = CAPTION_MODEL
Detail = Literal["short", "detailed"]

# Decoding per level of detail: short is greedy and brief, detailed searches longer captions.
_GENERATION: dict[str, dict[str, Any]] = {
    "short": {"num_beams": 1, "do_sample": False},
    "detailed": {"num_beams": 3, "do_sample": False, "repetition_penalty": 1.3},
}


def apply_caption_adapter(model: Any, adapter: str) -> Any:
    """Fold a LoRA adapter (a PEFT folder) into a captioning model's weights, for plain-speed inference."""
    folder = Path(adapter).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise InputError(
            f"caption adapter {adapter!r} is not an adapter folder (no adapter_config.json); give the folder "
            "written by `llava-agent finetune caption`, or unset tools.caption_adapter"
        )
    try:
        from peft import PeftModel
    except ImportError:
        raise ModelLoadError("a caption adapter needs peft; install it with `pip install peft`") from None
    try:
        with quiet_library_notices():
            return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(
            f"caption adapter {adapter!r} does not fit the captioning model ({type(exc).__name__}: {exc}); use the "
            "base model it was trained on (its training_config.json names it)"
        ) from None


class CaptionImageInput(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)  # NaN and infinities are refused like any bad value

    image: str = Field(min_length=1, description="Path of the image file to describe, for example 'photos/cat.jpg'.")
    detail: Detail = Field(
        "short", description="'short' for a one-line caption, 'detailed' for a longer description."
    )


class CaptionImageTool(LlavaTool):
    """Caption an image file; also captions in-memory images and whole folders."""

    name: str = "caption_image"
    description: str = (
        "Describe in words what an image file shows. Use it when the user asks what is in an image "
        "file, wants a caption, or needs the content of a picture they gave by path."
    )
    args_schema: type[BaseModel] = CaptionImageInput
    model: str = Field(DEFAULT_CAPTION_MODEL, description="Hub id or local folder of an image-to-text checkpoint.")
    adapter: str | None = Field(
        None, description="Folder of a LoRA adapter for the model (written by `llava-agent finetune caption`)."
    )
    allowed_dirs: list[Path] | None = Field(None, description="Folders images may be read from; None = config's.")
    max_image_pixels: int = Field(MAX_IMAGE_PIXELS, gt=0)
    short_max_new_tokens: int = Field(30, gt=0, description="Longest short caption, in tokens.")
    detailed_max_new_tokens: int = Field(80, gt=0, description="Longest detailed caption, in tokens.")

    @classmethod
    def from_config(cls, config: AppConfig, manager: Any = None) -> CaptionImageTool:
        return cls(
            model=config.tools.caption_model, adapter=config.tools.caption_adapter, device=config.tools.device,
            allowed_dirs=config.allowed_dirs,
            max_image_pixels=config.tools.max_image_pixels, manager=manager,
            allow_pickle_weights=config.tools.allow_pickle_weights,
        )

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = self.resolved_device()
        hub = hub_load_kwargs(self.model, what="caption model")
        model = AutoModelForImageTextToText.from_pretrained(
            self.model, dtype=tool_dtype(device), **weight_kwargs(self.allow_pickle_weights), **hub
        )
        if self.adapter:
            model = apply_caption_adapter(model, self.adapter)
        return model.to(device).eval(), AutoProcessor.from_pretrained(self.model, **hub)

    def _use_model(self):
        device = self.resolved_device()
        return self.get_manager().use(
            ("caption", self.model, device) + ((self.adapter,) if self.adapter else ()), self._load, device=device,
            size_bytes=checkpoint_size_bytes(self.model),
        )

    def caption_images(self, images: Sequence[Image.Image], detail: Detail = "short", batch_size: int = 8) -> list[str]:
        """Captions for RGB images, in order."""
        import torch

        if detail not in _GENERATION:
            raise InputError(f"detail = {detail!r} is not one of {', '.join(_GENERATION)}")
        captions: list[str] = []
        with self._use_model() as (model, processor), torch.inference_mode():
            for start in range(0, len(images), batch_size):
                raise_if_cancelled()  # a call past its time limit stops between batches
                batch = processor(images=list(images[start : start + batch_size]), return_tensors="pt")
                batch = {k: v.to(model.device, dtype=model.dtype) if v.is_floating_point() else v.to(model.device)
                         for k, v in batch.items()}
                limit = self.short_max_new_tokens if detail == "short" else self.detailed_max_new_tokens
                output = model.generate(**batch, **{**_GENERATION[detail], "max_new_tokens": limit})
                captions.extend(text.strip() for text in processor.batch_decode(output, skip_special_tokens=True))
        return captions

    def caption_folder(
        self, folder: str | os.PathLike[str], detail: Detail = "short", batch_size: int = 8, progress: bool = True
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Caption every image under ``folder`` (recursively); returns ``(captions, skipped)`` keyed by path."""
        from tqdm.auto import tqdm

        allowed = self.allowed_dirs if self.allowed_dirs is not None else default_allowed_dirs()
        root = resolve_allowed_path(folder, allowed)
        if not root.is_dir():
            raise InputError(f"{str(folder)!r} is not a folder; give a folder of images")
        paths = sorted(p for p in root.rglob("*") if is_image_path(p) and p.is_file())
        captions: dict[str, str] = {}
        skipped: dict[str, str] = {}
        with tqdm(total=len(paths), desc="Captioning images", unit="img", disable=not progress) as bar:
            for start in range(0, len(paths), batch_size):
                images, names = [], []
                for path in paths[start : start + batch_size]:
                    try:
                        images.append(
                            open_allowed_image(resolve_allowed_path(path, allowed), allowed, self.max_image_pixels)
                        )
                        names.append(str(path))
                    except (ImageError, InputError) as exc:
                        skipped[str(path)] = str(exc)
                if images:
                    captions.update(zip(names, self.caption_images(images, detail, batch_size), strict=True))
                bar.update(len(paths[start : start + batch_size]))
        return captions, skipped

    def _execute(self, image: str, detail: Detail = "short") -> tuple[str, dict[str, Any]]:
        started = time.perf_counter()
        allowed = self.allowed_dirs if self.allowed_dirs is not None else default_allowed_dirs()
        picture, resolved = read_allowed_image(image, allowed, self.max_image_pixels)
        caption = self.caption_images([picture], detail)[0]
        artifact = {
            "image": str(resolved), "caption": caption, "detail": detail, "model": self.model,
            "seconds": round(time.perf_counter() - started, 3),
        }
        return f"Caption of {image}: {caption or '(the model produced no words)'}", artifact
