"""Grid randomized smoothing against Monte-Carlo CERTIFY on the same points: agreement and speed, in one run.

    python benchmarks/certify_benchmark.py --load-config RUN/config.yml [--num-points 200] [--ns 1000 10000 100000]

Points are drawn within 2 sigma of the run's surface. The grid's radius is timed two ways: the marginal cost of a
query once the smoothed grid exists (what a collision check pays), and that cost plus one blur of the whole grid,
amortised over the points. Monte Carlo uses the soft variant (the mean of f_theta, which is what the grid smooths)
and, with --hard, Cohen et al.'s hard votes too. Writes a PNG of grid radius against Monte-Carlo radius.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from rs_nerfstudio.certify import base_occupancy_function, certify_monte_carlo, generated_points, grid_radius
from rs_nerfstudio.runs import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-config", type=Path, required=True)
    parser.add_argument("--num-points", type=int, default=200)
    parser.add_argument("--ns", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--hard", action="store_true", help="also run hard-vote CERTIFY")
    parser.add_argument("--plot", type=Path, default=Path("certify_benchmark.png"))
    args = parser.parse_args()

    model, _ = load_model(args.load_config)
    sigma = model.field.sigma
    points = generated_points(model, "band", args.num_points, seed=0)

    model.field.clear_smoothing_cache()
    start = time.perf_counter()
    grid = grid_radius(model, points).numpy()
    with_blur = (time.perf_counter() - start) / len(points)
    repeats = []
    for _ in range(20):
        start = time.perf_counter()
        grid_radius(model, points)
        repeats.append(time.perf_counter() - start)
    marginal = statistics.median(repeats) / len(points)

    base = base_occupancy_function(model)
    modes = ["soft", "hard"] if args.hard else ["soft"]
    rows, soft_largest = [], None
    for mode in modes:
        for n in args.ns:
            result = certify_monte_carlo(base, points, sigma, args.n0, n, args.alpha, mode=mode, seed=1)
            kept = ~result.abstain
            mc_estimate = sigma * _ndtri(1.0 - result.p_estimate)
            difference = np.abs(grid - mc_estimate)[kept] / sigma
            exceeds = (np.abs(grid) - np.abs(result.radius))[kept] / sigma
            per_point = result.seconds / len(points)
            rows.append((mode, n, per_point, result.abstain.mean(), difference.mean(), np.percentile(difference, 95),
                         (exceeds > 0.05).mean(), per_point / marginal, per_point / with_blur))  # fmt: skip
            if mode == "soft":
                soft_largest = (n, mc_estimate, result.radius)

    print(f"{len(points)} points within 2 sigma of the surface, sigma = {sigma}, n0 = {args.n0}, alpha = {args.alpha}, "
          f"{torch.get_num_threads()} threads")
    print(f"grid RS: {marginal * 1e6:.2f} us/point marginal (smoothed grid cached), "
          f"{with_blur * 1e6:.1f} us/point with one blur of the whole grid amortised over these points")
    print("| MC votes | n | MC s/point | abstain | mean abs dr / sigma | p95 abs dr / sigma | grid > MC certified + 0.05 sigma | speed-up (marginal) | speed-up (with blur) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode, n, per_point, abstain, mean, p95, exceed, fast, fast_blur in rows:
        print(f"| {mode} | {n:.0e} | {per_point:.4f} | {abstain:.1%} | {mean:.4f} | {p95:.4f} | {exceed:.1%} | "
              f"{fast:,.0f}x | {fast_blur:,.0f}x |")
    _plot(grid, soft_largest, sigma, args.plot)
    print(f"plot: {args.plot}")


def _ndtri(p: np.ndarray) -> np.ndarray:
    from scipy.stats import norm

    return norm.ppf(np.clip(p, 1e-12, 1 - 1e-12))


def _plot(grid: np.ndarray, soft, sigma: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, estimate, certified = soft
    figure, ax = plt.subplots(figsize=(5, 5), dpi=120)
    ax.scatter(estimate / sigma, grid / sigma, s=6, label=f"MC estimate (soft, n = {n:.0e})")
    ax.scatter(certified / sigma, grid / sigma, s=6, marker="x", label="MC certified radius (lower bound)")
    ax.plot([-2.5, 2.5], [-2.5, 2.5], "k--", linewidth=0.8)
    ax.set_xlabel("Monte-Carlo radius / sigma")
    ax.set_ylabel("grid RS radius / sigma")
    ax.legend(loc="upper left", fontsize=8)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)


if __name__ == "__main__":
    main()
