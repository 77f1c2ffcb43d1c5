"""The marching-cubes table built in code, checked on analytic shapes and on noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tools.marching_cubes import (
    EDGE_CORNERS,
    MAX_TRIANGLES,
    build_lookup_table,
    case_triangles,
    marching_cubes,
    table_is_empty,
)

trimesh = pytest.importorskip("trimesh")


def grid(samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axis = np.linspace(-1.0, 1.0, samples)
    return np.meshgrid(axis, axis, axis, indexing="ij")


def sphere_field(samples: int, radius: float, centre=(0.1, -0.05, 0.2)) -> np.ndarray:
    x, y, z = grid(samples)
    return radius - np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)


def as_mesh(vertices: np.ndarray, faces: np.ndarray):
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False)


def test_table_has_the_mesh_decoder_layout():
    cases, masks = build_lookup_table()
    assert cases.shape == (256, MAX_TRIANGLES, 3) and masks.shape == (256, MAX_TRIANGLES)
    assert not masks[0].any() and not masks[255].any()
    assert masks.sum(axis=1).max() == MAX_TRIANGLES == 5
    assert not table_is_empty(masks) and table_is_empty(np.zeros((256, 5), dtype=bool))


def test_each_case_puts_a_vertex_on_exactly_its_crossing_edges():
    for case in range(256):
        inside = [bool(case >> corner & 1) for corner in range(8)]
        crossing = {edge for edge, (a, b) in enumerate(EDGE_CORNERS) if inside[a] != inside[b]}
        triangles = case_triangles(case)
        assert {edge for triangle in triangles for edge in triangle} == crossing, case
        # a side of a triangle is either on a cube face (one triangle) or inside the cube's fan (two)
        counts: dict[frozenset[int], int] = {}
        for triangle in triangles:
            for i in range(3):
                side = frozenset((triangle[i], triangle[(i + 1) % 3]))
                counts[side] = counts.get(side, 0) + 1
        assert all(count in (1, 2) for count in counts.values()), case


def test_one_inside_corner_gives_one_triangle_around_it():
    assert [sorted(t) for t in case_triangles(0b00000001)] == [[0, 4, 8]]


@pytest.mark.parametrize("samples", [24, 48, 96])
def test_sphere_is_watertight_with_the_right_volume(samples):
    radius = 0.6
    vertices, faces = marching_cubes(sphere_field(samples, radius))
    mesh = as_mesh(vertices, faces)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.euler_number == 2  # one closed surface of genus 0
    exact = 4 / 3 * math.pi * radius**3
    tolerance = {24: 0.03, 48: 0.01, 96: 0.003}[samples]
    assert mesh.volume > 0  # outward normals: a positive signed volume
    assert abs(mesh.volume - exact) / exact < tolerance
    distances = np.linalg.norm(vertices - np.array([0.1, -0.05, 0.2]), axis=1)
    assert np.abs(distances - radius).max() < 2.0 / (samples - 1) * 0.1


def test_vertices_lie_in_the_box_the_field_was_sampled_on():
    vertices, _ = marching_cubes(sphere_field(32, 0.5, centre=(0, 0, 0)), (0.0, 10.0, -4.0), (2.0, 12.0, -2.0))
    assert np.allclose((vertices.min(axis=0) + vertices.max(axis=0)) / 2, (1.0, 11.0, -3.0), atol=0.02)
    assert np.allclose(vertices.max(axis=0) - vertices.min(axis=0), 1.0, atol=0.05)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_gives_a_closed_consistently_wound_surface(seed):
    """Ambiguous faces are everywhere in noise; neighbouring cubes must still agree on each of them."""
    field = np.random.default_rng(seed).standard_normal((18, 15, 21))
    vertices, faces = marching_cubes(field)
    mesh = as_mesh(vertices, faces)
    assert len(faces) > 1000
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0


def test_a_shape_touching_the_box_is_closed_off_or_left_open():
    full = np.ones((10, 10, 10))
    vertices, faces = marching_cubes(full)
    closed = as_mesh(vertices, faces)
    step = 2.0 / 9
    # the surface runs half a step outside the sampled box, its edges and corners cut off
    assert closed.is_watertight and 2.0**3 < closed.volume < (2.0 + step) ** 3
    assert marching_cubes(full, close=False)[1].shape == (0, 3)


def test_nothing_inside_gives_an_empty_mesh():
    vertices, faces = marching_cubes(-np.ones((8, 8, 8)))
    assert vertices.shape == (0, 3) and faces.shape == (0, 3)


@pytest.mark.parametrize(("field", "message"), [
    (np.zeros((4, 4)), "3-D grid"),
    (np.zeros((4, 1, 4)), "3-D grid"),
    (np.full((4, 4, 4), np.nan), "NaN"),
])
def test_bad_fields_are_refused(field, message):
    with pytest.raises(ValueError, match=message):
        marching_cubes(field)
