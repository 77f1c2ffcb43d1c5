"""Triangle meshes out: GLB, PLY and OBJ files through trimesh, and a preview PNG from a few angles.

Meshes here are y-up (glTF's convention; Shap-E's z-up output is turned on the way in) with
per-vertex sRGB colours. A GLB stores vertex colours as linear values (the glTF rule), PLY and
OBJ as sRGB (what their viewers assume). The preview is drawn by a small z-buffer rasteriser in
numpy (no OpenGL or display needed): flat-shaded triangles, lit from the viewer's side.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from agent.core.errors import ToolError
from tools.base import require_package

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

MeshFormat = Literal["glb", "ply", "obj"]
MESH_FORMATS: tuple[str, ...] = ("glb", "ply", "obj")
PREVIEW_VIEWS = ((30.0, 20.0), (120.0, 20.0), (210.0, 20.0), (300.0, 20.0))
"""(azimuth, elevation) in degrees of the preview's views, around the vertical axis."""
PREVIEW_SIZE = 256
BACKGROUND = (255, 255, 255)


def z_up_to_y_up(vertices: np.ndarray) -> np.ndarray:
    """``(x, y, z)`` with z up -> ``(x, z, -y)`` with y up."""
    import numpy as np

    return np.stack([vertices[:, 0], vertices[:, 2], -vertices[:, 1]], axis=1)


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] to linear light in [0, 1]."""
    import numpy as np

    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)


def mesh_bytes(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, file_format: str) -> bytes:
    """The mesh as a GLB, PLY (binary) or OBJ file; ``colors`` are sRGB in [0, 1] per vertex."""
    import numpy as np

    if file_format not in MESH_FORMATS:
        raise ToolError(f"mesh format {file_format!r} is not one of {', '.join(MESH_FORMATS)}")
    trimesh = require_package("trimesh", "3d", "exporting 3-D meshes")
    values = srgb_to_linear(colors) if file_format == "glb" else colors
    rgba = np.concatenate([np.clip(values, 0.0, 1.0) * 255.0 + 0.5, np.full((len(values), 1), 255.0)], axis=1)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=rgba.astype(np.uint8), process=False)
    exported = mesh.export(file_type=file_format)
    return exported.encode("utf-8") if isinstance(exported, str) else bytes(exported)


def _view_axes(azimuth: float, elevation: float) -> np.ndarray:
    """Rows right, up, towards-viewer of a camera circling the y axis."""
    import numpy as np

    a, e = math.radians(azimuth), math.radians(elevation)
    back = np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
    right = np.cross([0.0, 1.0, 0.0], back)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(back, right), back])


def _edge(u: np.ndarray, v: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Twice the signed area of (u, v, point): which side of the line u -> v the point is on."""
    return (v - u)[..., 0] * (point - u)[..., 1] - (v - u)[..., 1] * (point - u)[..., 0]


def _fragments(screen: np.ndarray, depth: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """Every (pixel, depth, face) a triangle covers, pixel centres tested against its three edges."""
    import numpy as np

    corners = screen[faces]  # [F, 3, 2]
    low = np.floor(corners.min(axis=1)).astype(np.int64)
    extent = np.ceil(corners.max(axis=1)).astype(np.int64) - low + 1
    window = np.maximum(1, 2 ** np.ceil(np.log2(np.maximum(extent.max(axis=1), 1)))).astype(np.int64)
    pixels, depths, owners = [], [], []
    for side in np.unique(window):
        members = np.nonzero(window == side)[0]
        offsets = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="xy"), axis=-1).reshape(-1, 2)
        chunk = max(1, 2_000_000 // int(side * side))
        for start in range(0, len(members), chunk):
            chosen = members[start : start + chunk]
            p = low[chosen][:, None, :] + offsets[None]  # [n, side*side, 2] pixel indices
            centre = p + 0.5
            a, b, c = (corners[chosen][:, i][:, None, :] for i in range(3))
            area = _edge(a, b, c)  # [n, 1]
            keep_face = np.abs(area[:, 0]) > 1e-12
            w0, w1, w2 = (_edge(u, v, centre) / area for u, v in ((b, c), (c, a), (a, b)))
            inside = (w0 >= -1e-6) & (w1 >= -1e-6) & (w2 >= -1e-6) & keep_face[:, None]
            inside &= (p[..., 0] >= 0) & (p[..., 0] < size) & (p[..., 1] >= 0) & (p[..., 1] < size)
            z = depth[faces[chosen]]  # [n, 3]
            interpolated = w0 * z[:, :1] + w1 * z[:, 1:2] + w2 * z[:, 2:3]
            rows, columns = np.nonzero(inside)
            pixels.append(p[rows, columns, 1] * size + p[rows, columns, 0])
            depths.append(interpolated[rows, columns])
            owners.append(chosen[rows])
    if not pixels:
        empty = np.zeros(0, dtype=np.int64)
        return empty, np.zeros(0), empty
    return np.concatenate(pixels), np.concatenate(depths), np.concatenate(owners)


def render_view(
    vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, azimuth: float, elevation: float,
    size: int = PREVIEW_SIZE,
) -> np.ndarray:
    """One view of the mesh, fitted to a ``size`` x ``size`` uint8 RGB image on a white background."""
    import numpy as np

    image = np.full((size * size, 3), BACKGROUND, dtype=np.float64)
    if len(faces):
        centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
        radius = max(float(np.linalg.norm(vertices - centre, axis=1).max()), 1e-9)
        axes = _view_axes(azimuth, elevation)
        camera = (vertices - centre) @ axes.T / radius  # right, up, towards the viewer in [-1, 1]
        screen = np.stack([(camera[:, 0] * 0.92 + 1) * size / 2, (1 - camera[:, 1] * 0.92) * size / 2], axis=1)
        pixel, depth, face = _fragments(screen, camera[:, 2], faces, size)
        order = np.lexsort((-depth, pixel))  # nearest fragment first within each pixel
        first = np.unique(pixel[order], return_index=True)[1]
        visible_pixel, visible_face = pixel[order][first], face[order][first]
        corners = camera[faces]
        normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        light = np.array([-0.3, 0.5, 1.0]) / np.linalg.norm([-0.3, 0.5, 1.0])
        shade = 0.35 + 0.65 * np.abs(normals @ light)
        face_colors = colors[faces].mean(axis=1) * 255.0
        image[visible_pixel] = face_colors[visible_face] * shade[visible_face, None]
    return np.clip(image, 0, 255).astype(np.uint8).reshape(size, size, 3)


def preview_image(
    vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, size: int = PREVIEW_SIZE,
    views: tuple[tuple[float, float], ...] = PREVIEW_VIEWS,
) -> Image.Image:
    """The views side by side in a grid (two columns), each ``size`` pixels square."""
    from PIL import Image

    columns = min(2, len(views))
    rows = -(-len(views) // columns)
    sheet = Image.new("RGB", (columns * size, rows * size), BACKGROUND)
    for slot, (azimuth, elevation) in enumerate(views):
        view = render_view(vertices, faces, colors, azimuth, elevation, size)
        sheet.paste(Image.fromarray(view), ((slot % columns) * size, (slot // columns) * size))
    return sheet
