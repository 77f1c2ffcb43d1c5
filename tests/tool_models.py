"""Tiny, randomly initialised checkpoints for the tools: BLIP, CLIP, Stable Diffusion, VITS and Bark.

Each builder saves with ``save_pretrained`` so tests load the result through the same
``from_pretrained`` path users take with real checkpoints. Tokenizers are built on the spot
(no download). ``build_clip(..., size="base")`` writes a CLIP at the real ViT-B/32 size with
random weights for the benchmarks.

Run as a script to write all of them to a folder::

    python tests/tool_models.py ./tiny-tool-models
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

_WORDS = (
    "a photo of the cat dog red green blue yellow square circle car tree house sky sea "
    "picture image drawing painting small large dark bright sunset beach mountain"
).split()


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for raw bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def clip_tokenizer_files() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A small CLIP BPE vocabulary and merge list: every byte, plus whole-word merges for a few words."""
    alphabet = _byte_level_alphabet()
    vocab_tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            merged = pieces[0] + pieces[1]
            if merged not in vocab_tokens:
                vocab_tokens.append(merged)
            pieces = [merged] + pieces[2:]
    unique_merges = list(dict.fromkeys(merges))
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_tokens))}
    return vocab, unique_merges


def build_clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = clip_tokenizer_files()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_clip(
    output_dir: str | Path, *, size: str = "tiny", seed: int = 0, initializer_range: float = 0.02, patch_size: int = 8
) -> Path:
    """A CLIP model + processor; ``size="tiny"`` for tests, ``"base"`` for ViT-B/32 dimensions.

    ``initializer_range`` (transformers' default 0.02) sets the spread of the random weights; tiny
    models learn under LoRA only with a wider one (about 0.2).
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    output_dir = Path(output_dir)
    tokenizer = build_clip_tokenizer()
    if size == "tiny":
        config = CLIPConfig(
            text_config=dict(
                vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, initializer_range=initializer_range,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            ),
            vision_config=dict(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=32, patch_size=patch_size, initializer_range=initializer_range,
            ),
            projection_dim=32,
        )
        image_size = 32
    elif size == "base":
        config = CLIPConfig(  # the defaults are ViT-B/32
            text_config=dict(
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            ),
            projection_dim=512,
        )
        image_size = 224
    else:
        raise ValueError(f"size {size!r} is not 'tiny' or 'base'")
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(output_dir, safe_serialization=True)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(output_dir)
    return output_dir


def build_blip(output_dir: str | Path, *, seed: int = 0, initializer_range: float = 0.02, patch_size: int = 8) -> Path:
    """A tiny BLIP captioning model with a WordPiece tokenizer (``initializer_range`` as for :func:`build_clip`)."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    output_dir = Path(output_dir)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = specials + _WORDS + letters + ["##" + c for c in letters] + [".", ","]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=64)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=64, encoder_hidden_size=32,
            bos_token_id=vocab["[DEC]"], pad_token_id=vocab["[PAD]"], sep_token_id=vocab["[SEP]"],
            eos_token_id=vocab["[SEP]"], initializer_range=initializer_range,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=patch_size, initializer_range=initializer_range,
        ),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    model.generation_config.bos_token_id = vocab["[DEC]"]
    model.generation_config.decoder_start_token_id = vocab["[DEC]"]
    model.generation_config.pad_token_id = vocab["[PAD]"]
    model.generation_config.eos_token_id = vocab["[SEP]"]
    model.save_pretrained(output_dir, safe_serialization=True)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(output_dir)
    return output_dir


def build_stable_diffusion(output_dir: str | Path, *, seed: int = 0, flagging_safety_checker: bool = False) -> Path:
    """A tiny Stable Diffusion pipeline (UNet, VAE, CLIP text encoder, tokenizer, Euler scheduler).

    ``flagging_safety_checker=True`` adds a real ``StableDiffusionSafetyChecker`` whose concept
    thresholds are set below any cosine similarity, so it flags every image (like SD 1.x ships
    one, with its real thresholds).
    """
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    output_dir = Path(output_dir)
    tokenizer = build_clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing", steps_offset=1
    )
    safety_checker = feature_extractor = None
    if flagging_safety_checker:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPConfig, CLIPImageProcessor

        safety_checker = StableDiffusionSafetyChecker(CLIPConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=32, patch_size=8),
            projection_dim=32,
        )).eval()
        with torch.no_grad():
            safety_checker.concept_embeds_weights.fill_(-2.0)  # cosine similarity is always above -2
        feature_extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=safety_checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=flagging_safety_checker,
    )
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    return output_dir


def build_vits(output_dir: str | Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """A VITS text-to-speech model with a character vocabulary; ``size="mms"`` is mms-tts-eng sized."""
    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    characters = ["<pad>", "<unk>"] + list("abcdefghijklmnopqrstuvwxyz '-.,?!") + ["0123456789"[i] for i in range(10)]
    vocab = {char: index for index, char in enumerate(dict.fromkeys(characters))}
    vocab_path = output_dir / "vocab.json"
    vocab_path.write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = VitsTokenizer(vocab_file=str(vocab_path), add_blank=True, normalize=True, phonemize=False)
    if size == "tiny":
        config = VitsConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            ffn_dim=32,
            flow_size=16,
            spectrogram_bins=33,
            upsample_initial_channel=16,
            upsample_rates=[8, 8],
            upsample_kernel_sizes=[16, 16],
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3]],
            prior_encoder_num_flows=1,
            prior_encoder_num_wavenet_layers=1,
            duration_predictor_filter_channels=16,
            duration_predictor_num_flows=1,
            depth_separable_num_layers=1,
            sampling_rate=16000,
        )
    elif size == "mms":
        config = VitsConfig(vocab_size=len(vocab), sampling_rate=16000)  # defaults are the MMS-TTS sizes
    else:
        raise ValueError(f"size {size!r} is not 'tiny' or 'mms'")
    torch.manual_seed(seed)
    model = VitsModel(config).eval()
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return output_dir


BARK_PRESETS = ("v2/en_speaker_0", "v2/en_speaker_1")


def build_bark(
    output_dir: str | Path, *, size: str = "tiny", seed: int = 0, semantic_max_new_tokens: int | None = None
) -> Path:
    """A Bark checkpoint: semantic, coarse and fine sub-models, an EnCodec codec, a BERT tokenizer and voice presets.

    The vocabularies and generation constants are Bark's own (so ``BarkModel.generate`` runs its
    real code paths); ``size="tiny"`` shrinks the widths and depths for tests and caps the
    semantic tokens per sentence at 24; ``size="small"`` has suno/bark-small's dimensions (and its
    768-token cap, about 15 s of audio) for benchmarks; ``size="large"`` suno/bark's.
    ``semantic_max_new_tokens`` replaces the cap.
    """
    import numpy as np
    import torch
    from transformers import (
        BarkCoarseConfig,
        BarkConfig,
        BarkFineConfig,
        BarkModel,
        BarkSemanticConfig,
        BertTokenizer,
        EncodecConfig,
        GenerationConfig,
    )
    from transformers.models.bark.generation_configuration_bark import (
        BarkCoarseGenerationConfig,
        BarkFineGenerationConfig,
        BarkSemanticGenerationConfig,
    )

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if size == "tiny":
        width = dict(hidden_size=32, num_layers=1, num_heads=2)
        codec = EncodecConfig(hidden_size=16, num_filters=4, num_residual_layers=1, codebook_size=1024,
                              codebook_dim=16, upsampling_ratios=[8, 5, 4, 2], target_bandwidths=[1.5, 3.0, 6.0],
                              num_lstm_layers=1, sampling_rate=24_000)
        semantic_tokens = semantic_max_new_tokens or 24
    elif size in ("small", "large"):
        width = dict(hidden_size=768, num_layers=12, num_heads=12) if size == "small" else dict(
            hidden_size=1024, num_layers=24, num_heads=16)
        codec = EncodecConfig(target_bandwidths=[1.5, 3.0, 6.0, 12.0, 24.0], sampling_rate=24_000)  # encodec_24khz
        semantic_tokens = semantic_max_new_tokens or 768
    else:
        raise ValueError(f"size {size!r} is not 'tiny', 'small' or 'large'")
    common = dict(block_size=1024, dropout=0.0, bias=False, **width)
    config = BarkConfig(
        semantic_config=BarkSemanticConfig(input_vocab_size=129_600, output_vocab_size=10_048, **common).to_dict(),
        coarse_acoustics_config=BarkCoarseConfig(input_vocab_size=12_096, output_vocab_size=12_096, **common).to_dict(),
        fine_acoustics_config=BarkFineConfig(input_vocab_size=1056, output_vocab_size=1056, n_codes_total=8,
                                             n_codes_given=1, **common).to_dict(),
        codec_config=codec.to_dict(),
    )
    torch.manual_seed(seed)
    model = BarkModel(config).eval()
    # the layout of suno/bark's generation_config.json: one plain config holding the three sub-configs
    model.generation_config = GenerationConfig(
        semantic_config=BarkSemanticGenerationConfig(max_new_tokens=semantic_tokens, do_sample=True,
                                                     temperature=0.7).to_diff_dict(),
        coarse_acoustics_config=BarkCoarseGenerationConfig(do_sample=True, temperature=0.7).to_diff_dict(),
        fine_acoustics_config=BarkFineGenerationConfig(temperature=0.5).to_diff_dict(),
        sample_rate=24_000, codebook_size=1024,
    )
    model.save_pretrained(output_dir, safe_serialization=True)

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = specials + _WORDS + letters + ["##" + c for c in letters] + list(".,!?'[]♪-")
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=512).save_pretrained(output_dir)
    # voice presets: the history prompts Bark's processor loads by name
    rng = np.random.default_rng(seed)
    presets: dict[str, dict[str, str]] = {"repo_or_path": str(output_dir)}
    (output_dir / "speaker_embeddings" / "v2").mkdir(parents=True, exist_ok=True)
    for name in BARK_PRESETS:
        arrays = {
            "semantic_prompt": rng.integers(0, 10_000, size=(40,)),
            "coarse_prompt": rng.integers(0, 1024, size=(2, 60)),
            "fine_prompt": rng.integers(0, 1024, size=(8, 60)),
        }
        presets[name] = {}
        for key, array in arrays.items():
            relative = f"speaker_embeddings/{name}_{key}.npy"
            np.save(output_dir / relative, array.astype(np.int64), allow_pickle=False)
            presets[name][key] = relative
    (output_dir / "speaker_embeddings_path.json").write_text(json.dumps(presets), encoding="utf-8")
    return output_dir


def build_all(output_dir: str | Path) -> dict[str, Path]:
    output_dir = Path(output_dir)
    return {
        "blip": build_blip(output_dir / "blip-tiny"),
        "clip": build_clip(output_dir / "clip-tiny"),
        "stable_diffusion": build_stable_diffusion(output_dir / "sd-tiny"),
        "vits": build_vits(output_dir / "vits-tiny"),
    }


@functools.lru_cache(maxsize=1)
def session_tool_models() -> dict[str, Path]:
    """The tiny checkpoints, built once per process into a temporary folder removed at exit.

    Shared by the pytest fixtures and the ``langchain_tests`` suites (whose constructor
    parameters are class properties and cannot take fixtures).
    """
    folder = Path(tempfile.mkdtemp(prefix="llava-agent-tool-models-"))
    atexit.register(shutil.rmtree, folder, True)
    return build_all(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write tiny random tool checkpoints for offline tries.")
    parser.add_argument("output_dir", type=Path)
    args = parser.parse_args()
    for name, path in build_all(args.output_dir).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
