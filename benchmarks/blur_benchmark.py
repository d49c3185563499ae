"""Forward+backward time of the randomized-smoothing blur: banded matrix products vs F.conv3d, on one CPU run.

    python benchmarks/blur_benchmark.py [--size 128] [--sigma-vox 1.0] [--repeats 10] [--dense-repeats 3]

Four implementations of the same zero-padded Gaussian blur of a ``size^3`` float32 grid with requires_grad:

* ``gaussian_blur_3d``: products with banded (Toeplitz) matrices, in blocks of output voxels (rs_nerfstudio);
* the same with one block per axis: one dense ``size x size`` matrix product per axis, zeros and all;
* ``F.conv3d`` three times with a 1-D kernel (the separable conv3d baseline);
* ``F.conv3d`` once with the dense (2r+1)^3 kernel (the definition; slow, so fewer repeats, 0 to skip).

Each is timed as ``blur(grid).square().sum().backward()`` after one warm-up call; the table gives medians, the ratio
to the banded blur, and the max |difference| of each output from the banded one.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List

import torch
import torch.nn.functional as F

from rs_nerfstudio.smoothing import gaussian_blur_3d, gaussian_kernel_1d

Blur = Callable[[torch.Tensor], torch.Tensor]


def separable_conv3d(grid: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """The same blur as three F.conv3d calls with 1-D kernels along D, H and W."""
    taps = gaussian_kernel_1d(sigma_vox, grid.dtype)
    radius = (taps.numel() - 1) // 2
    out = grid[None, None]
    for shape, padding in (((-1, 1, 1), (radius, 0, 0)), ((1, -1, 1), (0, radius, 0)), ((1, 1, -1), (0, 0, radius))):
        out = F.conv3d(out, taps.reshape(1, 1, *shape), padding=padding)
    return out[0, 0]


def dense_conv3d(grid: torch.Tensor, sigma_vox: float) -> torch.Tensor:
    """The same blur as one F.conv3d with the outer product of the 1-D taps."""
    taps = gaussian_kernel_1d(sigma_vox, grid.dtype)
    kernel = taps[:, None, None] * taps[None, :, None] * taps[None, None, :]
    return F.conv3d(grid[None, None], kernel[None, None], padding=(taps.numel() - 1) // 2)[0, 0]


def time_forward_backward(blur: Blur, grid: torch.Tensor, repeats: int) -> List[float]:
    """Seconds per forward+backward, after one untimed warm-up (caches, banded matrices, allocator)."""
    times = []
    for index in range(repeats + 1):
        leaf = grid.clone().requires_grad_(True)
        start = time.perf_counter()
        blur(leaf).square().sum().backward()
        if index > 0:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="grid side, voxels")
    parser.add_argument("--sigma-vox", type=float, default=1.0, help="Gaussian standard deviation, voxels")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of the banded and separable blurs")
    parser.add_argument("--dense-repeats", type=int, default=3, help="timed runs of the dense conv3d (0: skip)")
    args = parser.parse_args()

    torch.manual_seed(0)
    grid = torch.rand(args.size, args.size, args.size)
    sigma = args.sigma_vox
    rows = [
        ("banded matrix products in blocks (`gaussian_blur_3d`)", lambda g: gaussian_blur_3d(g, sigma), args.repeats),
        ("one dense banded matrix product per axis", lambda g: gaussian_blur_3d(g, sigma, block=args.size),
         args.repeats),
        ("`F.conv3d`, three 1-D kernels (separable)", lambda g: separable_conv3d(g, sigma), args.repeats),
        ("`F.conv3d`, dense 3-D kernel", lambda g: dense_conv3d(g, sigma), args.dense_repeats),
    ]
    rows = [row for row in rows if row[2] > 0]

    with torch.no_grad():
        reference = gaussian_blur_3d(grid, sigma)
        differences = [float((blur(grid) - reference).abs().max()) for _, blur, _ in rows]
    medians = [statistics.median(time_forward_backward(blur, grid, repeats)) * 1e3 for _, blur, repeats in rows]

    radius = (gaussian_kernel_1d(sigma).numel() - 1) // 2
    print(
        f"{args.size}^3 float32 grid, sigma = {sigma} voxel (kernel radius {radius}), forward + backward, "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    )
    print()
    print("| blur | runs | median ms | vs banded | max abs diff vs banded |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for (name, _, repeats), ms, difference in zip(rows, medians, differences):
        print(f"| {name} | {repeats} | {ms:.1f} | {ms / medians[0]:.1f}x | {difference:.1e} |")


if __name__ == "__main__":
    main()
