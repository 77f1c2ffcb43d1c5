"""GPU check step 6: generate_video's CUDA memory plan at CogVideoX-2b's real sizes (random weights).

The pipeline (T5-v1.1-XXL text encoder, the 1.7B-parameter denoising transformer, the VAE, all
float16) makes one short clip per placement the tool can choose (``none``: everything on the GPU;
``model``: one component at a time on the GPU), with the tool's own ``apply_memory_plan``. For
each: seconds split into set-up + text encoder, seconds per denoising step and VAE decoding, the
composed default clip (50 steps), and peak GPU memory. The working memory measured on top of the
weights is checked against the margin ``tools.video_cost.choose_offload`` reserves, and the plan
``auto`` picks on this GPU is reported.
"""

from __future__ import annotations

from typing import Any

from bench.gpu_check_common import GIB, Context, release_models

DEFAULT_STEPS = 50  # generate_video's default
FULL = {"frames": 49, "height": 480, "width": 720, "steps": 4}  # the default clip's size, fewer steps
TINY = {"frames": 9, "height": 32, "width": 32, "steps": 3}


def step_video(ctx: Context, record: Any) -> None:
    import torch

    from bench.bench_video import build_pipeline_parts, part_bytes, run_plan
    from tools.video_cost import WORKING_MEMORY_BYTES, choose_offload

    release_models()
    clip = FULL if ctx.full else TINY
    parts = build_pipeline_parts(ctx.device, "real" if ctx.full else "tiny")
    sizes = part_bytes(parts)
    weights = sum(sizes.values())
    record.metric("weights_gib", weights / GIB, "GiB")
    for name, size in sizes.items():
        record.metric(f"{name}_gib", size / GIB, "GiB")
    cuda = ctx.device == "cuda"
    if cuda:
        free, total = torch.cuda.mem_get_info()
        auto = choose_offload("auto", free, weights, max(sizes.values()))
        record.metric("gpu_free_gib", free / GIB, "GiB")
        record.note(f"with {free / GIB:.1f} GiB free of {total / GIB:.1f}, video_offload = \"auto\" picks {auto!r}")
    plans = ["none", "model"] if cuda else ["none"]
    rows = []
    for plan in plans:
        row = run_plan(parts, ctx.device, plan, last=plan == plans[-1], **clip)
        rows.append(row)
        composed = row["before_s"] + DEFAULT_STEPS * row["step_s"] + row["after_s"]
        record.metric(f"{plan}_step_s", row["step_s"], "s")
        record.metric(f"{plan}_default_clip_s", composed, "s")
        record.check(f"plan {plan!r} makes {clip['frames']} frames", row["frames"] == clip["frames"], str(row["frames"]))
        if cuda:
            record.metric(f"{plan}_peak_allocated_gib", row["peak_allocated_gib"], "GiB")
            row["default_clip_s"] = round(composed, 1)
    headers = ["plan", "savers", "before s", "s/step", "VAE s", f"{DEFAULT_STEPS}-step clip s", "peak allocated GiB"]
    record.table(
        f"One {clip['frames']}-frame {clip['width']}x{clip['height']} clip per memory plan ({clip['steps']} steps run; "
        f"the {DEFAULT_STEPS}-step clip is composed from them)",
        headers,
        [[r["plan"], ", ".join(r["savers"]) or "-", r["before_s"], r["step_s"], r["after_s"],
          round(r["before_s"] + DEFAULT_STEPS * r["step_s"] + r["after_s"], 1), r.get("peak_allocated_gib", "-")]
         for r in rows],
    )  # fmt: skip
    if cuda:
        working = rows[0]["peak_allocated_gib"] * GIB - weights
        record.metric("working_memory_gib", working / GIB, "GiB")
        record.target("working memory over the weights (plan none)", round(working / GIB, 2),
                      f"<= {WORKING_MEMORY_BYTES / GIB:.0f} GiB (the margin choose_offload keeps)",
                      working <= WORKING_MEMORY_BYTES)  # fmt: skip
        record.headline = (f"{DEFAULT_STEPS}-step 49-frame clip: {rows[0]['default_clip_s']} s all on the GPU "
                           f"(peak {rows[0]['peak_allocated_gib']} GiB), {rows[-1]['default_clip_s']} s with model "
                           f"offload (peak {rows[-1]['peak_allocated_gib']} GiB); working memory "
                           f"{working / GIB:.1f} GiB")  # fmt: skip
    else:
        record.headline = f"dry run: {rows[0]['frames']} frames in {rows[0]['s_per_clip']} s"
    del parts
    release_models()
