"""generate_video's cost at CogVideoX-2b's real sizes, with random weights: seconds and peak memory.

CPU (float32, what the tool runs on a CPU): the three parts are timed one after another, each
freed before the next, with the process's resident memory sampled every 20 ms. Each is timed in
wall seconds and in the process's CPU seconds; on a CPU shared with other jobs, CPU seconds
divided by torch's threads stands for the wall time of an idle machine, and the clip figures
and constants use it:

* the T5-v1.1-XXL text encoder (4096 wide) on one 226-token prompt, built with ``--t5-layers``
  of its 24 layers (the full encoder is 19 GB in float32) and scaled to 24 layers;
* the 1.7B-parameter denoising transformer, ``--steps`` forward passes with classifier-free
  guidance (a batch of 2) for a ``--frames`` x ``--height`` x ``--width`` clip;
* the VAE decoding that clip.

It prints each part, the clip's seconds composed from them for ``--clip-steps`` steps, and the
throughput constants ``tools/video_cost.py`` uses for its refusal estimate::

    python bench/bench_video.py --device cpu --frames 9 --height 256 --width 256 --steps 2

CUDA (float16, the whole pipeline placed by the tool's own memory plan, one run per plan; peak
GPU memory allocated and reserved, and seconds per clip)::

    python bench/bench_video.py --device cuda --frames 49 --height 480 --width 720 --steps 10 --plans none model

``--mode pipeline --size tiny --device cpu --plans none`` runs that path on a tiny model anywhere.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tools.video_cost import TEXT_TOKENS, transformer_flops, video_tokens  # noqa: E402

GIB = 1024**3


class PeakMemory:
    """Samples this process's resident memory (VmRSS) every 20 ms inside a ``with`` block."""

    def __enter__(self) -> PeakMemory:
        self.peak = self.start = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


class Timer:
    """Wall seconds and this process's CPU seconds of a block (CPU seconds / threads estimates an idle machine's wall time)."""

    def __enter__(self) -> Timer:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = time.process_time() - self._cpu


def latent_shape(frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    return ((frames - 1) // 4 + 1, 16, height // 8, width // 8)


def bench_cpu(args: argparse.Namespace) -> list[dict]:
    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    rows = []
    with torch.inference_mode():
        with PeakMemory() as memory:
            built = time.perf_counter()
            encoder = T5EncoderModel(T5Config(
                vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=args.t5_layers, num_heads=64,
                feed_forward_proj="gated-gelu",
            )).eval()
            built = time.perf_counter() - built
            ids = torch.randint(0, 32128, (1, TEXT_TOKENS))
            encoder(input_ids=ids)  # warm-up
            with Timer() as timer:
                encoder(input_ids=ids)
            scale = 24 / args.t5_layers
        t5_s = timer.cpu_s * scale / threads
        rows.append({"part": "t5-xxl text encoder", "layers_built": args.t5_layers,
                     "wall_s_24_layers": round(timer.wall_s * scale, 2), "cpu_s_24_layers": round(timer.cpu_s * scale, 2),
                     "build_s": round(built, 1), "peak_rss_gib": round(memory.peak / GIB, 2)})
        del encoder
        gc.collect()

        frames, channels, lh, lw = latent_shape(args.frames, args.height, args.width)
        tokens = video_tokens(args.frames, args.height, args.width)
        with PeakMemory() as memory:
            built = time.perf_counter()
            transformer = CogVideoXTransformer3DModel().eval()
            built = time.perf_counter() - built
            latents = torch.randn(2, frames, channels, lh, lw)
            text = torch.randn(2, TEXT_TOKENS, 4096)
            timers = []
            for step in range(args.steps):
                with Timer() as timer:
                    transformer(hidden_states=latents, encoder_hidden_states=text,
                                timestep=torch.tensor([999 - step] * 2), return_dict=False)
                timers.append(timer)
        best = min(timers, key=lambda t: t.cpu_s)
        step_s = best.cpu_s / threads
        flops = 2 * transformer_flops(tokens)
        rows.append({"part": "transformer (CFG batch 2)", "video_tokens": tokens,
                     "wall_s_per_step": [round(t.wall_s, 2) for t in timers],
                     "cpu_s_per_step": [round(t.cpu_s, 2) for t in timers], "flops_per_step": flops,
                     "flops_per_cpu_s_per_thread": round(flops / step_s), "build_s": round(built, 1),
                     "peak_rss_gib": round(memory.peak / GIB, 2)})
        del transformer, latents, text
        gc.collect()

        with PeakMemory() as memory:
            vae = AutoencoderKLCogVideoX().eval()
            latents = torch.randn(1, channels, frames, lh, lw)
            with Timer() as timer:
                decoded = vae.decode(latents).sample
        decode_s = timer.cpu_s / threads
        out_frames = decoded.shape[2]
        megapixel_frames = out_frames * args.height * args.width / 1e6
        rows.append({"part": "vae decode", "frames_out": out_frames, "wall_s": round(timer.wall_s, 2),
                     "cpu_s": round(timer.cpu_s, 2), "peak_rss_gib": round(memory.peak / GIB, 2)})
        del vae, decoded
        gc.collect()

    clip_s = 2 * t5_s + args.clip_steps * step_s + decode_s
    rows.append({
        "part": "clip (composed, CPU seconds / threads)", "frames": args.frames, "size": f"{args.width}x{args.height}",
        "steps": args.clip_steps, "s_per_clip": round(clip_s, 1), "threads": threads,
        "reference_cpu": {"transformer_flops_per_s": float(f"{flops / step_s:.3g}"),
                          "vae_s_per_megapixel_frame": round(decode_s / megapixel_frames, 2),
                          "text_encoder_s_per_prompt": round(t5_s, 1)},
    })
    return rows


def build_pipeline_parts(device: str, size: str) -> dict:
    """The text encoder, transformer and VAE (float16 on CUDA, float32 elsewhere), left on the CPU."""
    import tempfile

    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from tests.video_3d_models import build_cogvideox

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    if size == "tiny":  # a smoke run of this code path on any machine
        folder = build_cogvideox(Path(tempfile.mkdtemp(prefix="bench-video-")) / "tiny")
        loaded = CogVideoXPipeline.from_pretrained(folder)
        parts = {name: getattr(loaded, name) for name in ("text_encoder", "transformer", "vae")}
    else:
        with torch.device(device):  # random init on the GPU is fast; each plan then places the weights
            parts = {
                "text_encoder": T5EncoderModel(T5Config(
                    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                    feed_forward_proj="gated-gelu",
                )),
                "transformer": CogVideoXTransformer3DModel(),
                "vae": AutoencoderKLCogVideoX(),
            }
    return {name: module.to(dtype).eval().to("cpu") for name, module in parts.items()}


def part_bytes(parts: dict) -> dict[str, int]:
    """Weight bytes of each part."""
    return {name: sum(t.numel() * t.element_size() for t in module.parameters()) for name, module in parts.items()}


def run_plan(parts: dict, device: str, plan: str, *, frames: int, height: int, width: int, steps: int,
             last: bool = True) -> dict:
    """One clip with the pipeline placed by ``plan``: seconds (split into before, per step, after) and peak memory.

    The denoising steps are timed by the pipeline's step callback: ``before_s`` is the text encoder
    and set-up, ``after_s`` the VAE decoding, so a clip of any step count is ``before + n x step + after``.
    Unless ``last``, the parts are moved back to the CPU afterwards for the next plan.
    """
    import torch
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

    from tests.video_3d_models import build_t5_tokenizer
    from tools.video_cost import apply_memory_plan

    cuda = device.startswith("cuda")
    pipeline = CogVideoXPipeline(tokenizer=build_t5_tokenizer(), scheduler=CogVideoXDDIMScheduler(), **parts)
    pipeline.set_progress_bar_config(disable=True)
    savers = apply_memory_plan(pipeline, device, plan)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    marks: list[float] = []

    def on_step_end(_pipeline, _step, _timestep, state):
        if cuda:
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        return state

    with PeakMemory() as memory, Timer() as timer:
        started = time.perf_counter()
        result = pipeline(prompt="a paper boat drifting on a pond", negative_prompt="", num_frames=frames,
                          height=height, width=width, num_inference_steps=steps, guidance_scale=6.0,
                          generator=torch.Generator("cpu").manual_seed(0), output_type="np",
                          callback_on_step_end=on_step_end)  # fmt: skip
        if cuda:
            torch.cuda.synchronize()
        ended = time.perf_counter()
    step_s = sorted(b - a for a, b in zip(marks, marks[1:], strict=False))
    per_step = step_s[len(step_s) // 2] if step_s else (marks[0] - started if marks else 0.0)
    row = {"plan": plan, "savers": savers, "device": device, "frames": int(result.frames.shape[1]),
           "video": f"{width}x{height}", "steps": steps, "s_per_clip": round(timer.wall_s, 1),
           "before_s": round(marks[0] - started - per_step, 2) if marks else None,
           "step_s": round(per_step, 3), "after_s": round(ended - marks[-1], 2) if marks else None,
           "peak_rss_gib": round(memory.peak / GIB, 2)}  # fmt: skip
    if cuda:
        row.update(peak_allocated_gib=round(torch.cuda.max_memory_allocated() / GIB, 2),
                   peak_reserved_gib=round(torch.cuda.max_memory_reserved() / GIB, 2),
                   gpu=torch.cuda.get_device_name())
    if not last:
        pipeline.remove_all_hooks()
        pipeline.to("cpu")
    del pipeline, result
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def bench_pipeline(args: argparse.Namespace) -> list[dict]:
    """The whole pipeline, placed by the tool's own memory plan, once per plan (run ``sequential`` last)."""
    parts = build_pipeline_parts(args.device, args.size)
    rows = []
    for plan in args.plans:
        row = run_plan(parts, args.device, plan, frames=args.frames, height=args.height, width=args.width,
                       steps=args.steps, last=plan == args.plans[-1])  # fmt: skip
        row["size"] = args.size
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--mode", choices=["parts", "pipeline"],
                        help="parts: each component timed alone (CPU default); pipeline: whole clips per plan (CUDA default)")
    parser.add_argument("--size", choices=["real", "tiny"], default="real", help="pipeline mode: tiny = smoke run")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="transformer steps timed (CPU) or run (CUDA)")
    parser.add_argument("--clip-steps", type=int, default=50, help="CPU: steps of the composed clip")
    parser.add_argument("--t5-layers", type=int, default=4, help="CPU: T5-XXL layers built (scaled to 24)")
    parser.add_argument("--plans", nargs="+", default=["none", "model"], choices=["none", "model", "sequential"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    mode = args.mode or ("parts" if args.device == "cpu" else "pipeline")
    rows = bench_cpu(args) if mode == "parts" else bench_pipeline(args)  # the pipeline prints each row as it ends
    for row in rows if mode == "parts" else ():
        print(json.dumps(row))
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
