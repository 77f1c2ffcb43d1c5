"""What a clip costs: the CPU time estimate behind generate_video's refusal, and the CUDA memory plan.

**CPU estimate.** The denoising transformer dominates: ``steps`` forward passes (a batch of two
with classifier-free guidance) over ``latent frames x (height/16) x (width/16)`` video tokens
plus 226 text tokens. Its arithmetic is counted from CogVideoX-2b's architecture (30 layers,
1920 wide) and divided by the throughput measured on a CPU; the T5 text encoder and the VAE
decoder add their measured times. The constants below come from
``python bench/bench_video.py --device cpu`` (random weights at CogVideoX-2b's sizes, float32, 2
CPU cores): the default clip (49 frames at 720x480, 50 steps) comes out at about 22 hours. Other
CPUs differ, and attention over 17,000 tokens may run at another rate than over the 658 measured,
so the figure is an order of magnitude, not a promise.

**CUDA memory plan.** With ``tools.video_offload = "auto"`` the pipeline is placed by what the
GPU has free when it loads (``torch.cuda.mem_get_info``) against the pipeline's measured weight
bytes: everything on the GPU when weights plus working memory fit, else one component at a time
(model CPU offload), else layer by layer (sequential offload, slowest). VAE tiling and slicing
are always on with CUDA: they bound the decoder's memory at large sizes and change nothing
below the VAE's tile size (240x360 for CogVideoX).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1024**3

# -- CogVideoX-2b's architecture ----------------------------------------------------------------
WIDTH, LAYERS, TEXT_TOKENS = 1920, 30, 226
SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION, PATCH = 8, 4, 2


@dataclass(frozen=True)
class CpuThroughput:
    """Measured on a CPU with random weights at CogVideoX-2b's sizes (``bench/bench_video.py``)."""

    transformer_flops_per_s: float
    """Effective float32 throughput of the denoising transformer (counted FLOPs / measured seconds)."""
    vae_s_per_megapixel_frame: float
    """VAE decoding seconds per million output pixels per frame."""
    text_encoder_s_per_prompt: float
    """T5-XXL encoder seconds for one 226-token prompt."""
    cores: int
    """CPU cores the figures were measured on."""


REFERENCE_CPU = CpuThroughput(
    # python bench/bench_video.py --device cpu --frames 9 --height 192 --width 192 --steps 2 (2 threads):
    # 24.4 s per guided step over 432 video tokens, 22.3 s to decode 9 frames, 17.1 s per prompt
    transformer_flops_per_s=1.51e11,
    vae_s_per_megapixel_frame=67.0,
    text_encoder_s_per_prompt=17.1,
    cores=2,
)


def video_tokens(frames: int, height: int, width: int) -> int:
    """Tokens the transformer sees for a clip: latent frames x (height/16) x (width/16)."""
    latent_frames = (frames - 1) // TEMPORAL_COMPRESSION + 1
    side = SPATIAL_COMPRESSION * PATCH
    return latent_frames * (height // side) * (width // side)


def transformer_flops(tokens: int, width: int = WIDTH, layers: int = LAYERS) -> float:
    """Multiply-adds x 2 of one forward pass over ``tokens`` (+ the text): projections, MLP and attention."""
    sequence = tokens + TEXT_TOKENS
    return layers * (24.0 * sequence * width**2 + 4.0 * sequence**2 * width)


def estimate_cpu_seconds(
    frames: int, height: int, width: int, steps: int, guidance: float, cpu: CpuThroughput = REFERENCE_CPU
) -> float:
    """Seconds a CogVideoX-2b-sized model needs on a CPU like the measured one for this clip."""
    batch = 2 if guidance > 1.0 else 1
    denoise = steps * batch * transformer_flops(video_tokens(frames, height, width)) / cpu.transformer_flops_per_s
    decode = cpu.vae_s_per_megapixel_frame * frames * height * width / 1e6
    return denoise + decode + batch * cpu.text_encoder_s_per_prompt


def describe_duration(seconds: float) -> str:
    """``about 40 s``, ``about 12 minutes``, ``about 3.5 hours``, ``about 2.1 days``."""
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 90 * 60:
        return f"about {seconds / 60:.0f} minutes"
    if seconds < 48 * 3600:
        return f"about {seconds / 3600:.1f} hours"
    return f"about {seconds / 86400:.1f} days"


# -- CUDA ---------------------------------------------------------------------------------------
WORKING_MEMORY_BYTES = 6 * GIB
"""GPU memory kept free for activations besides the weights (49 frames at 720x480, VAE tiled).

Measured at CogVideoX-2b's sizes in fp16 on an NVIDIA H200 (``python bench/gpu_check.py --steps 6``):
peak 16.4 GiB allocated over 12.4 GiB of weights, so 3.9 GiB of working memory; the margin
keeps about 2 GiB more for the allocator's fragmentation and other models' leftovers.
"""
OFFLOAD_CHOICES = ("auto", "none", "model", "sequential")


def choose_offload(setting: str, free_bytes: int, weight_bytes: int, largest_component_bytes: int) -> str:
    """The CUDA placement: ``none`` (all on the GPU), ``model`` or ``sequential`` CPU offload."""
    if setting not in OFFLOAD_CHOICES:
        raise ValueError(f"offload {setting!r} is not one of {', '.join(OFFLOAD_CHOICES)}")
    if setting != "auto":
        return setting
    if free_bytes >= weight_bytes + WORKING_MEMORY_BYTES:
        return "none"
    if free_bytes >= largest_component_bytes + WORKING_MEMORY_BYTES:
        return "model"
    return "sequential"


def apply_memory_plan(pipeline: Any, device: str, plan: str) -> list[str]:
    """Place ``pipeline`` on ``device`` with the memory savers of ``plan``; returns the savers applied."""
    savers: list[str] = []
    if plan == "model":
        pipeline.enable_model_cpu_offload(device=device)
        savers.append("model CPU offload")
    elif plan == "sequential":
        pipeline.enable_sequential_cpu_offload(device=device)
        savers.append("sequential CPU offload")
    else:
        pipeline.to(device)
    vae = getattr(pipeline, "vae", None)
    if device.startswith("cuda") and vae is not None:
        for method, name in (("enable_tiling", "VAE tiling"), ("enable_slicing", "VAE slicing")):
            if callable(getattr(vae, method, None)):
                getattr(vae, method)()
                savers.append(name)
    return savers
