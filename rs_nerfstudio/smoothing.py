"""Randomized smoothing of a voxel grid: f_hat = f * N(0, sigma^2 I), as a separable Gaussian blur.

In 3D, the smoothed classifier of Cohen et al. is a Gaussian blur of the base occupancy: cheap and exact,
no Monte Carlo. The blur is separable, so it is three 1-D blurs. Each 1-D blur is a product with a banded
(Toeplitz) matrix, done in blocks of output voxels that each read only the input rows their band reaches: BLAS
does the work (on a CPU 15x faster than ``F.conv3d`` with a 1-D kernel: README, "Measured here"), without
multiplying the band's zeros.
Outside the grid the base occupancy is 0 (empty space), i.e. zero padding.

All functions are pure and differentiable; grids are ``[..., D, H, W]`` (the layout of ``F.grid_sample``).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional, Sequence, Tuple

import torch
from jaxtyping import Float
from torch import Tensor

TRUNCATION = 3.0
"""The kernel is cut at ceil(3 sigma) voxels, where the Gaussian's mass outside is < 0.3%."""


def kernel_radius(sigma_vox: float) -> int:
    """Number of integer taps on each side of the centre: ceil(3 sigma_vox), at least 0."""
    if sigma_vox < 0 or not math.isfinite(sigma_vox):
        raise ValueError(f"sigma must be finite and >= 0 voxels, got {sigma_vox}")
    return int(math.ceil(TRUNCATION * sigma_vox))


def gaussian_kernel_1d(sigma_vox: float, dtype: torch.dtype = torch.float32) -> Float[Tensor, "taps"]:
    """Gaussian taps at integer voxel offsets -r..r, renormalised to sum to one.

    Taps one voxel apart matter: a kernel sampled more finely than the grid does no smoothing at small sigma.
    sigma_vox == 0 is the identity (a single tap).
    """
    radius = kernel_radius(sigma_vox)
    if radius == 0:
        return torch.ones(1, dtype=dtype)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma_vox) ** 2)
    return (taps / taps.sum()).to(dtype)


def banded_blur_matrix(
    size: int, sigma_vox: float, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> Float[Tensor, "size size"]:
    """The ``size x size`` Toeplitz matrix B with ``(B v)[i] = sum_k w_k v[i + k]`` and zero padding."""
    return _banded_blur_matrix_cached(size, float(sigma_vox), dtype, str(device)).clone()


@lru_cache(maxsize=64)
def _banded_blur_matrix_cached(size: int, sigma_vox: float, dtype: torch.dtype, device: str) -> Tensor:
    taps = gaussian_kernel_1d(sigma_vox, torch.float64)
    radius = (taps.numel() - 1) // 2
    index = torch.arange(size)
    offset = index[None, :] - index[:, None]  # column minus row
    inside = offset.abs() <= radius
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix[inside] = taps[(offset[inside] + radius)]
    return matrix.to(dtype=dtype, device=device)


BLOCK = 16
"""Output voxels per matrix product along an axis (at least 4 kernel radii). One dense product per axis multiplies a
whole ``n x n`` matrix, mostly zeros. On this project's 2 CPU cores, blocks of 16 blurred a 96 x 128 x 78 grid
(Lego's fitted box) in 2.6 ms against 7.7 for one product per axis, and blocks of 8 or 48 were slower (a throwaway
timing script); forward and backward of a 128^3 grid took 16.7 ms against 35.7 (benchmarks/blur_benchmark.py)."""


def gaussian_blur_3d(
    grid: Float[Tensor, "*batch D H W"], sigma_vox: float | Sequence[float], block: Optional[int] = None
) -> Float[Tensor, "*batch D H W"]:
    """Separable Gaussian blur of the last three axes, with zero padding.

    Args:
        grid: values on voxel centres, any leading batch/channel axes.
        sigma_vox: standard deviation in voxels, one value or one per axis (D, H, W); the per-axis form is for
            grids whose voxels are not cubes.
        block: output voxels per matrix product along an axis (default: :data:`BLOCK`, or 4 kernel radii if more).
    """
    sigmas = _per_axis(sigma_vox)
    if grid.requires_grad and torch.is_grad_enabled():
        return _SeparableBlur.apply(grid, sigmas, block)
    return _blur(grid, sigmas, block)


class _SeparableBlur(torch.autograd.Function):
    """The blur's gradient is the same blur: the banded matrices are symmetric, and the axes' products commute.

    Autograd through the blocked products would scatter each block's gradient into a zero tensor of the whole grid.
    """

    @staticmethod
    def forward(ctx, grid, sigmas, block):  # type: ignore[override]
        ctx.sigmas, ctx.block = sigmas, block
        return _blur(grid, sigmas, block)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        return _blur(grad_out, ctx.sigmas, ctx.block), None, None


def _blur(grid: Tensor, sigmas: Tuple[float, float, float], block: Optional[int]) -> Tensor:
    depth, height, width = grid.shape[-3:]
    out = grid
    for axis, (size, sigma) in zip((-3, -2, -1), zip((depth, height, width), sigmas)):
        radius = kernel_radius(sigma)
        if radius > 0:
            matrix = _matrix(size, sigma, grid.dtype, grid.device)
            out = _banded_product(out, axis, matrix, radius, block or max(BLOCK, 4 * radius))
    return out


def _banded_product(values: Tensor, axis: int, matrix: Tensor, radius: int, block: int) -> Tensor:
    """``matrix`` (symmetric, banded with ``radius``) applied along ``axis`` (-3, -2 or -1) of ``values``, one block of
    output voxels at a time, each from the input rows its band reaches."""
    shape = values.shape
    size = shape[axis]
    if axis == -3:  # D: products over the flattened H*W plane
        values = values.reshape(-1, size, shape[-2] * shape[-1])
    pieces = []
    for low in range(0, size, block):
        high = min(size, low + block)
        first, last = max(0, low - radius), min(size, high + radius)
        if axis == -1:
            pieces.append(values[..., first:last] @ matrix[first:last, low:high])
        else:
            pieces.append(matrix[low:high, first:last] @ values[..., first:last, :])
    return torch.cat(pieces, dim=-1 if axis == -1 else -2).reshape(shape)


def _matrix(size: int, sigma_vox: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    return _banded_blur_matrix_cached(size, float(sigma_vox), dtype, str(device))


def _per_axis(sigma_vox: float | Sequence[float]) -> Tuple[float, float, float]:
    if isinstance(sigma_vox, (int, float)):
        return (float(sigma_vox),) * 3
    values = tuple(float(s) for s in sigma_vox)
    if len(values) != 3:
        raise ValueError(f"sigma_vox needs 1 or 3 values, got {len(values)}")
    return values  # type: ignore[return-value]


def conv3d_blur_reference(grid: Float[Tensor, "D H W"], sigma_vox: float) -> Float[Tensor, "D H W"]:
    """Brute-force dense 3-D convolution with the outer product of the 1-D taps (the definition; slow)."""
    taps = gaussian_kernel_1d(sigma_vox, grid.dtype).to(grid.device)
    kernel = taps[:, None, None] * taps[None, :, None] * taps[None, None, :]
    radius = (taps.numel() - 1) // 2
    out = torch.nn.functional.conv3d(grid[None, None], kernel[None, None], padding=radius)
    return out[0, 0]
