"""rs-scene: exact SDFs, Blender-format output that nerfstudio reads, renders that match the geometry."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from rs_nerfstudio import scenes
from tests.conftest import command

TINY = dict(image_size=8, num_train=1, num_val=1, num_test=1, mesh_resolution=8, sdf_resolution=8)
"""The smallest scene make_scene accepts: for tests of what it refuses and replaces."""


def fibonacci_sphere(count: int) -> np.ndarray:
    index = np.arange(count) + 0.5
    z = 1 - 2 * index / count
    azimuth = index * math.pi * (3 - math.sqrt(5))
    ring = np.sqrt(1 - z**2)
    return np.stack([ring * np.cos(azimuth), ring * np.sin(azimuth), z], axis=-1)


def box_surface(half: np.ndarray, step: float) -> np.ndarray:
    """Points on the faces of the box [-half, half], at most ``step`` apart."""
    faces = []
    for axis in range(3):
        u, v = [a for a in range(3) if a != axis]
        gu, gv = np.meshgrid(*(np.linspace(-half[a], half[a], int(2 * half[a] / step) + 2) for a in (u, v)))
        for sign in (-1, 1):
            face = np.zeros((gu.size, 3))
            face[:, u], face[:, v], face[:, axis] = gu.ravel(), gv.ravel(), sign * half[axis]
            faces.append(face)
    return np.concatenate(faces)


def torus_surface(major: float, minor: float, count: int) -> np.ndarray:
    a, b = np.meshgrid(np.linspace(0, 2 * np.pi, 3 * count), np.linspace(0, 2 * np.pi, count))
    ring = major + minor * np.cos(b)
    return np.stack([ring * np.cos(a), ring * np.sin(a), minor * np.sin(b)], axis=-1).reshape(-1, 3)


# Each primitive: its SDF, points densely on its surface (under 0.01 apart), and an inside test that uses no distance.
PRIMITIVES = {
    "sphere": (scenes.sphere(0.8), 0.8 * fibonacci_sphere(100_000), lambda p: (p**2).sum(-1) < 0.64),
    "box": (
        scenes.rounded_box((0.5, 0.4, 0.3)),
        box_surface(np.array([0.5, 0.4, 0.3]), 0.005),
        lambda p: (np.abs(p) < [0.5, 0.4, 0.3]).all(-1),
    ),
    "torus": (
        scenes.torus(0.75, 0.25),
        torus_surface(0.75, 0.25, 200),
        lambda p: (np.hypot(p[:, 0], p[:, 1]) - 0.75) ** 2 + p[:, 2] ** 2 < 0.0625,
    ),
}


@pytest.mark.parametrize("name", list(PRIMITIVES))
def test_primitive_sdf_is_the_signed_distance_to_its_surface(name: str) -> None:
    sdf, surface, inside = PRIMITIVES[name]
    points = np.random.default_rng(0).uniform(-1.2, 1.2, (500, 3))
    brute_force = np.where(inside(points), -1, 1) * cKDTree(surface).query(points)[0]
    np.testing.assert_allclose(sdf(torch.tensor(points, dtype=torch.float32)).numpy(), brute_force, atol=8e-3)


def test_rounded_box_is_the_offset_of_a_smaller_box() -> None:
    """Rounding a box by r is the r-offset of the box shrunk by r, inside and out; rounding 0 is the sharp box."""
    points = torch.rand(2000, 3, generator=torch.Generator().manual_seed(1)) * 2.4 - 1.2
    rounded = scenes.rounded_box((0.6, 0.5, 0.7), 0.1, centre=(0.1, 0.0, -0.2))
    inner = scenes.rounded_box((0.5, 0.4, 0.6), 0.0, centre=(0.1, 0.0, -0.2))
    torch.testing.assert_close(rounded(points), inner(points) - 0.1)
    corner = torch.tensor([[0.7, 0.5, 0.5]])  # a corner of the sharp box is outside the rounded one
    assert float(rounded(corner)) == pytest.approx((math.sqrt(3) - 1) * 0.1)


def test_union_is_exact_outside_and_a_bound_inside() -> None:
    a, b = ((-0.3, 0.0, 0.0), 0.5), ((0.3, 0.1, 0.0), 0.4)
    sdf = scenes.union(scenes.sphere(a[1], a[0]), scenes.sphere(b[1], b[0]))
    surface = np.concatenate([np.array(c) + r * fibonacci_sphere(100_000) for c, r in (a, b)])
    surface = surface[sdf(torch.tensor(surface, dtype=torch.float32)).numpy() > -1e-6]  # drop the parts' inner caps
    points = np.random.default_rng(2).uniform(-1.2, 1.2, (2000, 3))
    values = sdf(torch.tensor(points, dtype=torch.float32)).numpy()
    distance = cKDTree(surface).query(points)[0]
    outside = values > 0
    assert 0.01 < (~outside).mean() < 0.5
    np.testing.assert_allclose(values[outside], distance[outside], atol=6e-3)
    assert (-values[~outside] <= distance[~outside] + 6e-3).all()


@pytest.mark.parametrize("name", list(scenes.SHAPES))
def test_preset_sdf_has_unit_gradient(name: str) -> None:
    shape = scenes.get_shape(name)
    p = torch.rand(4000, 3, generator=torch.Generator().manual_seed(3)) * 2.4 - 1.2
    if name == "union":
        p = p[shape.sdf(p) > 0.01]  # the minimum is exact only outside
    gradient = torch.stack([shape.sdf(p + o) - shape.sdf(p - o) for o in torch.eye(3) * 1e-3], -1) / 2e-3
    # Kinks (the medial axis inside, points equally near two parts of the union) put a few points off.
    assert ((gradient.norm(dim=-1) - 1).abs() < 2e-2).float().mean() > 0.97


@pytest.mark.parametrize("name", list(scenes.SHAPES))
def test_presets_fit_the_scene_box_and_are_large(name: str) -> None:
    axis = torch.linspace(-1.5, 1.5, 61)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    solid = grid[scenes.get_shape(name).sdf(grid) < 0]
    assert solid.abs().max() < 1.2
    assert (solid.amax(0) - solid.amin(0)).max() > 1.0


def test_albedo_is_bright_and_varies() -> None:
    points = torch.rand(5000, 3, generator=torch.Generator().manual_seed(4)) * 2.4 - 1.2
    colour = scenes.get_shape("union").albedo(points)
    assert colour.shape == (5000, 3) and colour.min() >= 0.3 and colour.max() <= 1.0
    assert (colour.std(dim=0) > 0.1).all()


def test_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown shape 'cube'; choose one of sphere, box, torus, union"):
        scenes.get_shape("cube")


def test_cameras_look_at_the_origin_from_the_camera_sphere() -> None:
    cameras = scenes.scene_cameras(20, 4, 3, seed=5)
    assert {k: len(v) for k, v in cameras.items()} == {"train": 20, "val": 4, "test": 3}
    for c2w in cameras.values():
        rotation, eye = c2w[:, :3, :3], c2w[:, :3, 3]
        torch.testing.assert_close(rotation.transpose(1, 2) @ rotation, torch.eye(3).expand(len(c2w), 3, 3))
        torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(len(c2w)))
        torch.testing.assert_close(eye.norm(dim=-1), torch.full((len(c2w),), scenes.CAMERA_RADIUS))
        torch.testing.assert_close(rotation[:, :, 2], eye / scenes.CAMERA_RADIUS)  # looks down -z, at the origin
        assert (rotation[:, 2, 1] > 0).all()  # image up is world up (z)
        assert (c2w[:, 3] == torch.tensor([0.0, 0.0, 0.0, 1.0])).all()
    heights = cameras["train"][:, 2, 3] / scenes.CAMERA_RADIUS
    assert heights.min() < 0 < 0.8 < heights.max()  # the upper hemisphere and a little below
    train_eyes = cameras["train"][:, :3, 3]
    for split in ("val", "test"):
        assert torch.cdist(cameras[split][:, :3, 3], train_eyes).min() > 1e-2
    same, other = scenes.scene_cameras(20, 4, 3, seed=5), scenes.scene_cameras(20, 4, 3, seed=6)
    assert all(torch.equal(cameras[k], same[k]) for k in cameras)
    assert not torch.allclose(cameras["val"], other["val"]) and not torch.allclose(cameras["train"], other["train"])


def test_scene_loads_through_nerfstudio(tiny_scene: Path) -> None:
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    parser = BlenderDataParserConfig(data=tiny_scene).setup()
    for split, count in (("train", 8), ("val", 2), ("test", 2)):
        outputs = parser.get_dataparser_outputs(split)
        assert len(outputs.image_filenames) == count and all(f.is_file() for f in outputs.image_filenames)
        assert len(outputs.cameras) == count
        assert (outputs.cameras.width == 32).all() and (outputs.cameras.height == 32).all()
        centres = outputs.cameras.camera_to_worlds[:, :, 3]
        torch.testing.assert_close(centres.norm(dim=-1), torch.full((count,), scenes.CAMERA_RADIUS))
    meta = json.loads((tiny_scene / "transforms_train.json").read_text())
    assert meta["camera_angle_x"] == pytest.approx(0.6911, abs=1e-4)
    assert meta["frames"][3]["file_path"] == "./train/r_3" and meta["frames"][3]["rotation"] == 0.0


def test_images_are_unpremultiplied_rgba_on_transparent(tiny_scene: Path) -> None:
    image = imageio.imread(tiny_scene / "train" / "r_0.png")
    assert image.dtype == np.uint8 and image.shape == (32, 32, 4)
    alpha = image[..., 3]
    assert (alpha == 0).mean() > 0.3 and (alpha == 255).mean() > 0.1
    assert (image[alpha == 0] == 0).all()
    assert image[alpha == 255][:, :3].mean() > 80  # lit, not dark


def test_renders_agree_with_nerfstudio_rays(tiny_scene: Path) -> None:
    """Tracing the rays nerfstudio generates from the saved poses finds the silhouette that the PNG shows."""
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    cameras = BlenderDataParserConfig(data=tiny_scene).setup().get_dataparser_outputs("test").cameras
    for index in range(len(cameras)):
        rays = cameras.generate_rays(camera_indices=index)
        hit, _ = scenes.sphere_trace(
            scenes.get_shape("union").sdf, rays.origins.reshape(-1, 3), rays.directions.reshape(-1, 3)
        )
        alpha = imageio.imread(tiny_scene / "test" / f"r_{index}.png")[..., 3].reshape(-1)
        assert hit.float().mean() > 0.1
        assert (hit.numpy() != (alpha > 127)).mean() < 0.03


def test_sphere_silhouette_matches_projection() -> None:
    """A ball of radius r seen from distance d covers a disc of angular radius asin(r / d)."""
    eye = torch.tensor([0.0, -scenes.CAMERA_RADIUS, 0.0])
    rgba = scenes.render_view(scenes.get_shape("sphere"), scenes.look_at(eye), size=64, supersample=3)
    focal = 32 / math.tan(scenes.CAMERA_ANGLE_X / 2)
    radius_px = focal * math.tan(math.asin(0.8 / scenes.CAMERA_RADIUS))
    pixel = torch.arange(64) + 0.5 - 32
    expected = (pixel[:, None] ** 2 + pixel[None, :] ** 2) < radius_px**2
    alpha, rgb = rgba[..., 3], rgba[..., :3]
    assert ((alpha > 0.5) != expected).float().mean() < 0.02
    # Anti-aliased: coverage adds up to the disc's area, and the rim is partly covered.
    assert float(alpha.sum()) == pytest.approx(math.pi * radius_px**2, rel=0.02)
    rim = (alpha > 0) & (alpha < 1)
    assert rim.sum() > 2 * math.pi * radius_px * 0.5
    # Not premultiplied: thinly covered pixels keep the surface's colour instead of fading to black.
    thin = (alpha > 0) & (alpha < 0.4)
    assert (rgb[thin].amax(dim=-1) > 0.2).all() and rgb[expected].amin(dim=-1).min() > 0.1


def test_ground_truth_files(tiny_scene: Path) -> None:
    shape = scenes.get_shape("union")
    mesh = trimesh.load(tiny_scene / "mesh.ply")
    assert mesh.is_watertight and mesh.volume > 0
    on_surface = shape.sdf(torch.tensor(mesh.vertices, dtype=torch.float32))
    assert float(on_surface.abs().max()) < 0.5 * 3.0 / 47  # within half a marching-cubes cell
    centres = torch.tensor(mesh.triangles_center, dtype=torch.float32)
    outward = (scenes.shading_normals(shape.sdf, centres).numpy() * mesh.face_normals).sum(-1)
    assert np.median(outward) > 0.95
    with np.load(tiny_scene / "sdf.npz") as data:  # numpy alone, no pickles
        assert data["sdf"].dtype == np.float32 and data["sdf"].shape == (24, 24, 24)
        assert str(data["sign_convention"]) == "positive outside" and str(data["shape"]) == "union"
        index = np.array([[0, 0, 0], [5, 17, 9], [9, 11, 14], [23, 23, 23]])
        points = data["origin"] + index * data["voxel_size"]
        expected = shape.sdf(torch.tensor(points, dtype=torch.float32)).numpy()
        np.testing.assert_allclose(data["sdf"][tuple(index.T)], expected, atol=1e-5)
        assert data["sdf"][9, 11, 14] < 0 < data["sdf"][0, 0, 0]
    parameters = json.loads((tiny_scene / "scene.json").read_text())
    assert parameters["shape"] == "union" and parameters["num_train"] == 8 and parameters["seed"] == 0


def test_existing_folder_is_not_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="mine"):
        scenes.make_scene(target, **TINY)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    result = subprocess.run(
        [command("rs-scene"), "--output-dir", str(target), "--image-size", "8"], capture_output=True, text=True
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"rs-scene: error: {target} exists and is not empty; "
                                                  "choose another folder or pass --overwrite"]  # fmt: skip
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    with pytest.raises(FileExistsError, match="notes.txt, which rs-scene did not write"):
        scenes.make_scene(target, overwrite=True, **TINY)  # --overwrite replaces a scene, not a folder of the user's
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    (target / "notes.txt").unlink()
    scenes.make_scene(target, **TINY)
    first = (target / "transforms_train.json").read_text()
    scenes.make_scene(target, overwrite=True, **{**TINY, "seed": 1})
    assert (target / "transforms_train.json").read_text() != first  # the scene replaced
    assert [p.name for p in tmp_path.iterdir()] == ["mine"], "a staging folder was left behind"


def test_overwrite_keeps_what_the_user_put_among_a_scenes_files(tmp_path: Path) -> None:
    """--overwrite replaces the folder whole, so it looks inside the splits' folders too."""
    target = tmp_path / "mine"
    scenes.make_scene(target, **TINY)
    (target / "train" / "notes.txt").write_text("keep me")
    (target / "test" / "r_0.png.bak").write_bytes(b"an old view")
    with pytest.raises(FileExistsError, match=r"holds test/r_0.png.bak, train/notes.txt, which rs-scene did not write"):
        scenes.make_scene(target, overwrite=True, **TINY)
    assert (target / "train" / "notes.txt").read_text() == "keep me"


def test_a_link_to_a_scene_is_followed_and_kept(tmp_path: Path) -> None:
    real, link = tmp_path / "real", tmp_path / "link"
    scenes.make_scene(real, **TINY)
    link.symlink_to(real)
    first = (real / "transforms_train.json").read_text()
    scenes.make_scene(link, overwrite=True, **{**TINY, "seed": 1})
    assert link.is_symlink() and (real / "transforms_train.json").read_text() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(scenes.SceneError, match="loop is a loop of symbolic links"):
        scenes.make_scene(tmp_path / "loop", **TINY)


def test_a_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(scenes, "ground_truth_mesh", broken)  # fails after every view is written
    with pytest.raises(RuntimeError, match="disk full"):
        scenes.make_scene(tmp_path / "scene", **TINY)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--shape", "cube"], "unknown shape 'cube'"),
        (["--image-size", "0"], "--image-size must be at least 1, got 0"),
        (["--num-val", "-1"], "--num-val must be at least 1, got -1"),
        (["--seed", "99999999999999999999"], "--seed must be in [0, 2^63)"),
        (["--output-dir", "{tmp}/a-file/scene"], "a-file is a file, not a folder"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(
    arguments: list, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a-file").write_text("mine")
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    monkeypatch.setattr(sys, "argv", ["rs-scene", "--output-dir", str(tmp_path / "scene"), *arguments])
    with pytest.raises(SystemExit) as exit_info:
        scenes.entrypoint()
    text = str(exit_info.value.code)
    assert text.startswith("rs-scene: error: ") and message in text and "\n" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


def test_cli_makes_a_scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "torus"
    flags = ["--shape", "torus", "--image-size", "8", "--num-train", "3", "--num-val", "1", "--num-test", "1"]
    flags += ["--mesh-resolution", "16", "--sdf-resolution", "8"]
    monkeypatch.setattr(sys, "argv", ["rs-scene", "--output-dir", str(target), *flags])
    scenes.entrypoint()
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert str(target) in line and "3 train" in line and f"ns-train rs-sdf --data {target}" in line
    assert len(list((target / "train").glob("r_*.png"))) == 3
    assert json.loads((target / "scene.json").read_text())["shape"] == "torus"
    (reference := tmp_path / "reference").mkdir()
    assert target.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777  # the user's umask, not 0o700
