"""Marching cubes: the lookup table built in code, and a vectorised mesh extraction from a 3-D field.

Conventions (those of diffusers' Shap-E ``MeshDecoder``, so a table a checkpoint ships plugs in):

* a cube's corner ``c = dx + 2*dy + 4*dz``; bit ``c`` of the case index is set when the field
  at that corner is ``> 0`` (inside);
* its 12 edges are numbered x-edges first (0-3), then y-edges (4-7), then z-edges (8-11),
  see :data:`EDGE_CORNERS`;
* the table is ``cases[256, T, 3]`` (edge numbers of up to ``T`` triangles) and
  ``masks[256, T]`` (which of those triangles exist).

How the table is built: on each cube face the crossing edges are joined by segments; where a
face is ambiguous (two inside corners on one diagonal, two outside on the other) each inside
corner is cut off on its own. That rule depends only on the four corners of the face, which
the two cubes sharing it see alike, so neighbouring cubes always agree on the face and the
surface has no cracks: every mesh edge belongs to exactly two triangles, and a field that is
outside all around its border gives a closed (watertight) mesh. The segments of a cube form
closed loops, each triangulated as a fan, wound so that normals point from inside to outside.
No case needs more than :data:`MAX_TRIANGLES` (5) triangles, so the table has the shape of the
buffers diffusers' renderer holds and can fill them when a checkpoint leaves them empty.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

CORNERS = tuple((c & 1, (c >> 1) & 1, (c >> 2) & 1) for c in range(8))
"""Position of each corner in the unit cube: ``c = dx + 2*dy + 4*dz``."""
EDGE_CORNERS = (
    (0, 1), (2, 3), (4, 5), (6, 7),  # along x, at (y, z) = (0,0) (1,0) (0,1) (1,1)
    (0, 2), (1, 3), (4, 6), (5, 7),  # along y, at (x, z) = (0,0) (1,0) (0,1) (1,1)
    (0, 4), (1, 5), (2, 6), (3, 7),  # along z, at (x, y) = (0,0) (1,0) (0,1) (1,1)
)  # fmt: skip
"""The two corners of each edge, in the numbering the table uses."""
FACES = (
    ((0, 2, 6, 4), (-1, 0, 0)), ((1, 3, 7, 5), (1, 0, 0)),
    ((0, 1, 5, 4), (0, -1, 0)), ((2, 3, 7, 6), (0, 1, 0)),
    ((0, 1, 3, 2), (0, 0, -1)), ((4, 5, 7, 6), (0, 0, 1)),
)  # fmt: skip
"""Each face's corners in cyclic order, with its outward normal."""
_EDGE_OF = {frozenset(pair): index for index, pair in enumerate(EDGE_CORNERS)}


def _midpoint(edge: int) -> tuple[float, float, float]:
    a, b = (CORNERS[c] for c in EDGE_CORNERS[edge])
    return tuple((p + q) / 2 for p, q in zip(a, b, strict=True))


def _left_turn(normal, a, b, corner) -> float:
    """``normal . ((b - a) x (corner - a))``: positive when ``corner`` lies left of a -> b seen from outside."""
    u = [b[i] - a[i] for i in range(3)]
    v = [corner[i] - a[i] for i in range(3)]
    cross = (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])
    return sum(n * c for n, c in zip(normal, cross, strict=True))


def _face_segments(case: int) -> list[tuple[int, int]]:
    """Directed segments (edge -> edge) on the cube's faces, inside corners on their left seen from outside."""
    inside = [bool(case >> c & 1) for c in range(8)]
    segments: list[tuple[int, int]] = []
    for cycle, normal in FACES:
        crossings = [
            (i, _EDGE_OF[frozenset((cycle[i], cycle[(i + 1) % 4]))])
            for i in range(4)
            if inside[cycle[i]] != inside[cycle[(i + 1) % 4]]
        ]
        if not crossings:
            continue
        if len(crossings) == 2:
            pairs = [(crossings[0][1], crossings[1][1], next(c for c in cycle if inside[c]))]
        else:  # ambiguous face: cut off each inside corner on its own
            pairs = []
            for i, corner in enumerate(cycle):
                if inside[corner]:
                    before = _EDGE_OF[frozenset((cycle[i - 1], corner))]
                    after = _EDGE_OF[frozenset((corner, cycle[(i + 1) % 4]))]
                    pairs.append((before, after, corner))
        for first, second, corner in pairs:
            if _left_turn(normal, _midpoint(first), _midpoint(second), CORNERS[corner]) > 0:
                segments.append((first, second))
            else:
                segments.append((second, first))
    return segments


def case_triangles(case: int) -> list[tuple[int, int, int]]:
    """The triangles (as edge numbers) of one case, wound so that normals point outwards."""
    following = dict(_face_segments(case))
    triangles: list[tuple[int, int, int]] = []
    while following:
        start = next(iter(following))
        loop = [start]
        edge = following.pop(start)
        while edge != start:
            loop.append(edge)
            edge = following.pop(edge)
        # the loop runs with the inside on its left seen from outside the cube, so a fan in loop
        # order faces the inside: reverse each triangle
        triangles.extend((loop[0], loop[i + 1], loop[i]) for i in range(1, len(loop) - 1))
    return triangles


@functools.lru_cache(maxsize=1)
def _table_lists() -> tuple[tuple[tuple[int, int, int], ...], ...]:
    return tuple(tuple(case_triangles(case)) for case in range(256))


MAX_TRIANGLES = 5
"""Most triangles any case needs with this table: the same 5 slots as diffusers' ``MeshDecoder`` buffers."""


def build_lookup_table() -> tuple[np.ndarray, np.ndarray]:
    """``(cases[256, MAX_TRIANGLES, 3] int64, masks[256, MAX_TRIANGLES] bool)`` in the MeshDecoder layout."""
    import numpy as np

    lists = _table_lists()
    cases = np.zeros((256, MAX_TRIANGLES, 3), dtype=np.int64)
    masks = np.zeros((256, MAX_TRIANGLES), dtype=bool)
    for case, triangles in enumerate(lists):
        for slot, triangle in enumerate(triangles):
            cases[case, slot] = triangle
            masks[case, slot] = True
    return cases, masks


def table_is_empty(masks: np.ndarray) -> bool:
    """Whether a checkpoint's table holds no triangle at all (what diffusers' renderer starts with)."""
    return not bool(masks.any())


def marching_cubes(
    field: np.ndarray,
    bbox_min: tuple[float, float, float] = (-1.0, -1.0, -1.0),
    bbox_max: tuple[float, float, float] = (1.0, 1.0, 1.0),
    table: tuple[np.ndarray, np.ndarray] | None = None,
    close: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Extract the surface ``field == 0`` of a 3-D grid of samples (``> 0`` is inside).

    ``field[i, j, k]`` is the value at ``bbox_min + (i, j, k) / (shape - 1) * (bbox_max - bbox_min)``.
    With ``close=True`` the grid is padded with an outside border first, so a shape touching
    the box is closed off there instead of left open. ``table`` defaults to the one built here.
    Returns ``(vertices[V, 3] float32, faces[F, 3] int64)``; each vertex lies on a grid edge,
    placed by linear interpolation, and is shared by every triangle that uses that edge.
    """
    import numpy as np

    values = np.asarray(field, dtype=np.float32)
    if values.ndim != 3 or min(values.shape) < 2:
        raise ValueError(f"the field must be a 3-D grid of at least 2x2x2 samples, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("the field holds NaN or infinite values")
    samples = np.array(values.shape, dtype=np.float64)
    low = np.asarray(bbox_min, dtype=np.float64)
    step = (np.asarray(bbox_max, dtype=np.float64) - low) / (samples - 1)
    if close:
        values = np.pad(values, 1, constant_values=-1.0)
        low = low - step
    cases_table, masks_table = table if table is not None else build_lookup_table()
    sx, sy, sz = values.shape
    inside = values > 0
    index = np.zeros((sx - 1, sy - 1, sz - 1), dtype=np.int64)
    for corner, (dx, dy, dz) in enumerate(CORNERS):
        index |= inside[dx : sx - 1 + dx, dy : sy - 1 + dy, dz : sz - 1 + dz].astype(np.int64) << corner
    active = np.nonzero((index != 0) & (index != 255))
    case = index[active]
    if case.size == 0:
        return np.zeros((0, 3), dtype=np.float32), np.zeros((0, 3), dtype=np.int64)
    x, y, z = (a.astype(np.int64) for a in active)

    # global number of each of the 12 edges of each active cube (x-edges, then y-edges, then z-edges)
    y_offset = (sx - 1) * sy * sz
    z_offset = y_offset + sx * (sy - 1) * sz
    edges = np.empty((case.size, 12), dtype=np.int64)
    for slot, (a, b) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
        edges[:, slot] = x * sy * sz + (y + a) * sz + (z + b)
        edges[:, 4 + slot] = y_offset + (x + a) * (sy - 1) * sz + y * sz + (z + b)
        edges[:, 8 + slot] = z_offset + (x + a) * sy * (sz - 1) + (y + b) * (sz - 1) + z
    local = np.asarray(cases_table)[case]  # [n, T, 3]
    keep = np.asarray(masks_table, dtype=bool)[case]  # [n, T]
    triangles = np.take_along_axis(edges, local.reshape(case.size, -1), axis=1).reshape(local.shape)[keep]
    used, faces = np.unique(triangles.reshape(-1), return_inverse=True)
    faces = faces.reshape(-1, 3).astype(np.int64)

    # the grid point each used edge starts from, and the axis it runs along
    start = np.empty((used.size, 3), dtype=np.int64)
    axis = np.empty(used.size, dtype=np.int64)
    groups = (  # (edges of this direction, their number within it, counts along y and z)
        (used < y_offset, used, sy, sz),
        ((used >= y_offset) & (used < z_offset), used - y_offset, sy - 1, sz),
        (used >= z_offset, used - z_offset, sy, sz - 1),
    )
    for direction, (selected, number, count_y, count_z) in enumerate(groups):
        n = number[selected]
        start[selected, 0] = n // (count_y * count_z)
        start[selected, 1] = (n // count_z) % count_y
        start[selected, 2] = n % count_z
        axis[selected] = direction
    end = start.copy()
    end[np.arange(used.size), axis] += 1
    first = values[start[:, 0], start[:, 1], start[:, 2]].astype(np.float64)
    second = values[end[:, 0], end[:, 1], end[:, 2]].astype(np.float64)
    t = (first / (first - second))[:, None]
    points = (1 - t) * start + t * end
    vertices = (low + points * step).astype(np.float32)
    return vertices, faces
