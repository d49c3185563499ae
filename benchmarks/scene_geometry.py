"""Geometry of rs-sdf on rs-scene shapes: train each for a wall-clock budget, export a mesh, score it.

    python benchmarks/scene_geometry.py --shapes sphere torus union --train-seconds 240 --workdir /tmp/rs-geometry

For each shape: rs-scene (100 px, 60 train views), ns-train rs-sdf for --train-seconds, rs-export mesh at
--resolution, rs-eval-geometry against the scene's ground-truth mesh (and the run's weak SDF against the true SDF).
Prints a markdown table and writes geometry.json files beside the runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def run(*args: str) -> None:
    subprocess.run([str(a) for a in args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["sphere", "torus", "union"])
    parser.add_argument("--train-seconds", type=float, default=240.0)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rs-geometry"))
    parser.add_argument("--ns-train-args", nargs=argparse.REMAINDER, default=[],
                        help="further ns-train options, after everything else (e.g. --pipeline.model.steepness 60)")
    args = parser.parse_args()

    rows = []
    for shape in args.shapes:
        scene = args.workdir / "scenes" / shape
        if not (scene / "scene.json").exists():
            run(BIN / "rs-scene", "--output-dir", scene, "--shape", shape)
        runs = args.workdir / "runs"
        start = time.perf_counter()
        run(BIN / "ns-train", "rs-sdf", "--data", scene, "--output-dir", runs, "--experiment-name", shape,
            "--vis", "tensorboard", "--pipeline.model.train-time-budget", args.train_seconds, *args.ns_train_args)  # fmt: skip
        train_time = time.perf_counter() - start
        config = sorted((runs / shape / "rs-sdf").glob("*/config.yml"))[-1]
        export = config.parent / "export"
        run(BIN / "rs-export", "mesh", "--load-config", config, "--output-dir", export,
            "--resolution", args.resolution, "--overwrite")  # fmt: skip
        output = config.parent / "geometry.json"
        run(BIN / "rs-eval-geometry", "--mesh", export / "mesh.ply", "--gt-mesh", scene / "mesh.ply",
            "--load-config", config, "--output", output)  # fmt: skip
        metrics = json.loads(output.read_text())
        rows.append((shape, train_time, metrics))
        print(f"{shape}: done ({config.parent})", flush=True)

    print(f"\nrs-sdf, {args.train_seconds:.0f} s of training per scene, meshes at {args.resolution}^3")
    print("| shape | ns-train wall s | F@1% | F@0.5% | Chamfer-L1 / diag | normal consistency | median weak-SDF error (voxels) | bound violated > 0.5 voxel |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for shape, seconds, m in rows:
        print(f"| {shape} | {seconds:.0f} | {m['f_score@1.0%']:.4f} | {m['f_score@0.5%']:.4f} | "
              f"{100 * m['chamfer_l1_fraction_of_diagonal']:.3f}% | {m['normal_consistency']:.4f} | "
              f"{m['weak_sdf_median_abs_error_voxels']:.3f} | {100 * m['bound_violated_by_over_half_voxel_fraction']:.2f}% |")


if __name__ == "__main__":
    main()
