"""generate_3d's cost on a CPU at Shap-E's real sizes (openai/shap-e), with random weights: seconds per object.

The parts are timed one after another, float32, in wall seconds and in this process's CPU
seconds (CPU seconds / torch threads stands for an idle machine's wall time on a shared CPU):

* the CLIP ViT-L/14 text encoder on one prompt;
* one evaluation of the 24-layer, 1024-wide prior over 1024 latent tokens with classifier-free
  guidance (a batch of 2); Heun's sampler makes ``2 * steps - 1`` of them;
* turning one latent into a mesh with the tool's own decoder (the renderer's MLP on a
  ``--grid``^3 grid, marching cubes, vertex colours), then the preview and the GLB file. A
  random latent makes a noisy field, so the meshing figures are a worst case for the surface.

The object's seconds are composed from them for ``--steps`` steps::

    python bench/bench_shape.py --steps 64 --grids 64 128
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.bench_video import GIB, PeakMemory, Timer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64, help="sampling steps of the composed object")
    parser.add_argument("--grids", type=int, nargs="+", default=[64, 128], help="meshing grid sizes to time")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from tests.video_3d_models import _shap_e_parts
    from tools.mesh_files import mesh_bytes, preview_image, z_up_to_y_up
    from tools.shape_decoding import decode_latent_to_mesh, ensure_mesh_table

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    rows = []
    with torch.inference_mode(), PeakMemory() as memory:
        encoder = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768,
        )).eval()
        prior, renderer, _ = _shap_e_parts("real", 768, image=False)
        ids = torch.randint(0, 49408, (1, 77))
        encoder(ids)
        with Timer() as text:
            embedding = encoder(ids).text_embeds
        latents = torch.randn(2, 1024, 1024)
        condition = torch.cat([torch.zeros_like(embedding), embedding]) * 768**0.5
        timers = []
        for step in range(2):
            with Timer() as timer:
                prior(latents, timestep=torch.tensor(500 - step), proj_embedding=condition)
            timers.append(timer)
        evaluation = min(timers, key=lambda t: t.cpu_s)
        rows.append({"part": "text encoder", "wall_s": round(text.wall_s, 3), "cpu_s": round(text.cpu_s, 3)})
        rows.append({"part": "prior evaluation (CFG batch 2)", "wall_s": [round(t.wall_s, 2) for t in timers],
                     "cpu_s": [round(t.cpu_s, 2) for t in timers],
                     "parameters_m": round(sum(p.numel() for p in prior.parameters()) / 1e6, 1)})
        table = ensure_mesh_table(renderer)
        latent = torch.randn(1024, 1024)
        for grid in args.grids:
            with Timer() as decode:
                vertices, faces, colors = decode_latent_to_mesh(renderer, latent, grid, table)
            vertices = z_up_to_y_up(vertices)
            with Timer() as files:
                preview_image(vertices, faces, colors)
                mesh_bytes(vertices, faces, colors, "glb")
            evaluations = 2 * args.steps - 1
            seconds = (text.cpu_s + evaluations * evaluation.cpu_s + decode.cpu_s + files.cpu_s) / threads
            rows.append({
                "part": f"mesh at grid {grid}", "faces": int(len(faces)), "decode_wall_s": round(decode.wall_s, 2),
                "decode_cpu_s": round(decode.cpu_s, 2), "preview_and_glb_cpu_s": round(files.cpu_s, 2),
                "object_s (composed, CPU s / threads)": round(seconds, 1), "steps": args.steps, "threads": threads,
            })
        del encoder, prior, renderer
        gc.collect()
    rows.append({"part": "peak resident memory", "gib": round(memory.peak / GIB, 2)})
    for row in rows:
        print(json.dumps(row))
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
