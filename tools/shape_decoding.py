"""Shap-E latents to a coloured triangle mesh, on a grid of any size.

A Shap-E latent holds the weights of a small MLP (the renderer's ``params_proj`` maps it to
them); that MLP gives a signed distance and a colour at any point of the box [-1, 1]^3. The
mesh is the zero surface of the signed distance sampled on a ``grid_size``^3 grid
(:func:`tools.marching_cubes.marching_cubes`), coloured by the MLP at each vertex.

Unlike the pipeline's own ``output_type="mesh"`` path, the grid size is the caller's (the
pipeline fixes 128^3), the latent's weights are applied through ``torch.func.functional_call``
instead of being copied into the shared renderer (two calls at once cannot see each other's
weights), and vertices are placed on the grid the field was sampled on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.core.errors import ToolError
from tools.marching_cubes import build_lookup_table, marching_cubes, table_is_empty

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

QUERY_BATCH = 65536
"""Points per MLP call when sampling the field and the colours."""


def ensure_mesh_table(renderer: Any) -> tuple[np.ndarray, np.ndarray]:
    """The renderer's marching-cubes table; built here and written into the renderer when the checkpoint left it empty.

    Checkpoints converted to diffusers may hold the table in ``mesh_decoder.cases``/``masks``;
    where those buffers are all zeros (as diffusers creates them), the pipeline's own mesh path
    would fail, so the table built by :func:`tools.marching_cubes.build_lookup_table` fills them.
    """
    import torch

    decoder = renderer.mesh_decoder
    masks = decoder.masks.detach().cpu().numpy()
    if table_is_empty(masks):
        cases, masks = build_lookup_table()
        if tuple(decoder.cases.shape) == cases.shape and tuple(decoder.masks.shape) == masks.shape:
            with torch.no_grad():
                decoder.cases.copy_(torch.from_numpy(cases))
                decoder.masks.copy_(torch.from_numpy(masks))
        return cases, masks
    return decoder.cases.detach().cpu().numpy(), masks


def decode_latent_to_mesh(
    renderer: Any, latent: Any, grid_size: int, table: tuple[np.ndarray, np.ndarray] | None = None,
    query_batch: int = QUERY_BATCH, max_faces: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(vertices[V, 3], faces[F, 3], colors[V, 3])`` of one latent ``[tokens, width]``; z up, sRGB colours in [0, 1].

    A surface of more than ``max_faces`` triangles is refused before it is coloured: a latent
    that came out as noise fills the whole grid with surface (about 2.5 triangles per grid
    cell), which no viewer wants and which takes gigabytes to draw and store.
    """
    import numpy as np
    import torch
    from torch.func import functional_call

    parameter = next(renderer.mlp.parameters())
    device, dtype = parameter.device, parameter.dtype
    with torch.inference_mode():
        projected = renderer.params_proj(latent[None].to(device=device, dtype=dtype))
        weights = {name.removeprefix("nerstf."): value[0] for name, value in projected.items()}

        def query(points: torch.Tensor) -> Any:
            return functional_call(
                renderer.mlp, weights, args=(),
                kwargs={"position": points[None], "direction": None, "ts": None, "nerf_level": "fine",
                        "rendering_mode": "stf"},
            )

        low = renderer.volume.bbox_min.to(torch.float32)
        high = renderer.volume.bbox_max.to(torch.float32)
        axes = [torch.linspace(float(low[i]), float(high[i]), grid_size) for i in range(3)]
        points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
        field = torch.empty(points.shape[0], dtype=torch.float32)
        for start in range(0, points.shape[0], query_batch):
            chunk = points[start : start + query_batch].to(device=device, dtype=dtype)
            field[start : start + query_batch] = query(chunk).signed_distance[0, :, 0].float().cpu()
        vertices, faces = marching_cubes(
            field.reshape(grid_size, grid_size, grid_size).numpy(), tuple(low.tolist()), tuple(high.tolist()),
            table=table,
        )
        if max_faces is not None and len(faces) > max_faces:
            raise ToolError(
                f"the surface came out with {len(faces):,} triangles at grid size {grid_size}, over the limit of "
                f"{max_faces:,}: the shape is noise rather than an object; try another seed, more steps, or a "
                "smaller tools.mesh_grid_size"
            )
        colors = np.zeros((len(vertices), 3), dtype=np.float32)
        for start in range(0, len(vertices), query_batch):
            chunk = torch.from_numpy(vertices[start : start + query_batch]).to(device=device, dtype=dtype)
            colors[start : start + query_batch] = query(chunk).channels[0].float().cpu().numpy()
    return vertices, faces, colors
