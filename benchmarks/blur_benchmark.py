"""Forward+backward time of the randomized-smoothing blur on a 128^3 grid: banded matrix products vs F.conv3d.

    python benchmarks/blur_benchmark.py [--size 128] [--sigma-vox 1.0] [--repeats 10]

Both are measured in this one run, on the same grid, after a warm-up; the table gives medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from rs_nerfstudio.smoothing import gaussian_blur_3d, gaussian_kernel_1d


def separable_conv3d(grid: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """The same blur as three F.conv3d calls with 1-D kernels (the slow baseline)."""
    taps = gaussian_kernel_1d(sigma_vox, grid.dtype)
    radius = (taps.numel() - 1) // 2
    out = grid[None, None]
    for shape, padding in (((-1, 1, 1), (radius, 0, 0)), ((1, -1, 1), (0, radius, 0)), ((1, 1, -1), (0, 0, radius))):
        out = F.conv3d(out, taps.reshape(1, 1, *shape), padding=padding)
    return out[0, 0]


def time_forward_backward(blur: Callable[[torch.Tensor], torch.Tensor], grid: torch.Tensor, repeats: int) -> list:
    times = []
    for index in range(repeats + 1):
        leaf = grid.clone().requires_grad_(True)
        start = time.perf_counter()
        blur(leaf).square().sum().backward()
        if index > 0:  # the first call warms caches and builds the banded matrices
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--sigma-vox", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    grid = torch.rand(args.size, args.size, args.size)
    ours = gaussian_blur_3d(grid, args.sigma_vox)
    baseline = separable_conv3d(grid, args.sigma_vox)
    difference = float((ours - baseline).abs().max())

    banded = time_forward_backward(lambda g: gaussian_blur_3d(g, args.sigma_vox), grid, args.repeats)
    conv = time_forward_backward(lambda g: separable_conv3d(g, args.sigma_vox), grid, max(2, args.repeats // 3))
    banded_ms, conv_ms = statistics.median(banded) * 1e3, statistics.median(conv) * 1e3

    print(f"{args.size}^3 grid, sigma = {args.sigma_vox} voxel, {torch.get_num_threads()} torch threads, "
          f"forward + backward, median of {len(banded)} / {len(conv)} runs; max |difference| = {difference:.1e}")
    print("| blur | ms | vs banded |")
    print("| --- | --- | --- |")
    print(f"| banded matrix products (rs_nerfstudio) | {banded_ms:.1f} | 1.0x |")
    print(f"| F.conv3d, three 1-D kernels | {conv_ms:.1f} | {conv_ms / banded_ms:.1f}x |")


if __name__ == "__main__":
    main()
