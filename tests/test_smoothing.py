"""The blur is randomized smoothing: it must equal the dense 3-D Gaussian convolution it stands for."""

from __future__ import annotations

import math

import pytest
import torch

from rs_nerfstudio.smoothing import banded_blur_matrix, gaussian_blur_3d, gaussian_kernel_1d, kernel_radius


def brute_force_blur(grid: torch.Tensor, sigmas) -> torch.Tensor:
    """Sum over every 3-D kernel offset of the shifted, zero-padded grid: the definition, written out."""
    taps = [gaussian_kernel_1d(s, torch.float64) for s in sigmas]
    radii = [(t.numel() - 1) // 2 for t in taps]
    padded = torch.nn.functional.pad(grid, (radii[2], radii[2], radii[1], radii[1], radii[0], radii[0]))
    depth, height, width = grid.shape[-3:]
    out = torch.zeros_like(grid)
    for a in range(-radii[0], radii[0] + 1):
        for b in range(-radii[1], radii[1] + 1):
            for c in range(-radii[2], radii[2] + 1):
                weight = taps[0][a + radii[0]] * taps[1][b + radii[1]] * taps[2][c + radii[2]]
                shifted = padded[
                    ..., radii[0] + a : radii[0] + a + depth, radii[1] + b : radii[1] + b + height,
                    radii[2] + c : radii[2] + c + width,
                ]  # fmt: skip
                out += weight * shifted
    return out


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.7, 3.0])
def test_blur_equals_dense_convolution(sigma: float) -> None:
    torch.manual_seed(0)
    grid = torch.rand(9, 12, 15, dtype=torch.float64)
    expected = brute_force_blur(grid, (sigma,) * 3)
    torch.testing.assert_close(gaussian_blur_3d(grid, sigma), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(gaussian_blur_3d(grid.float(), sigma), expected.float(), atol=1e-5, rtol=0)


def test_per_axis_sigma_and_leading_axes() -> None:
    torch.manual_seed(1)
    grid = torch.rand(2, 3, 8, 10, 6, dtype=torch.float64)
    sigmas = (0.7, 1.3, 2.0)
    torch.testing.assert_close(gaussian_blur_3d(grid, sigmas), brute_force_blur(grid, sigmas), atol=1e-5, rtol=0)


def test_kernel_taps_are_one_voxel_apart_and_normalised() -> None:
    for sigma in (0.3, 0.6, 1.0, 2.5):
        taps = gaussian_kernel_1d(sigma, torch.float64)
        assert taps.numel() == 2 * math.ceil(3 * sigma) + 1 == 2 * kernel_radius(sigma) + 1
        assert float(taps.sum()) == pytest.approx(1.0)
        torch.testing.assert_close(taps, taps.flip(0))
        offsets = torch.arange(taps.numel(), dtype=torch.float64) - kernel_radius(sigma)
        torch.testing.assert_close(taps[1:] / taps[:-1], torch.exp(-(2 * offsets[:-1] + 1) / (2 * sigma**2)))
    assert gaussian_kernel_1d(0.0).tolist() == [1.0]


def test_small_sigma_still_smooths() -> None:
    """The known trap: taps finer than the grid leave a delta untouched at small sigma."""
    grid = torch.zeros(7, 7, 7)
    grid[3, 3, 3] = 1.0
    blurred = gaussian_blur_3d(grid, 0.6)
    assert float(blurred[3, 3, 3]) < 0.35 and float(blurred[3, 3, 4]) > 0.05
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-6)  # mass kept away from the border


def test_gradient() -> None:
    grid = torch.rand(4, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g: gaussian_blur_3d(g, (0.8, 1.0, 1.5)), (grid,))


def test_half_space_smooths_to_gaussian_cdf() -> None:
    """Randomized smoothing of a half-space indicator is Phi(distance / sigma)."""
    sigma, size = 2.0, 40
    z = torch.arange(size, dtype=torch.float64) - size / 2 + 0.5
    grid = (z < 0).double()[:, None, None].expand(size, 8, 8).contiguous()
    blurred = gaussian_blur_3d(grid, (sigma, 0.0, 0.0))[:, 4, 4]
    interior = slice(8, size - 8)
    expected = torch.special.ndtr(-z / sigma)
    # The discrete kernel on voxel-wide cells matches the continuous CDF to ~1% at sigma = 2 voxels.
    torch.testing.assert_close(blurred[interior], expected[interior], atol=0.012, rtol=0)


def test_banded_matrix_is_the_blur() -> None:
    matrix = banded_blur_matrix(6, 1.0, torch.float64)
    assert matrix[0, 4] == 0 and matrix[0, 3] > 0  # ceil(3 * 1) = 3 taps each side
    torch.testing.assert_close(matrix, matrix.T)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_sigma_is_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        gaussian_blur_3d(torch.zeros(3, 3, 3), bad)
