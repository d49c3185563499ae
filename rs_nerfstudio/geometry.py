"""``rs-eval-geometry``: a mesh against a ground-truth mesh, and a run's weak SDF against the true SDF.

Mesh metrics follow the usual surface-reconstruction protocol on points sampled uniformly from both surfaces:
Chamfer-L1, F-score at a distance threshold, and normal consistency, with nearest neighbours from scipy's KD-tree.
The weak SDF is compared with trimesh's exact signed distance to the ground truth near the surface, where it is
meant to hold, and the bound it certifies is checked: |weak SDF| should not exceed the true distance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import tyro

from rs_nerfstudio.outputs import check_outputs, metrics_json, write_atomically
from rs_nerfstudio.validation import InputError

F_SCORE_FRACTIONS = (0.005, 0.01)
"""F-score thresholds as fractions of the ground truth's bounding-box diagonal."""


def load_mesh(path: Path):
    """A triangle mesh from a file, or a one-line error naming it."""
    import trimesh

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; name a mesh file (.ply, .obj, ...)")
    if not path.is_file():
        raise InputError(f"mesh not found: {path}")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as error:  # noqa: BLE001 - trimesh raises many kinds for broken files
        raise InputError(f"unreadable mesh {path}: {type(error).__name__}: {error}") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise InputError(f"{path} holds no triangles")
    if not np.isfinite(mesh.vertices).all():
        raise InputError(f"{path} has vertices with NaN or infinite coordinates")
    if not mesh.area > 0:
        raise InputError(f"{path} has no surface: its triangles all have zero area")
    return mesh


def sample_surface(mesh, count: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Points uniformly on the surface and their face normals."""
    import trimesh

    points, faces = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points), np.asarray(mesh.face_normals[faces])


def mesh_metrics(predicted, ground_truth, num_points: int = 200_000, seed: int = 0) -> Dict[str, float]:
    """Chamfer-L1, F-scores at 0.5% and 1% of the diagonal, normal consistency (all distances in scene units)."""
    from scipy.spatial import cKDTree

    pred_points, pred_normals = sample_surface(predicted, num_points, seed)
    gt_points, gt_normals = sample_surface(ground_truth, num_points, seed + 1)
    to_gt, gt_index = cKDTree(gt_points).query(pred_points, workers=-1)
    to_pred, pred_index = cKDTree(pred_points).query(gt_points, workers=-1)
    diagonal = float(np.linalg.norm(ground_truth.bounds[1] - ground_truth.bounds[0]))
    metrics = {
        "chamfer_l1": float((to_gt.mean() + to_pred.mean()) / 2),
        "accuracy": float(to_gt.mean()),
        "completeness": float(to_pred.mean()),
        "bbox_diagonal": diagonal,
        "normal_consistency": float(
            (np.abs((pred_normals * gt_normals[gt_index]).sum(-1)).mean()
             + np.abs((gt_normals * pred_normals[pred_index]).sum(-1)).mean()) / 2
        ),  # fmt: skip
    }
    metrics["chamfer_l1_fraction_of_diagonal"] = metrics["chamfer_l1"] / diagonal
    for fraction in F_SCORE_FRACTIONS:
        threshold = fraction * diagonal
        precision, recall = float((to_gt < threshold).mean()), float((to_pred < threshold).mean())
        score = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        metrics[f"f_score@{fraction:.1%}"] = score
        metrics[f"precision@{fraction:.1%}"], metrics[f"recall@{fraction:.1%}"] = precision, recall
    return metrics


def weak_sdf_metrics(model, ground_truth, num_points: int = 20_000, seed: int = 0) -> Dict[str, float]:
    """The run's weak SDF against the exact signed distance to a watertight ground truth, within |SDF| <= 2 sigma."""
    import torch
    import trimesh

    if not ground_truth.is_watertight:
        raise InputError("the ground-truth mesh (--gt-mesh) is not watertight, so its signed distance is undefined")
    field = model.field
    sigma, voxel = field.sigma, field.voxel_length
    rng = np.random.default_rng(seed)
    surface, _ = sample_surface(ground_truth, num_points, seed + 2)
    points = surface + rng.normal(scale=1.5 * sigma, size=surface.shape)
    aabb = field.aabb.cpu().numpy()
    points = points[((points > aabb[0]) & (points < aabb[1])).all(axis=1)]
    if len(points) == 0:
        raise InputError("no point near the ground truth's surface lies in the run's scene box: is it the run's scene?")
    true_sdf = -trimesh.proximity.signed_distance(ground_truth, points)  # trimesh: positive inside
    with torch.no_grad():
        weak = field.weak_sdf(torch.from_numpy(points).float().to(field.aabb.device)).cpu().numpy()
    band = np.abs(true_sdf) <= 2 * sigma
    error = np.abs(weak - true_sdf)[band]
    violation = (np.abs(weak) - np.abs(true_sdf))[band]
    return {
        "sigma": sigma,
        "voxel": voxel,
        "band_points": int(band.sum()),
        "weak_sdf_mean_abs_error": float(error.mean()),
        "weak_sdf_median_abs_error": float(np.median(error)),
        "weak_sdf_median_abs_error_voxels": float(np.median(error) / voxel),
        "bound_violated_fraction": float((violation > 0).mean()),
        "bound_violated_by_over_half_voxel_fraction": float((violation > 0.5 * voxel).mean()),
    }


@dataclass
class GeometryConfig:
    """Compare a mesh with a ground-truth mesh (and, given a run, its weak SDF with the true SDF); write JSON."""

    mesh: Path
    """The mesh to score (e.g. from rs-export mesh)."""
    gt_mesh: Path
    """The ground-truth mesh (rs-scene writes mesh.ply beside each scene)."""
    load_config: Optional[Path] = None
    """An rs-sdf run's config.yml: also score its weak SDF against the ground truth's signed distance."""
    output: Path = Path("geometry.json")
    """Where to write the metrics."""
    overwrite: bool = False
    """Replace --output if it exists."""
    num_points: int = 200_000
    """Points sampled on each surface."""
    seed: int = 0
    """Seed of the surface sampling."""

    def main(self) -> Dict[str, float]:
        if self.num_points < 1:
            raise InputError(f"--num-points must be at least 1, got {self.num_points}")
        if not 0 <= self.seed < 2**63:
            raise InputError(f"--seed must be in [0, 2^63), got {self.seed}")
        for flag, source in (("--mesh", self.mesh), ("--gt-mesh", self.gt_mesh), ("--load-config", self.load_config)):
            if source is not None and Path(source).is_dir():
                source = Path(source) / "config.yml"  # a run's folder
            if source is not None and self.output.resolve() == Path(source).resolve():
                raise InputError(f"--output {self.output} is the {flag} file; name another")
        check_outputs([self.output], self.overwrite)
        predicted, ground_truth = load_mesh(self.mesh), load_mesh(self.gt_mesh)
        model = None
        if self.load_config is not None:  # opened, and the ground truth checked, before the mesh metrics
            from rs_nerfstudio.runs import load_model

            if not ground_truth.is_watertight:
                raise InputError(f"--gt-mesh {self.gt_mesh} is not watertight, so its signed distance is undefined")
            model, _ = load_model(self.load_config)
        metrics = mesh_metrics(predicted, ground_truth, self.num_points, self.seed)
        if model is not None:
            metrics.update(weak_sdf_metrics(model, ground_truth, seed=self.seed))
        text = metrics_json(metrics)
        write_atomically(self.output, lambda path: path.write_text(text, encoding="utf8"), self.overwrite)
        for key, value in metrics.items():
            print(f"{key:45s} {value:.6g}")
        print(f"rs-eval-geometry: wrote {self.output}")
        return metrics


def entrypoint() -> None:
    """Command-line entry point."""
    from rs_nerfstudio.cli import run_command

    run_command("rs-eval-geometry", tyro.cli(GeometryConfig).main, "--num-points")


if __name__ == "__main__":
    entrypoint()
