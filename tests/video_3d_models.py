"""Random checkpoints for the video and 3-D tools: CogVideoX (text-to-video) and Shap-E (text and image to 3-D).

Each builder saves a diffusers pipeline with ``save_pretrained``, so tests load it through the
same ``from_pretrained`` path users take with ``THUDM/CogVideoX-2b``, ``openai/shap-e`` and
``openai/shap-e-img2img``. Tokenizers are built offline from a small vocabulary (a T5 Unigram
and a CLIP BPE). ``size="tiny"`` is for tests (seconds on a CPU); ``size="real"`` has the
real architectures' dimensions with random weights, for the benchmarks.

In every size the transformer's text width equals the text encoder's width, and video sizes
are multiples of 16 (the VAE's 8x spatial compression times the 2x2 patches).

    python tests/video_3d_models.py ./tiny-video-3d-models
"""

from __future__ import annotations

import argparse
import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

_WORDS = (
    "a an the of in on and with paper boat drifting pond cat dog red blue green mug cup chair car "
    "tree house small large wooden metal glass walking running flying video photo model object"
).split()


def build_t5_tokenizer(max_length: int = 226) -> Any:
    """A T5 Unigram tokenizer over a few whole words and every lowercase letter, digit and punctuation mark."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(f"\u2581{word}", -5.0) for word in _WORDS]
    characters = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    pieces += [(character, -8.0) for character in characters]
    pieces += [(f"\u2581{character}", -9.0) for character in characters]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)
    return tokenizer


def build_cogvideox(output_dir: str | Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """A CogVideoX text-to-video pipeline; ``size="real"`` is CogVideoX-2b sized (T5 encoder: ``t5_layers``)."""
    return _build_cogvideox(Path(output_dir), size=size, seed=seed)


def _build_cogvideox(output_dir: Path, *, size: str, seed: int, t5_layers: int | None = None) -> Path:
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_t5_tokenizer()
    torch.manual_seed(seed)
    if size == "tiny":
        text_width = 32
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), d_model=text_width, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        ))
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
            text_embed_dim=text_width, num_layers=2, sample_width=4, sample_height=4, sample_frames=9,
            patch_size=2, temporal_compression_ratio=4, max_text_seq_length=226,
        )
        vae = AutoencoderKLCogVideoX(
            block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
            temporal_compression_ratio=4,  # the real sample size, so VAE tiles are 240x360 as in CogVideoX-2b
        )
    elif size == "real":
        # THUDM/CogVideoX-2b: T5-v1.1-XXL encoder (4096 wide, 24 layers), the 30-layer 1920-wide
        # transformer and the 16-channel VAE are the library defaults.
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), d_model=4096, d_kv=64, d_ff=10240, num_layers=t5_layers or 24, num_heads=64,
            feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        ))
        transformer = CogVideoXTransformer3DModel()
        vae = AutoencoderKLCogVideoX()
    else:
        raise ValueError(f"size {size!r} is not 'tiny' or 'real'")
    scheduler = CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True, snr_shift_scale=3.0,
        timestep_spacing="trailing", steps_offset=0,
    )
    pipeline = CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(), transformer=transformer.eval(),
        scheduler=scheduler,
    )
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    return output_dir


def _shap_e_parts(size: str, condition_width: int, image: bool) -> tuple[Any, Any, Any]:
    """The prior, the renderer and the scheduler of a Shap-E pipeline."""
    from diffusers import HeunDiscreteScheduler, PriorTransformer
    from diffusers.pipelines.shap_e import ShapERenderer

    if size == "tiny":
        hidden, latent_width = 16, 32
        renderer = ShapERenderer(
            param_shapes=((hidden, 93), (hidden, hidden), (hidden, hidden), (hidden, hidden)),
            d_latent=latent_width, d_hidden=hidden, n_output=12, background=(255.0, 255.0, 255.0),
        )
        prior = PriorTransformer(
            num_attention_heads=2, attention_head_dim=16, num_layers=2, embedding_dim=latent_width,
            num_embeddings=4 * hidden, additional_embeddings=0, time_embed_act_fn="gelu", norm_in_type="layer",
            embedding_proj_norm_type="layer" if image else None, encoder_hid_proj_type=None, added_emb_type=None,
            time_embed_dim=4 * latent_width, embedding_proj_dim=condition_width, clip_embed_dim=2 * latent_width,
        )
    elif size == "real":  # openai/shap-e and openai/shap-e-img2img
        renderer = ShapERenderer()  # the defaults are the real renderer (1024 latents of width 1024)
        prior = PriorTransformer(
            num_attention_heads=8 if image else 16, attention_head_dim=128 if image else 64, num_layers=24,
            embedding_dim=1024, num_embeddings=1024, additional_embeddings=0, time_embed_act_fn="gelu",
            norm_in_type="layer", embedding_proj_norm_type="layer" if image else None, encoder_hid_proj_type=None,
            added_emb_type=None, time_embed_dim=4096, embedding_proj_dim=condition_width, clip_embed_dim=2048,
        )
    else:
        raise ValueError(f"size {size!r} is not 'tiny' or 'real'")
    scheduler = HeunDiscreteScheduler(
        beta_schedule="exp", num_train_timesteps=1024, prediction_type="sample", use_karras_sigmas=True,
        clip_sample=True, clip_sample_range=1.0,
    )
    return prior.eval(), renderer.eval(), scheduler


def build_shap_e(output_dir: str | Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """A Shap-E text-to-3D pipeline (CLIP text encoder with projection, prior, renderer)."""
    import torch
    from diffusers import ShapEPipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from tests.tool_models import build_clip_tokenizer

    output_dir = Path(output_dir)
    tokenizer = build_clip_tokenizer()
    torch.manual_seed(seed)
    if size == "tiny":
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
        )
    else:  # CLIP ViT-L/14's text tower
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
        )
    text_config.bos_token_id, text_config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    text_config.pad_token_id = tokenizer.pad_token_id
    text_encoder = CLIPTextModelWithProjection(text_config).eval()
    prior, renderer, scheduler = _shap_e_parts(size, text_config.projection_dim, image=False)
    pipeline = ShapEPipeline(
        prior=prior, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, shap_e_renderer=renderer
    )
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    return output_dir


def build_shap_e_img2img(output_dir: str | Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """A Shap-E image-to-3D pipeline (CLIP vision encoder, prior, renderer)."""
    import torch
    from diffusers import ShapEImg2ImgPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    output_dir = Path(output_dir)
    torch.manual_seed(seed)
    if size == "tiny":
        vision_config = CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8,
        )
    else:  # CLIP ViT-L/14 at 224 pixels
        vision_config = CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            image_size=224, patch_size=14,
        )
    image_encoder = CLIPVisionModel(vision_config).eval()
    side = vision_config.image_size
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}, resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    prior, renderer, scheduler = _shap_e_parts(size, vision_config.hidden_size, image=True)
    pipeline = ShapEImg2ImgPipeline(
        prior=prior, image_encoder=image_encoder, image_processor=image_processor, scheduler=scheduler,
        shap_e_renderer=renderer,
    )
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    return output_dir


def build_all(output_dir: str | Path) -> dict[str, Path]:
    output_dir = Path(output_dir)
    return {
        "cogvideox": build_cogvideox(output_dir / "cogvideox-tiny"),
        "shap_e": build_shap_e(output_dir / "shap-e-tiny"),
        "shap_e_img2img": build_shap_e_img2img(output_dir / "shap-e-img2img-tiny"),
    }


@functools.lru_cache(maxsize=1)
def session_video_3d_models() -> dict[str, Path]:
    """The tiny checkpoints, built once per process into a temporary folder removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="llava-agent-video-3d-models-"))
    atexit.register(shutil.rmtree, folder, True)
    return build_all(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write tiny random CogVideoX and Shap-E checkpoints.")
    parser.add_argument("output_dir", type=Path)
    args = parser.parse_args()
    for name, path in build_all(args.output_dir).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
