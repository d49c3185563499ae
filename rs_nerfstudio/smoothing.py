"""Randomized smoothing of a voxel grid: f_hat = f * N(0, sigma^2 I), as a separable Gaussian blur.

In 3D, the smoothed classifier of Cohen et al. is a Gaussian blur of the base occupancy: cheap and exact,
no Monte Carlo. The blur is separable, so it is three 1-D blurs. Each 1-D blur is one dense matrix product with
a banded (Toeplitz) matrix: on a CPU that is ~20x faster than ``F.conv3d`` with a 1-D kernel, because BLAS does
the work. Outside the grid the base occupancy is 0 (empty space), i.e. zero padding.

All functions are pure and differentiable; grids are ``[..., D, H, W]`` (the layout of ``F.grid_sample``).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence, Tuple

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


def gaussian_blur_3d(
    grid: Float[Tensor, "*batch D H W"], sigma_vox: float | Sequence[float]
) -> Float[Tensor, "*batch D H W"]:
    """Separable Gaussian blur of the last three axes, with zero padding.

    Args:
        grid: values on voxel centres, any leading batch/channel axes.
        sigma_vox: standard deviation in voxels, one value or one per axis (D, H, W); the per-axis form is for
            grids whose voxels are not cubes.
    """
    sigmas = _per_axis(sigma_vox)
    depth, height, width = grid.shape[-3:]
    lead = grid.shape[:-3]
    device, dtype = grid.device, grid.dtype
    out = grid
    if kernel_radius(sigmas[2]) > 0:  # W: right-multiply by B^T (B is symmetric)
        out = out @ _matrix(width, sigmas[2], dtype, device)
    if kernel_radius(sigmas[1]) > 0:  # H: left-multiply, broadcast over D
        out = _matrix(height, sigmas[1], dtype, device) @ out
    if kernel_radius(sigmas[0]) > 0:  # D: one matrix product over the flattened H*W plane
        flat = out.reshape(-1, depth, height * width)
        out = (_matrix(depth, sigmas[0], dtype, device) @ flat).reshape(*lead, depth, height, width)
    return out


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
