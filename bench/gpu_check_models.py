"""Random-weight checkpoints for ``bench/gpu_check.py``, at the real architecture sizes or tiny.

Sizes (``full``), each a real architecture built from its config with random weights:

* LLaVA at llava-1.5-7b size: a CLIP ViT-L/14-336 vision tower (576 image tokens) and a
  Llama-2-7B-sized language model (hidden 4096, 32 layers, 32 heads, intermediate 11008) with the
  32064-token vocabulary; 7.06 B parameters. The tokenizer is the small trained one of
  ``tests/tiny_models.py``; ``lm_head`` rows outside it are zeroed (and the kept ones scaled up)
  so greedy decoding always writes decodable text of the full requested length.
* BLIP-large (ViT-L/16 at 384 px + a BERT-base decoder, 446 M), SD-Turbo size (the SD 2.1 UNet,
  866 M; the SD VAE, 84 M; the OpenCLIP ViT-H text encoder, 340 M; Euler "trailing" scheduler),
  CLIP ViT-B/32 (151 M) and VITS at mms-tts-eng size (36 M).

``tiny`` builds the same kinds of checkpoint at test-suite sizes, reusing the builders of
``tests/tiny_models.py`` and ``tests/tool_models.py``, for the CPU dry run.

Why a saved checkpoint at all, when building in memory is faster: the check must exercise the
product's own load paths -- ``ChatLlava`` and ``finetune.train`` load a folder with
``from_pretrained`` and a ``BitsAndBytesConfig`` (NF4 or int8, skip list, device map) -- and the
load time it reports is only meaningful when real weights are read. So the 7B model is built
once directly on the GPU in fp16 (no slow CPU init of 7 B parameters; a few seconds there),
saved once as safetensors (13.5 GB, like the real llava-1.5-7b-hf; every later load reads it
back from memory), and the weights
are dropped from the GPU (the work folder is RAM-backed /dev/shm when it has room, see
``gpu_check.default_work_parent``). Quantizing an in-memory model with ``replace_with_bnb_linear`` would
skip exactly the code users run. The script records the build and save seconds so the first GPU
run shows what this costs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LLAVA_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096),
        "vision": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8, projection_dim=64),
    },
    "full": {  # llava-1.5-7b
        "text": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096),
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=336, patch_size=14, projection_dim=768),
    },
}  # fmt: skip


def image_tokens(size: str) -> int:
    vision = LLAVA_SIZES[size]["vision"]
    return (vision["image_size"] // vision["patch_size"]) ** 2


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def build_llava(folder: Path, size: str, device: str, timings: dict[str, float] | None = None) -> Path:
    """A llava-1.5-style checkpoint (Llama + CLIP vision tower) with random weights, saved to ``folder``.

    ``timings`` receives the seconds spent initialising the weights and saving them.
    """
    timings = {} if timings is None else timings
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from tests.tiny_models import build_tiny_llava

    tiny = build_tiny_llava(folder.parent / f"{folder.name}-tokenizer", "llama")  # its tokenizer and template
    tiny_processor = LlavaProcessor.from_pretrained(tiny)
    tokenizer = tiny_processor.tokenizer
    spec = LLAVA_SIZES[size]
    text = LlamaConfig(
        **spec["text"], pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False,
    )
    vision = spec["vision"]
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision), text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=image_tokens(size),
        vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    dtype = torch.float16 if size == "full" else torch.float32  # llava-1.5-7b-hf ships fp16 weights
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.device(device):  # initialised where it will run: seconds on a GPU, not minutes on a CPU
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype).eval()
    with torch.no_grad():
        weight = model.lm_head.weight
        keep = [
            i for i in range(len(tokenizer))
            if i not in tokenizer.all_special_ids and (s := tokenizer.decode([i])).isascii() and s.strip()
        ]  # fmt: skip
        mask = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
        mask[keep] = True
        weight[~mask] = 0
        weight[mask] *= 50
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if device == "cuda":
        torch.cuda.synchronize()
    timings["llava_init"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    model.save_pretrained(folder, safe_serialization=True)
    timings["llava_save"] = round(time.perf_counter() - started, 2)
    del model, weight
    if device == "cuda":
        torch.cuda.empty_cache()
    pixels = vision["image_size"]
    LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": pixels}, crop_size={"height": pixels, "width": pixels}, do_center_crop=True
        ),
        tokenizer=tokenizer,
        patch_size=vision["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tiny_processor.chat_template,
    ).save_pretrained(folder)
    return folder


def build_blip_large(folder: Path, device: str) -> Path:
    """BLIP at blip-image-captioning-large size (fp16), with the tiny builder's tokenizer."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    from tests.tool_models import build_blip

    tokenizer = BlipProcessor.from_pretrained(build_blip(folder.parent / f"{folder.name}-tokenizer")).tokenizer
    vocab = tokenizer.get_vocab()
    config = BlipConfig(
        text_config=dict(
            vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            encoder_hidden_size=1024, max_position_embeddings=512, bos_token_id=vocab["[DEC]"],
            pad_token_id=vocab["[PAD]"], sep_token_id=vocab["[SEP]"], eos_token_id=vocab["[SEP]"],
        ),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=384, patch_size=16),
        projection_dim=512,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = BlipForConditionalGeneration._from_config(config, dtype=torch.float16).eval()
    with torch.no_grad():  # greedy captions run to full length in real words, as a trained model's do
        head = model.text_decoder.cls.predictions
        keep = torch.zeros_like(head.bias, dtype=torch.bool)
        keep[[i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids]] = True
        head.bias[~keep] = -1e4
    for name in ("bos_token_id", "decoder_start_token_id"):
        setattr(model.generation_config, name, vocab["[DEC]"])
    model.generation_config.pad_token_id = vocab["[PAD]"]
    model.generation_config.eos_token_id = vocab["[SEP]"]
    model.save_pretrained(folder, safe_serialization=True)
    BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 384, "width": 384}), tokenizer=tokenizer
    ).save_pretrained(folder)
    return folder


def build_sd_turbo(folder: Path, device: str) -> Path:
    """A Stable Diffusion pipeline at sd-turbo size (SD 2.1 UNet, SD VAE, OpenCLIP-H text encoder), fp16."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.tool_models import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    torch.manual_seed(0)
    with torch.device(device):  # built in fp32 where it runs, then halved (diffusers has no dtype= on init)
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
        ).half()
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
            layers_per_block=2, latent_channels=4, sample_size=512, scaling_factor=0.18215,
        ).half()
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
            num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )).half().eval()
    scheduler = EulerDiscreteScheduler(  # sd-turbo's
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing",
        steps_offset=1, prediction_type="epsilon",
    )  # fmt: skip
    StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder, safe_serialization=True)
    return folder


class Assets:
    """Checkpoints built on first use and shared by the steps.

    A build that fails raises the same error to every step that needs it (without building again),
    so one broken builder fails only those steps.
    """

    def __init__(self, workdir: Path, size: str, device: str) -> None:
        self.workdir = workdir
        self.size = size
        self.device = device
        self.seconds: dict[str, float] = {}
        self.parameters: dict[str, int] = {}
        self._built: dict[str, Any] = {}

    def _once(self, name: str, build) -> Any:
        if name not in self._built:
            started = time.perf_counter()
            try:
                self._built[name] = build()
            except Exception as exc:  # remembered: the next step asking gets the same error at once
                self._built[name] = exc
            self.seconds[name] = round(time.perf_counter() - started, 2)
        value = self._built[name]
        if isinstance(value, Exception):
            raise RuntimeError(f"building the {name} checkpoint failed: {type(value).__name__}: {value}") from value
        return value

    def llava(self) -> Path:
        """The LLaVA checkpoint folder (llava-1.5-7b size, or tiny)."""
        return self._once("llava", lambda: build_llava(
            self.workdir / f"llava-{self.size}", self.size, self.device, self.seconds
        ))

    def tool_models(self) -> dict[str, Path]:
        """Folders keyed caption, image, clip, vits."""
        return self._once("tools", self._build_tools)

    def _build_tools(self) -> dict[str, Path]:
        from tests.tool_models import build_blip, build_clip, build_stable_diffusion, build_vits

        root = self.workdir / "tool-models"
        if self.size == "tiny":
            return {
                "caption": build_blip(root / "blip-tiny"),
                "image": build_stable_diffusion(root / "sd-tiny"),
                "clip": build_clip(root / "clip-tiny"),
                "vits": build_vits(root / "vits-tiny"),
            }
        return {
            "caption": build_blip_large(root / "blip-large", self.device),
            "image": build_sd_turbo(root / "sd-turbo", self.device),
            "clip": build_clip(root / "clip-vit-b-32", size="base"),  # 151 M: quick enough on the CPU
            "vits": build_vits(root / "mms-tts-eng", size="mms"),  # fp32, like facebook/mms-tts-eng
        }
