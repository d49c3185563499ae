"""rs-scene: exact SDFs, Blender-format output that nerfstudio reads, renders that match the geometry."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from rs_nerfstudio import scenes
from tests.conftest import command


def test_closed_form_sdfs() -> None:
    torch.manual_seed(0)
    p = torch.rand(2000, 3) * 3 - 1.5
    torch.testing.assert_close(scenes.sphere(0.8)(p), p.norm(dim=-1) - 0.8)
    ring = torch.stack([p[:, :2].norm(dim=-1) - 0.75, p[:, 2]], -1).norm(dim=-1) - 0.25
    torch.testing.assert_close(scenes.torus(0.75, 0.25)(p), ring)
    box = scenes.rounded_box((0.5, 0.4, 0.3), 0.0)
    assert float(box(torch.tensor([[1.5, 0.0, 0.0]]))) == pytest.approx(1.0)
    assert float(box(torch.tensor([[0.0, 0.0, 0.0]]))) == pytest.approx(-0.3)
    assert float(box(torch.tensor([[1.5, 1.4, 0.0]]))) == pytest.approx(math.sqrt(2.0))


@pytest.mark.parametrize("name", list(scenes.SHAPES))
def test_sdf_has_unit_gradient_outside(name: str) -> None:
    torch.manual_seed(1)
    shape = scenes.get_shape(name)
    p = torch.rand(4000, 3) * 2.4 - 1.2
    p = p[shape.sdf(p) > 0.05]
    gradient = torch.stack([shape.sdf(p + o) - shape.sdf(p - o) for o in torch.eye(3) * 1e-3], -1) / 2e-3
    # Eikonal outside; the union's minimum has kinks where two parts are equally near, so allow a few points off.
    assert ((gradient.norm(dim=-1) - 1).abs() < 2e-2).float().mean() > 0.98


def test_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown shape 'cube'"):
        scenes.get_shape("cube")


def test_scene_loads_through_nerfstudio(tiny_scene: Path) -> None:
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    parser = BlenderDataParserConfig(data=tiny_scene).setup()
    for split, count in (("train", 8), ("val", 2), ("test", 2)):
        outputs = parser.get_dataparser_outputs(split)
        assert len(outputs.image_filenames) == count
        assert torch.isfinite(outputs.cameras.camera_to_worlds).all()
    centres = outputs.cameras.camera_to_worlds[:, :, 3]
    torch.testing.assert_close(centres.norm(dim=-1), torch.full((2,), scenes.CAMERA_RADIUS))


def test_sphere_silhouette_matches_projection() -> None:
    """A ball of radius r seen from distance d covers a disc of angular radius asin(r / d)."""
    eye = torch.tensor([0.0, -scenes.CAMERA_RADIUS, 0.0])
    rgba = scenes.render_view(scenes.get_shape("sphere"), scenes.look_at(eye), size=64)
    focal = 32 / math.tan(scenes.CAMERA_ANGLE_X / 2)
    radius_px = focal * math.tan(math.asin(0.8 / scenes.CAMERA_RADIUS))
    pixel = torch.arange(64) + 0.5 - 32
    expected = (pixel[:, None] ** 2 + pixel[None, :] ** 2) < radius_px**2
    assert ((rgba[..., 3] > 0.5) != expected).float().mean() < 0.02
    assert rgba[..., :3][expected].min() > 0.05  # shaded, not black


def test_ground_truth_files(tiny_scene: Path) -> None:
    shape = scenes.get_shape("union")
    mesh = trimesh.load(tiny_scene / "mesh.ply")
    assert mesh.is_watertight and mesh.volume > 0
    on_surface = shape.sdf(torch.tensor(mesh.vertices, dtype=torch.float32))
    assert float(on_surface.abs().max()) < 0.5 * 3.0 / 47  # within half a marching-cubes cell
    data = np.load(tiny_scene / "sdf.npz")
    assert str(data["sign_convention"]) == "positive outside"
    index = np.array([[0, 0, 0], [5, 17, 9], [23, 23, 23]])
    points = data["origin"] + index * data["voxel_size"]
    expected = shape.sdf(torch.tensor(points, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(data["sdf"][tuple(index.T)], expected, atol=1e-5)
    assert json.loads((tiny_scene / "scene.json").read_text())["shape"] == "union"


def test_existing_folder_is_not_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        scenes.make_scene(target, image_size=8, num_train=1, num_val=1, num_test=1, mesh_resolution=8, sdf_resolution=8)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    result = subprocess.run(
        [command("rs-scene"), "--output-dir", str(target), "--image-size", "8"], capture_output=True, text=True
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("rs-scene: error:")
    assert not list(tmp_path.glob(".mine.*")), "a staging folder was left behind"
