"""``rs-scene``: Blender-format scenes of analytic shapes whose signed distances are known exactly.

Tests and benchmarks need scenes with a ground truth for geometry: a sphere, a rounded box, a torus and a CSG union,
each with a closed-form SDF (positive outside, nerfstudio's convention). They are sphere-traced into NeRF-synthetic
folders (RGBA PNGs and ``transforms_*.json``, which nerfstudio's Blender dataparser reads) with a view-independent
procedural colour, and the ground truth is saved beside them: ``mesh.ply`` (marching cubes on the exact SDF) and
``sdf.npz`` (the exact SDF on a grid, readable with numpy alone).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Tuple

import numpy as np
import tyro
from jaxtyping import Bool, Float

if TYPE_CHECKING:  # torch is imported where it is used, the shapes' too: `rs-scene --help` answers without it
    import torch
    import trimesh
    from torch import Tensor

SCENE_BOX = 1.5
"""Half-size of the Blender dataparser's scene box; every shape lies within [-1.2, 1.2]^3, well inside it."""
CAMERA_RADIUS = 4.0
"""Distance of every camera from the origin, as in NeRF-synthetic."""
CAMERA_ANGLE_X = 0.6911112070083618
"""Horizontal field of view of the NeRF-synthetic scenes (Lego's)."""
LIGHT = tuple(x / math.sqrt(0.4**2 + 0.3**2 + 0.85**2) for x in (0.4, 0.3, 0.85))
"""Direction towards the fixed directional light (from above), a unit vector."""
AMBIENT = 0.5
"""Ambient share of the shading, so that faces turned away from the light are still well lit."""

SDF = Callable[["Tensor"], "Tensor"]
"""World points ``[..., 3]`` to signed distances ``[...]``."""
Albedo = Callable[["Tensor"], "Tensor"]
"""World points ``[..., 3]`` to RGB ``[..., 3]``."""
Vector = Tuple[float, float, float]


class SceneError(ValueError):
    """Unusable input to the generator; the message says which and why, on one line."""


# ----- shapes -----------------------------------------------------------------------------------------------------
def sphere(radius: float, centre: Vector = (0.0, 0.0, 0.0)) -> SDF:
    """Exact SDF of a ball."""
    return lambda p: (p - p.new_tensor(centre)).norm(dim=-1) - radius


def rounded_box(half: Vector, radius: float = 0.0, centre: Vector = (0.0, 0.0, 0.0)) -> SDF:
    """Exact SDF of an axis-aligned box of half-sizes ``half`` whose edges are rounded by ``radius`` (0: sharp)."""

    def sdf(p: Tensor) -> Tensor:
        q = (p - p.new_tensor(centre)).abs() - (p.new_tensor(half) - radius)
        return q.clamp_min(0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0) - radius

    return sdf


def torus(major: float, minor: float, centre: Vector = (0.0, 0.0, 0.0)) -> SDF:
    """Exact SDF of a torus around the z axis: tube radius ``minor`` around a circle of radius ``major``."""

    def sdf(p: Tensor) -> Tensor:
        import torch

        q = p - p.new_tensor(centre)
        ring = q[..., :2].norm(dim=-1) - major
        return torch.stack([ring, q[..., 2]], dim=-1).norm(dim=-1) - minor

    return sdf


def union(*parts: SDF) -> SDF:
    """CSG union: the minimum of the parts' SDFs.

    Exact outside the union; inside, where the parts overlap, it is only a lower bound of the distance's magnitude.
    Sphere tracing needs exactness only outside, so renders are unaffected.
    """

    def sdf(p: Tensor) -> Tensor:
        import torch

        return torch.stack([part(p) for part in parts], dim=0).amin(dim=0)

    return sdf


def stripes(p: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 3"]:
    """Smooth procedural albedo: hue waves of ~1.3 units' period; each channel in [0.4, 0.9], their mean ~0.65."""
    phase = p.new_tensor([0.0, 2.1, 4.2])
    return 0.65 + 0.25 * (4.0 * p + 3.0 * p[..., [1, 2, 0]] + phase).sin()


@dataclass(frozen=True)
class Shape:
    """An analytic shape: exact signed distance (positive outside) and a view-independent albedo at world points."""

    sdf: SDF
    """Exact signed distance at world points, positive outside."""
    albedo: Albedo = stripes
    """Base colour at world points (the scene generator shades it)."""


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
"""The presets, by name: a ball, a rounded box, a torus, and a ball and a box standing in a thin torus."""


def get_shape(name: str) -> Shape:
    """The preset called ``name``."""
    if name not in SHAPES:
        raise SceneError(f"unknown shape '{name}'; choose one of {', '.join(SHAPES)}")
    return SHAPES[name]


# ----- cameras ----------------------------------------------------------------------------------------------------
def look_at(eye: Float[Tensor, "3"]) -> Float[Tensor, "4 4"]:
    """Camera-to-world matrix (Blender/OpenGL: the camera looks down its -z, y up) of a camera aimed at the origin.

    World z is up; ``eye`` must not be on the z axis.
    """
    import torch

    forward = -eye / eye.norm()
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0])), dim=0)
    up = torch.linalg.cross(right, forward)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, eye
    return c2w


def camera_positions(count: int, generator: torch.Generator, spiral: bool) -> Float[Tensor, "count 3"]:
    """Points on the camera sphere from a little below the equator to near the pole, uniform by area.

    ``spiral``: a Fibonacci spiral (evenly spread, for training) with a random azimuth; otherwise random points.
    """
    import torch

    if spiral:
        index = torch.arange(count, dtype=torch.float32) + 0.5
        z = -0.25 + 1.15 * index / count
        azimuth = index * math.pi * (3.0 - math.sqrt(5.0)) + 2 * math.pi * torch.rand(1, generator=generator)
    else:
        z = -0.25 + 1.15 * torch.rand(count, generator=generator)
        azimuth = 2 * math.pi * torch.rand(count, generator=generator)
    ring = (1 - z**2).sqrt()
    return CAMERA_RADIUS * torch.stack([ring * azimuth.cos(), ring * azimuth.sin(), z], dim=-1)


def scene_cameras(num_train: int, num_val: int, num_test: int, seed: int) -> Dict[str, Float[Tensor, "n 4 4"]]:
    """Camera-to-world matrices of each split: a spiral for train, random views (distinct from it) for val and test."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    eyes = {
        "train": camera_positions(num_train, generator, spiral=True),
        "val": camera_positions(num_val, generator, spiral=False),
        "test": camera_positions(num_test, generator, spiral=False),
    }
    return {split: torch.stack([look_at(eye) for eye in split_eyes]) for split, split_eyes in eyes.items()}


# ----- rendering --------------------------------------------------------------------------------------------------
def sphere_trace(
    sdf: SDF,
    origins: Float[Tensor, "rays 3"],
    directions: Float[Tensor, "rays 3"],
    steps: int = 96,
    epsilon: float = 1e-4,
) -> Tuple[Bool[Tensor, "rays"], Float[Tensor, "rays 3"]]:
    """March unit-length rays by the SDF until it falls below ``epsilon``; which rays hit, and where (on misses, the
    points are meaningless).

    Rays start and stop where they enter and leave the sphere around the scene box, and rays that have hit or left
    are dropped from the batch, so most of the budget of ``steps`` goes to the few rays that graze the surface.
    """
    import torch

    bound = SCENE_BOX * math.sqrt(3.0)
    middle = -(origins * directions).sum(dim=-1)
    half_chord = (middle**2 - (origins**2).sum(dim=-1) + bound**2).clamp_min(0).sqrt()
    t = (middle - half_chord).clamp_min(0)
    hit = torch.zeros_like(t, dtype=torch.bool)
    index = (half_chord > 0).nonzero().squeeze(-1)
    o, d, t_marching, far = origins[index], directions[index], t[index], (middle + half_chord)[index]
    for _ in range(steps):
        distance = sdf(o + d * t_marching[:, None])
        t_marching = t_marching + distance
        converged = distance < epsilon
        hit[index[converged]] = True
        t[index[converged]] = t_marching[converged]
        keep = ~converged & (t_marching < far)
        if not keep.any():
            break
        index, o, d, t_marching, far = index[keep], o[keep], d[keep], t_marching[keep], far[keep]
    return hit, origins + directions * t[:, None]


def shading_normals(sdf: SDF, points: Float[Tensor, "*batch 3"], step: float = 1e-3) -> Float[Tensor, "*batch 3"]:
    """Unit normals from central differences of the SDF."""
    import torch

    gradient = torch.stack([sdf(points + offset) - sdf(points - offset) for offset in torch.eye(3) * step], dim=-1)
    return torch.nn.functional.normalize(gradient, dim=-1)


def shade(shape: Shape, points: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 3"]:
    """View-independent colour of surface points: albedo times ambient plus Lambertian light."""
    lambert = (shading_normals(shape.sdf, points) @ points.new_tensor(LIGHT)).clamp_min(0)
    return (shape.albedo(points) * (AMBIENT + (1 - AMBIENT) * lambert[..., None])).clamp(0, 1)


def render_views(
    shape: Shape, c2ws: Float[Tensor, "views 4 4"], size: int, supersample: int = 2, max_rays: int = 1 << 20
) -> Float[Tensor, "views size size 4"]:
    """Sphere-trace square views with ``supersample^2`` rays per pixel: RGB (not premultiplied) and coverage alpha.

    Pixels follow nerfstudio's pinhole model for Blender data: centres at (i + 0.5), principal point at the image
    centre, focal length from :data:`CAMERA_ANGLE_X`. Background pixels are (0, 0, 0, 0). Views are traced together,
    at most ``max_rays`` rays at a time.
    """
    import torch

    focal = 0.5 * size / math.tan(0.5 * CAMERA_ANGLE_X)
    offsets = (torch.arange(supersample) + 0.5) / supersample
    pixel = torch.arange(size, dtype=torch.float32)
    v = (pixel[:, None, None, None] + offsets[None, None, :, None]).expand(size, size, supersample, supersample)
    u = (pixel[None, :, None, None] + offsets[None, None, None, :]).expand(size, size, supersample, supersample)
    camera_dirs = torch.stack([(u - size / 2) / focal, -(v - size / 2) / focal, -torch.ones_like(u)], dim=-1)
    camera_dirs = camera_dirs.reshape(-1, 3)
    images = []
    for batch in c2ws.split(max(1, max_rays // len(camera_dirs))):
        directions = torch.nn.functional.normalize(camera_dirs @ batch[:, :3, :3].transpose(1, 2), dim=-1)
        origins = batch[:, None, :3, 3].expand_as(directions)
        hit, points = sphere_trace(shape.sdf, origins.reshape(-1, 3), directions.reshape(-1, 3))
        rgb = torch.zeros_like(points)
        rgb[hit] = shade(shape, points[hit])
        coverage = hit.float().reshape(len(batch), size, size, -1).mean(dim=-1)
        rgb = rgb.reshape(len(batch), size, size, -1, 3).mean(dim=-2) / coverage[..., None].clamp_min(1e-8)
        images.append(torch.cat([rgb, coverage[..., None]], dim=-1))
    return torch.cat(images)


def render_view(
    shape: Shape, c2w: Float[Tensor, "4 4"], size: int, supersample: int = 2
) -> Float[Tensor, "size size 4"]:
    """One view of :func:`render_views`."""
    return render_views(shape, c2w[None], size, supersample)[0]


# ----- ground truth -----------------------------------------------------------------------------------------------
def sdf_grid(shape: Shape, resolution: int) -> Tuple[np.ndarray, np.ndarray, float]:
    """The exact SDF on ``resolution^3`` nodes spanning the scene box, indexed [x, y, z]; node [0, 0, 0]'s position
    and the spacing."""
    import torch

    spacing = 2 * SCENE_BOX / (resolution - 1)
    axis = (-SCENE_BOX + spacing * torch.arange(resolution, dtype=torch.float64)).float()
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    values = torch.cat([shape.sdf(chunk) for chunk in points.split(1 << 18)])
    return values.reshape((resolution,) * 3).numpy(), np.full(3, -SCENE_BOX), spacing


def ground_truth_mesh(shape: Shape, resolution: int) -> trimesh.Trimesh:
    """Marching cubes on the exact SDF over the scene box, in world coordinates, outward-facing and watertight."""
    import trimesh
    from skimage.measure import marching_cubes

    values, origin, spacing = sdf_grid(shape, resolution)
    values[np.abs(values) < 1e-6] = 1e-6  # nodes exactly on the surface make degenerate, non-manifold triangles
    vertices, faces, _, _ = marching_cubes(values, level=0.0, spacing=(spacing,) * 3, gradient_direction="descent")
    return trimesh.Trimesh(vertices + origin, faces, process=True)


# ----- writing a scene --------------------------------------------------------------------------------------------
SPLITS = ("train", "val", "test")
SCENE_ENTRIES = frozenset(
    ["mesh.ply", "sdf.npz", "scene.json", *SPLITS, *(f"transforms_{split}.json" for split in SPLITS)]
)
"""What a scene's folder holds: all that `--overwrite` may replace."""


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
    """Write a Blender-format scene of the preset ``shape`` to ``output_dir``, with ``mesh.ply``, ``sdf.npz`` and
    ``scene.json`` beside the views; returns ``output_dir``.

    The scene is written into a hidden sibling folder and renamed into place at the end, so a failure leaves nothing
    behind. An existing non-empty folder is refused (:class:`FileExistsError`) unless ``overwrite``, and even then
    unless it holds nothing but what rs-scene writes (see :func:`foreign_entries`): the whole folder is replaced.
    A symbolic link is followed: the folder it points to is written, and the link kept.
    """
    from rs_nerfstudio.outputs import unwritable_reason

    output_dir = Path(output_dir)
    try:
        target = output_dir.resolve()
    except RuntimeError:  # Python 3.11's Path.resolve on a loop of symbolic links
        raise SceneError(f"{output_dir} is a loop of symbolic links") from None
    solid = get_shape(shape)
    for name, value, least in (
        ("image_size", image_size, 1),
        ("num_train", num_train, 1),
        ("num_val", num_val, 1),
        ("num_test", num_test, 1),
        ("mesh_resolution", mesh_resolution, 8),
        ("sdf_resolution", sdf_resolution, 2),
    ):
        if value < least:
            raise SceneError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    if not 0 <= seed < 2**63:
        raise SceneError(f"--seed must be in [0, 2^63), got {seed}")
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; choose another folder or pass --overwrite")
    foreign = foreign_entries(target) if target.is_dir() else []
    if foreign:  # and overwrite: the whole folder would go, with what the user keeps there
        listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise FileExistsError(f"{output_dir} holds {listed}, which rs-scene did not write; --overwrite replaces a "
                              "scene's folder only")
    reason = unwritable_reason(target)  # its folder, where the scene is staged
    if reason:
        raise SceneError(reason)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir()  # with the user's umask, unlike tempfile.mkdtemp
    try:
        cameras = scene_cameras(num_train, num_val, num_test, seed)
        for split, c2ws in cameras.items():
            write_split(staging, split, solid, c2ws, image_size)
        ground_truth_mesh(solid, mesh_resolution).export(staging / "mesh.ply")
        values, origin, spacing = sdf_grid(solid, sdf_resolution)
        np.savez_compressed(
            staging / "sdf.npz", sdf=values.astype(np.float32), origin=origin, voxel_size=spacing,
            sign_convention="positive outside", shape=shape,
        )  # fmt: skip
        parameters = {
            "shape": shape, "image_size": image_size, "num_train": num_train, "num_val": num_val,
            "num_test": num_test, "seed": seed, "mesh_resolution": mesh_resolution, "sdf_resolution": sdf_resolution,
            "camera_radius": CAMERA_RADIUS, "camera_angle_x": CAMERA_ANGLE_X,
        }  # fmt: skip
        (staging / "scene.json").write_text(json.dumps(parameters, indent=2), encoding="utf8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish(staging, target)
    return output_dir


def foreign_entries(folder: Path) -> List[str]:
    """What ``folder`` holds that rs-scene does not write (a scene's files, and ``r_<i>.png`` in its splits' folders),
    as paths relative to it: what ``--overwrite`` would delete of the user's."""
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name not in SCENE_ENTRIES or entry.is_symlink() or entry.is_dir() != (entry.name in SPLITS):
            foreign.append(entry.name)
        elif entry.is_dir():
            foreign += [
                f"{entry.name}/{image.name}"
                for image in sorted(entry.iterdir())
                if not (re.fullmatch(r"r_\d+\.png", image.name) and image.is_file() and not image.is_symlink())
            ]
    return foreign


def publish(staging: Path, target: Path) -> None:
    """Rename a finished folder to ``target``; an existing ``target`` is set aside first and deleted only after."""
    if not target.exists():
        staging.rename(target)
        return
    old = staging.with_name(staging.name + ".old")
    target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        old.rename(target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old)


def write_split(folder: Path, split: str, shape: Shape, c2ws: Float[Tensor, "n 4 4"], image_size: int) -> None:
    """Render one split's views as 8-bit RGBA PNGs ``split/r_<i>.png`` and write ``transforms_<split>.json``."""
    import torch

    from PIL import Image

    (folder / split).mkdir()
    images = (render_views(shape, c2ws, image_size).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    for index, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / split / f"r_{index}.png")
    frames = [
        {"file_path": f"./{split}/r_{index}", "rotation": 0.0, "transform_matrix": c2w.tolist()}
        for index, c2w in enumerate(c2ws)
    ]
    meta = {"camera_angle_x": CAMERA_ANGLE_X, "frames": frames}
    (folder / f"transforms_{split}.json").write_text(json.dumps(meta, indent=2), encoding="utf8")


@dataclass
class SceneConfig:
    """Write a Blender-format scene of analytic shapes, with its exact SDF and ground-truth mesh beside it."""

    output_dir: Path = Path("scenes/union")
    """Folder to create; it must not exist or be empty (unless --overwrite)."""
    shape: str = "union"
    """Preset: sphere, box (rounded), torus or union (a ball and a rounded box standing in a torus)."""
    image_size: int = 100
    """Width and height of each view, in pixels."""
    num_train: int = 60
    """Training views (a Fibonacci spiral over the upper sphere and a little below)."""
    num_val: int = 5
    """Validation views (random, seeded)."""
    num_test: int = 5
    """Test views (random, seeded)."""
    seed: int = 0
    """Seed of the cameras; the same seed gives the same scene."""
    mesh_resolution: int = 256
    """Marching-cubes nodes per axis for the ground-truth mesh.ply (finer than the Python API's 128: rs-eval-geometry
    scores meshes against it)."""
    sdf_resolution: int = 128
    """Nodes per axis of the exact-SDF grid in sdf.npz."""
    overwrite: bool = False
    """Replace a scene that rs-scene wrote there before (a folder holding anything else is refused)."""


def entrypoint() -> None:
    """Command-line entry point: bad input ends in one line of error and exit status 1, not a traceback."""
    import shlex

    from rs_nerfstudio.cli import run_command

    config = tyro.cli(SceneConfig)

    def work() -> None:
        try:
            path = make_scene(**asdict(config))
        except SceneError as error:  # an OSError (a folder in the way, a full disk) is run_command's to report
            raise SystemExit(f"rs-scene: error: {error}") from None
        views = f"{config.num_train} train / {config.num_val} val / {config.num_test} test views"
        print(f"rs-scene: wrote '{config.shape}' ({views}, {config.image_size} px) to {path}; "
              f"train on it with: ns-train rs-sdf --data {shlex.quote(str(path))}")  # fmt: skip

    run_command("rs-scene", work, "--image-size, --num-train/val/test, --mesh-resolution or --sdf-resolution")


if __name__ == "__main__":
    entrypoint()
