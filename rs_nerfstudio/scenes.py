"""``rs-scene``: Blender-format scenes of analytic shapes whose signed distances are known exactly.

Tests and benchmarks need scenes with a ground truth for geometry: a sphere, a rounded box, a torus and a CSG union,
each with a closed-form SDF (positive outside). They are sphere-traced into NeRF-synthetic folders (RGBA PNGs and
``transforms_*.json``, which nerfstudio's Blender dataparser reads) with a view-independent procedural colour, and
the ground truth is saved beside them: ``mesh.ply`` (marching cubes on the exact SDF) and ``sdf.npz``.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import torch
import tyro
from jaxtyping import Float
from torch import Tensor

SCENE_BOX = 1.5
"""Half-size of the Blender dataparser's scene box; every shape lies well inside it."""
CAMERA_RADIUS = 4.0
CAMERA_ANGLE_X = 0.6911112070083618
"""Horizontal field of view of the NeRF-synthetic scenes."""
LIGHT = torch.tensor([0.4, 0.3, 0.85]) / math.sqrt(0.4**2 + 0.3**2 + 0.85**2)

SDF = Callable[[Tensor], Tensor]


def sphere(radius: float, centre: Tuple[float, float, float] = (0.0, 0.0, 0.0)) -> SDF:
    """Exact SDF of a ball."""
    c = torch.tensor(centre)
    return lambda p: (p - c).norm(dim=-1) - radius


def rounded_box(half: Tuple[float, float, float], radius: float, centre=(0.0, 0.0, 0.0)) -> SDF:
    """Exact SDF of an axis-aligned box with edges rounded by ``radius``."""
    c, b = torch.tensor(centre), torch.tensor(half)

    def sdf(p: Tensor) -> Tensor:
        q = (p - c).abs() - (b - radius)
        return q.clamp_min(0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0) - radius

    return sdf


def torus(major: float, minor: float, centre=(0.0, 0.0, 0.0)) -> SDF:
    """Exact SDF of a torus around the z axis."""
    c = torch.tensor(centre)

    def sdf(p: Tensor) -> Tensor:
        q = p - c
        ring = q[..., :2].norm(dim=-1) - major
        return torch.stack([ring, q[..., 2]], dim=-1).norm(dim=-1) - minor

    return sdf


def union(*parts: SDF) -> SDF:
    """CSG union: the minimum. Exact outside; inside it is a lower bound of the distance's magnitude."""
    return lambda p: torch.stack([part(p) for part in parts], dim=0).amin(dim=0)


def stripes(p: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 3"]:
    """A smooth procedural albedo: low-frequency colour waves, in [0.2, 0.9]."""
    phase = torch.tensor([0.0, 2.1, 4.2])
    return 0.55 + 0.35 * torch.sin(4.0 * p[..., [0, 1, 2]] + 3.0 * p[..., [1, 2, 0]] + phase)


@dataclass(frozen=True)
class Shape:
    """An analytic shape: exact signed distance (positive outside) and albedo at world points."""

    sdf: SDF
    albedo: Callable[[Tensor], Tensor] = stripes


SHAPES: Dict[str, Shape] = {
    "sphere": Shape(sphere(0.8)),
    "box": Shape(rounded_box((0.6, 0.5, 0.7), 0.05)),
    "torus": Shape(torus(0.75, 0.25)),
    "union": Shape(
        union(
            sphere(0.45, (-0.3, -0.1, 0.3)),
            rounded_box((0.35, 0.35, 0.35), 0.04, (0.45, 0.15, 0.1)),
            torus(0.7, 0.15, (0.0, 0.0, -0.35)),
        )
    ),
}


def get_shape(name: str) -> Shape:
    """The preset called ``name``."""
    if name not in SHAPES:
        raise ValueError(f"unknown shape '{name}'; choose one of {', '.join(SHAPES)}")
    return SHAPES[name]


# ----- cameras and rendering --------------------------------------------------------------------------------------
def look_at(eye: Float[Tensor, "3"]) -> Float[Tensor, "4 4"]:
    """Camera-to-world matrix (Blender/OpenGL: the camera looks down its -z, y up) of a camera aimed at the origin."""
    forward = -eye / eye.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0]))
    right = right / right.norm()
    up = torch.linalg.cross(right, forward)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, eye
    return c2w


def camera_positions(count: int, generator: torch.Generator, spiral: bool) -> Float[Tensor, "count 3"]:
    """Points on the camera sphere, from a little below the equator to near the pole (Fibonacci or random)."""
    if spiral:
        index = torch.arange(count, dtype=torch.float32) + 0.5
        z = -0.25 + 1.15 * index / count
        azimuth = index * math.pi * (3.0 - math.sqrt(5.0))
    else:
        z = -0.25 + 1.15 * torch.rand(count, generator=generator)
        azimuth = 2 * math.pi * torch.rand(count, generator=generator)
    z = z.clamp(max=0.95)
    ring = (1 - z**2).sqrt()
    return CAMERA_RADIUS * torch.stack([ring * azimuth.cos(), ring * azimuth.sin(), z], dim=-1)


def shading_normals(shape: Shape, points: Tensor, step: float = 1e-3) -> Tensor:
    """Unit normals from central differences of the SDF."""
    offsets = torch.eye(3) * step
    grad = torch.stack([shape.sdf(points + o) - shape.sdf(points - o) for o in offsets], dim=-1)
    return torch.nn.functional.normalize(grad, dim=-1)


def render_view(
    shape: Shape, c2w: Tensor, size: int, supersample: int = 2, steps: int = 96
) -> Float[Tensor, "size size 4"]:
    """Sphere-trace one view; RGB (Lambert + ambient, not premultiplied) and coverage alpha."""
    focal = 0.5 * size / math.tan(0.5 * CAMERA_ANGLE_X)
    sub = (torch.arange(supersample) + 0.5) / supersample
    pixel = torch.arange(size, dtype=torch.float32)
    v, u = torch.meshgrid(pixel, pixel, indexing="ij")
    u = (u[..., None, None] + sub[None, :]).expand(size, size, supersample, supersample)
    v = (v[..., None, None] + sub[:, None]).expand(size, size, supersample, supersample)
    dirs_cam = torch.stack([(u - size / 2) / focal, -(v - size / 2) / focal, -torch.ones_like(u)], dim=-1)
    dirs = torch.nn.functional.normalize(dirs_cam @ c2w[:3, :3].T, dim=-1).reshape(-1, 3)
    origin = c2w[:3, 3]
    t = torch.full((dirs.shape[0],), CAMERA_RADIUS - SCENE_BOX * math.sqrt(3))
    hit = torch.zeros_like(t, dtype=torch.bool)
    far = CAMERA_RADIUS + SCENE_BOX * math.sqrt(3)
    for _ in range(steps):
        distance = shape.sdf(origin + dirs * t[:, None])
        hit |= distance < 1e-4
        t = torch.where(hit | (t > far), t, t + distance)
    points = origin + dirs * t[:, None]
    lambert = (shading_normals(shape, points) @ LIGHT).clamp_min(0)
    rgb = (shape.albedo(points) * (0.35 + 0.65 * lambert[:, None])).clamp(0, 1) * hit[:, None]
    rgb = rgb.reshape(size, size, -1, 3).sum(dim=2)
    alpha = hit.float().reshape(size, size, -1).mean(dim=2)
    rgb = rgb / (alpha[..., None] * supersample**2).clamp_min(1e-8)
    return torch.cat([rgb, alpha[..., None]], dim=-1)


# ----- ground truth -----------------------------------------------------------------------------------------------
def sdf_grid(shape: Shape, resolution: int) -> Tuple[np.ndarray, np.ndarray, float]:
    """The exact SDF on ``resolution^3`` nodes spanning the scene box, indexed [x, y, z]; origin and spacing."""
    axis = torch.linspace(-SCENE_BOX, SCENE_BOX, resolution)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    values = torch.cat([shape.sdf(chunk) for chunk in points.reshape(-1, 3).split(1 << 18)])
    spacing = 2 * SCENE_BOX / (resolution - 1)
    return values.reshape(resolution, resolution, resolution).numpy(), np.full(3, -SCENE_BOX), spacing


def ground_truth_mesh(shape: Shape, resolution: int):
    """Marching cubes on the exact SDF (outward-facing triangles), as a trimesh."""
    import trimesh
    from skimage.measure import marching_cubes

    values, origin, spacing = sdf_grid(shape, resolution)
    values[np.abs(values) < 1e-6] = 1e-6  # nodes on the surface make degenerate, non-manifold triangles
    vertices, faces, _, _ = marching_cubes(values, level=0.0, spacing=(spacing,) * 3, gradient_direction="descent")
    return trimesh.Trimesh(vertices + origin, faces, process=True)


# ----- writing a scene --------------------------------------------------------------------------------------------
def make_scene(
    output_dir: Path,
    shape: str = "union",
    image_size: int = 100,
    num_train: int = 60,
    num_val: int = 5,
    num_test: int = 5,
    seed: int = 0,
    mesh_resolution: int = 128,
    sdf_resolution: int = 64,
    overwrite: bool = False,
) -> Path:
    """Write a Blender-format scene of ``shape`` to ``output_dir``; returns it.

    The folder is written beside its destination and renamed into place at the end: a failure leaves nothing behind,
    and an existing non-empty folder is refused unless ``overwrite``.
    """
    output_dir = Path(output_dir)
    solid = get_shape(shape)
    if image_size < 8 or min(num_train, num_val, num_test) < 1 or min(mesh_resolution, sdf_resolution) < 8:
        raise ValueError("image_size and resolutions must be >= 8, and every split needs at least one view")
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty (pass overwrite to replace it)")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        _write_scene(staging, solid, shape, image_size, (num_train, num_val, num_test), seed)
        ground_truth_mesh(solid, mesh_resolution).export(staging / "mesh.ply")
        values, origin, spacing = sdf_grid(solid, sdf_resolution)
        np.savez_compressed(
            staging / "sdf.npz", sdf=values.astype(np.float32), origin=origin, voxel_size=spacing,
            sign_convention="positive outside", shape=shape,
        )  # fmt: skip
        if output_dir.exists():
            shutil.rmtree(output_dir) if output_dir.is_dir() else output_dir.unlink()
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def _write_scene(
    folder: Path, solid: Shape, name: str, image_size: int, counts: Tuple[int, int, int], seed: int
) -> None:
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    splits = {
        "train": camera_positions(counts[0], generator, spiral=True),
        "val": camera_positions(counts[1], generator, spiral=False),
        "test": camera_positions(counts[2], generator, spiral=False),
    }
    for split, eyes in splits.items():
        (folder / split).mkdir()
        frames = []
        for index, eye in enumerate(eyes):
            c2w = look_at(eye)
            rgba = render_view(solid, c2w, image_size)
            pixels = (rgba.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
            Image.fromarray(pixels, mode="RGBA").save(folder / split / f"r_{index}.png")
            frames.append({"file_path": f"./{split}/r_{index}", "rotation": 0.0, "transform_matrix": c2w.tolist()})
        meta = {"camera_angle_x": CAMERA_ANGLE_X, "frames": frames}
        (folder / f"transforms_{split}.json").write_text(json.dumps(meta, indent=2), encoding="utf8")
    info = {"shape": name, "image_size": image_size, "views": dict(zip(splits, counts)), "seed": seed}
    (folder / "scene.json").write_text(json.dumps(info, indent=2), encoding="utf8")


@dataclass
class SceneConfig:
    """Write a Blender-format scene of analytic shapes, with its exact SDF and mesh beside it."""

    output_dir: Path = Path("scenes/union")
    """Folder to create; it must not exist or be empty."""
    shape: str = "union"
    """Preset: sphere, box, torus or union (a sphere, a rounded box and a torus)."""
    image_size: int = 100
    """Width and height of each view, in pixels."""
    num_train: int = 60
    """Training views (a spiral over the upper sphere)."""
    num_val: int = 5
    """Validation views (random, seeded)."""
    num_test: int = 5
    """Test views (random, seeded)."""
    seed: int = 0
    """Seed of the random views."""
    mesh_resolution: int = 256
    """Marching-cubes nodes per axis for the ground-truth mesh."""
    sdf_resolution: int = 128
    """Nodes per axis of the saved exact-SDF grid."""
    overwrite: bool = False
    """Replace a non-empty output folder."""


def entrypoint() -> None:
    """Command-line entry point: one line of error, no traceback, for bad input."""
    config = tyro.cli(SceneConfig)
    try:
        path = make_scene(**asdict(config))
    except (ValueError, FileExistsError) as error:
        raise SystemExit(f"rs-scene: error: {error}") from None
    views = config.num_train + config.num_val + config.num_test
    print(f"rs-scene: wrote '{config.shape}' ({views} views of {config.image_size} px) to {path}")
    print(f"rs-scene: train on it with: ns-train rs-sdf --data {path}")


if __name__ == "__main__":
    entrypoint()
