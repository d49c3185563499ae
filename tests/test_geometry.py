"""rs-eval-geometry: metrics that match known answers, and clear errors for meshes it cannot use."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import trimesh
from scipy.stats import norm

from rs_nerfstudio.geometry import load_mesh, mesh_metrics, weak_sdf_metrics
from rs_nerfstudio.validation import InputError
from tests.conftest import command


@pytest.fixture(scope="module")
def unit_sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=5, radius=1.0)


def test_concentric_spheres(unit_sphere) -> None:
    larger = trimesh.creation.icosphere(subdivisions=5, radius=1.02)
    metrics = mesh_metrics(larger, unit_sphere, num_points=50_000)
    assert metrics["bbox_diagonal"] == pytest.approx(2 * math.sqrt(3), rel=1e-3)
    assert metrics["chamfer_l1"] == pytest.approx(0.02, abs=3e-3)  # 0.02 between the surfaces, plus sampling
    assert metrics["f_score@0.5%"] < 0.01  # 0.02 > 0.5% of 3.46
    assert metrics["f_score@1.0%"] > 0.99  # 0.02 < 1% of 3.46
    assert metrics["normal_consistency"] > 0.99


def test_identical_meshes(unit_sphere) -> None:
    metrics = mesh_metrics(unit_sphere, unit_sphere, num_points=50_000)
    assert metrics["chamfer_l1"] < 0.01 and metrics["f_score@0.5%"] > 0.95


def test_unreadable_and_open_meshes(tmp_path: Path, unit_sphere) -> None:
    broken = tmp_path / "broken.ply"
    broken.write_text("ply\nthis is not a mesh\n")
    with pytest.raises(InputError, match="broken.ply"):
        load_mesh(broken)
    with pytest.raises(InputError, match="not found"):
        load_mesh(tmp_path / "absent.ply")
    open_mesh = trimesh.Trimesh(unit_sphere.vertices, unit_sphere.faces[10:], process=False)
    with pytest.raises(InputError, match="not watertight"):
        weak_sdf_metrics(model=None, ground_truth=open_mesh)


class AnalyticField:
    """A stand-in for a run's field whose weak SDF is ``scale`` times the unit sphere's signed distance."""

    def __init__(self, scale: float) -> None:
        import torch

        self.scale, self.sigma, self.voxel_length = scale, 0.05, 0.025
        self.aabb = torch.tensor([[-1.5] * 3, [1.5] * 3])

    def weak_sdf(self, points):
        return self.scale * (points.norm(dim=-1) - 1.0)


def test_weak_sdf_metrics_against_known_answers(unit_sphere) -> None:
    """The exact SDF: no error and no violated bound. 1.5 times it: errors of half the distance, and the bound
    violated at every point off the surface. (The icosphere's facets sit up to ~1e-4 inside the sphere.)"""
    from types import SimpleNamespace

    exact = weak_sdf_metrics(SimpleNamespace(field=AnalyticField(1.0)), unit_sphere, num_points=5000)
    assert exact["band_points"] > 4000 and exact["weak_sdf_median_abs_error"] < 1e-3
    assert exact["bound_violated_by_over_half_voxel_fraction"] == 0.0
    steep = weak_sdf_metrics(SimpleNamespace(field=AnalyticField(1.5)), unit_sphere, num_points=5000)
    # The points' distances d to the surface are N(0, (1.5 sigma)^2), kept where |d| <= 2 sigma; the error is |d| / 2.
    spread = 1.5 * 0.05
    kept = 2 * norm.cdf(2 / 1.5) - 1
    assert steep["weak_sdf_median_abs_error"] == pytest.approx(0.5 * spread * norm.ppf(0.5 + kept / 4), rel=0.05)
    assert steep["bound_violated_fraction"] > 0.99
    beyond = (kept - (2 * norm.cdf(0.025 / spread) - 1)) / kept  # 0.5 |d| > half a voxel
    assert steep["bound_violated_by_over_half_voxel_fraction"] == pytest.approx(beyond, abs=0.03)


def test_cli_on_a_run(trained_run: Path, tiny_scene: Path, tmp_path: Path) -> None:
    output = tmp_path / "geometry.json"
    result = subprocess.run(
        [command("rs-eval-geometry"), "--mesh", str(tiny_scene / "mesh.ply"), "--gt-mesh", str(tiny_scene / "mesh.ply"),
         "--load-config", str(trained_run), "--output", str(output), "--num-points", "20000"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    metrics = json.loads(output.read_text())
    assert metrics["f_score@1.0%"] > 0.99  # the ground truth against itself
    assert metrics["band_points"] > 1000 and math.isfinite(metrics["weak_sdf_median_abs_error"])
    assert metrics["bound_violated_by_over_half_voxel_fraction"] < 0.5  # a trained weak SDF is mostly a bound


def test_existing_output_and_bad_numbers_are_refused(tmp_path: Path) -> None:
    from rs_nerfstudio.geometry import GeometryConfig

    mesh = tmp_path / "mine.ply"
    mesh.write_text("a user's mesh")
    with pytest.raises(InputError, match="mine.ply exists; pass --overwrite"):
        GeometryConfig(mesh=tmp_path / "a.ply", gt_mesh=tmp_path / "b.ply", output=mesh).main()
    assert mesh.read_text() == "a user's mesh"
    with pytest.raises(InputError, match="--num-points"):
        GeometryConfig(mesh=mesh, gt_mesh=mesh, output=tmp_path / "out.json", num_points=0).main()
    with pytest.raises(InputError, match=r"--seed must be in \[0, 2\^63\), got -1"):
        GeometryConfig(mesh=mesh, gt_mesh=mesh, output=tmp_path / "out.json", seed=-1).main()
    with pytest.raises(InputError, match="--output .*mine.ply is the --gt-mesh file"):
        GeometryConfig(mesh=tmp_path / "other.ply", gt_mesh=mesh, output=mesh).main()
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match="is the --mesh file"):
        GeometryConfig(mesh=mesh, gt_mesh=tmp_path / "gt.ply", output=tmp_path / "sub" / ".." / "mine.ply",
                       overwrite=True).main()  # fmt: skip
    assert mesh.read_text() == "a user's mesh"
    with pytest.raises(InputError, match="is a folder; name a mesh file"):
        GeometryConfig(mesh=tmp_path, gt_mesh=mesh, output=tmp_path / "out.json").main()


def test_meshes_without_a_usable_surface_are_refused(tmp_path: Path, unit_sphere) -> None:
    import numpy as np

    vertices = np.array(unit_sphere.vertices)
    vertices[0] = np.nan
    trimesh.Trimesh(vertices, unit_sphere.faces, process=False).export(tmp_path / "nan.ply")
    with pytest.raises(InputError, match="nan.ply has vertices with NaN"):
        load_mesh(tmp_path / "nan.ply")
    trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]], process=False).export(tmp_path / "flat.ply")
    with pytest.raises(InputError, match="flat.ply has no surface"):
        load_mesh(tmp_path / "flat.ply")
