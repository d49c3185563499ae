"""The separable blur is randomized smoothing: it must equal the dense 3-D Gaussian convolution it stands for."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import pytest
import torch

from rs_nerfstudio.smoothing import (
    banded_blur_matrix,
    conv3d_blur_reference,
    gaussian_blur_3d,
    gaussian_kernel_1d,
    kernel_radius,
)


def brute_force_blur(grid: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """The definition, written out: a loop over every 3-D offset of a zero-padded grid, weighted by the 3-D Gaussian
    exp(-sum_i k_i^2 / (2 sigma_i^2)) on the integer box |k_i| <= ceil(3 sigma_i), normalised over that box.

    Shares nothing with the module under test: not its taps, not its separability.
    """
    radii = [math.ceil(3 * s) for s in sigmas]
    offsets = [range(-r, r + 1) for r in radii]

    def exponent(a: int, b: int, c: int) -> float:
        return sum(0.0 if k == 0 else -0.5 * (k / s) ** 2 for k, s in zip((a, b, c), sigmas))

    norm = sum(math.exp(exponent(a, b, c)) for a in offsets[0] for b in offsets[1] for c in offsets[2])
    padded = torch.nn.functional.pad(grid, (radii[2], radii[2], radii[1], radii[1], radii[0], radii[0]))
    depth, height, width = grid.shape[-3:]
    out = torch.zeros_like(grid)
    for a in offsets[0]:
        for b in offsets[1]:
            for c in offsets[2]:
                z, y, x = radii[0] + a, radii[1] + b, radii[2] + c
                out += math.exp(exponent(a, b, c)) / norm * padded[..., z : z + depth, y : y + height, x : x + width]
    return out


@pytest.fixture
def grid() -> torch.Tensor:
    """Random values on a non-cubic 9 x 12 x 15 grid, float64."""
    return torch.rand(9, 12, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.7, 3.0])
def test_blur_equals_dense_convolution(grid: torch.Tensor, sigma: float) -> None:
    expected = brute_force_blur(grid, (sigma,) * 3)
    torch.testing.assert_close(gaussian_blur_3d(grid, sigma), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(gaussian_blur_3d(grid.float(), sigma).double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(conv3d_blur_reference(grid, sigma), expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("sigmas", [(0.7, 1.3, 2.0), (2.2, 0.5, 1.0), (0.0, 1.3, 0.6)])
@pytest.mark.parametrize("lead", [(), (2,), (2, 3)])
@pytest.mark.parametrize("block", [None, 1, 3])
def test_per_axis_sigma_and_leading_axes(
    sigmas: Tuple[float, float, float], lead: Tuple[int, ...], block: Optional[int]
) -> None:
    """Also in blocks of output voxels smaller than the grid and than the kernel (the default block is 16)."""
    grid = torch.rand(*lead, 8, 10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    blurred = gaussian_blur_3d(grid, sigmas, block=block)
    assert blurred.shape == grid.shape
    torch.testing.assert_close(blurred, brute_force_blur(grid, sigmas), atol=1e-5, rtol=0)


@pytest.mark.parametrize("sigma", [0.3, 0.5, 0.6, 1.0, 1.1, 1.7, 2.5, 3.0])
def test_kernel_taps(sigma: float) -> None:
    """Taps at the integer offsets -ceil(3 sigma)..ceil(3 sigma), Gaussian-weighted, symmetric, summing to one."""
    taps = gaussian_kernel_1d(sigma, torch.float64)
    radius = math.ceil(3 * sigma)
    assert kernel_radius(sigma) == radius and taps.shape == (2 * radius + 1,)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)  # one voxel apart
    gaussian = torch.exp(-0.5 * (offsets / sigma) ** 2)
    torch.testing.assert_close(taps, gaussian / gaussian.sum(), atol=1e-15, rtol=0)
    assert float(taps.sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(taps, taps.flip(0))
    assert (taps[radius:].diff() < 0).all()  # strictly decreasing away from the centre
    assert gaussian_kernel_1d(sigma).dtype == torch.float32


def test_zero_sigma_is_identity(grid: torch.Tensor) -> None:
    assert gaussian_kernel_1d(0.0).tolist() == [1.0] and kernel_radius(0.0) == 0
    assert torch.equal(gaussian_blur_3d(grid, 0.0), grid)
    # Zero on one axis only: nothing moves along that axis.
    torch.testing.assert_close(gaussian_blur_3d(grid, (0.0, 0.0, 1.0)), brute_force_blur(grid, (0.0, 0.0, 1.0)))


@pytest.mark.parametrize("sigma", [0.6, 1.0, 2.0])
def test_delta_spreads_with_the_right_width(sigma: float) -> None:
    """The known trap: a kernel whose taps are not one voxel apart leaves a delta nearly untouched at small sigma."""
    size = 2 * math.ceil(3 * sigma) + 3
    delta = torch.zeros(size, size, size, dtype=torch.float64)
    centre = size // 2
    delta[centre, centre, centre] = 1.0
    blurred = gaussian_blur_3d(delta, sigma)
    neighbour_ratio = blurred[centre, centre, centre + 1] / blurred[centre, centre, centre]
    assert float(neighbour_ratio) == pytest.approx(math.exp(-0.5 / sigma**2), rel=1e-9)
    assert float(blurred[centre, centre, centre]) < 0.3  # 0.29 at sigma = 0.6: most of the mass has left the voxel
    # Per-axis variance of the spread delta is sigma^2 (the discrete, 3-sigma-truncated kernel: within 3%).
    offsets = torch.arange(size, dtype=torch.float64) - centre
    variance = float((blurred.sum(dim=(0, 1)) * offsets**2).sum())
    assert variance == pytest.approx(sigma**2, rel=0.03)


def test_mass_is_kept_away_from_the_border_and_lost_across_it() -> None:
    sigma = 1.5
    radius = kernel_radius(sigma)
    inner = torch.rand(6, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grid = torch.nn.functional.pad(inner, (radius,) * 6)  # support at least one kernel radius from every face
    assert float(gaussian_blur_3d(grid, sigma).sum()) == pytest.approx(float(inner.sum()), rel=1e-12)
    # Zero padding: outside the grid is empty, so a corner voxel of an all-ones grid keeps only the inside taps.
    taps = gaussian_kernel_1d(sigma, torch.float64)
    corner = gaussian_blur_3d(torch.ones(8, 8, 8, dtype=torch.float64), sigma)[0, 0, 0]
    assert float(corner) == pytest.approx(float(taps[radius:].sum()) ** 3, rel=1e-12)
    assert float(corner) < 0.3  # about (1/2 + taps[radius] / 2)^3, not the 1 of an unbounded grid


@pytest.mark.parametrize("block", [None, 2])
def test_gradient(block: Optional[int]) -> None:
    grid = torch.rand(2, 4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    blur = lambda g: gaussian_blur_3d(g, (0.8, 1.0, 1.5), block=block)  # noqa: E731
    assert torch.autograd.gradcheck(blur, (grid.requires_grad_(),))


def test_default_blocks_on_a_grid_larger_than_one() -> None:
    """A grid of several default blocks per axis equals one product per axis (one block as large as the grid)."""
    large = torch.rand(40, 35, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(gaussian_blur_3d(large, 1.3), gaussian_blur_3d(large, 1.3, block=40), atol=1e-14, rtol=0)


def test_blur_is_self_adjoint(grid: torch.Tensor) -> None:
    """<B x, y> = <x, B y>: the backward pass of the blur is the same blur."""
    x = grid.clone().requires_grad_()
    y = torch.rand_like(grid)
    (gaussian_blur_3d(x, (1.2, 0.7, 2.0)) * y).sum().backward()
    torch.testing.assert_close(x.grad, gaussian_blur_3d(y, (1.2, 0.7, 2.0)), atol=1e-12, rtol=0)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 4.0])
def test_half_space_smooths_to_gaussian_cdf(sigma: float) -> None:
    """Randomized smoothing of a half-space indicator is Phi(-z / sigma), z the signed distance to the plane.

    The discrete kernel on voxel-wide cells differs from the continuous CDF by O(1 / sigma^2), down to a floor of
    Phi(-3) = 0.0013 from the 3-sigma truncation. Measured max error: 0.0084, 0.0028, 0.0013 for sigma = 1, 2, 4.
    """
    radius = kernel_radius(sigma)
    size = 4 * radius + 2
    z = torch.arange(size, dtype=torch.float64) - size / 2 + 0.5  # plane at z = 0, on a cell face
    grid = (z < 0).double()[:, None, None].expand(size, 3, 3).contiguous()
    blurred = gaussian_blur_3d(grid, (sigma, 0.0, 0.0))[:, 1, 1]
    interior = slice(radius, size - radius)  # where the zero padding does not reach
    error = (blurred - torch.special.ndtr(-z / sigma))[interior].abs().max()
    assert float(error) < {1.0: 0.01, 2.0: 0.0035, 4.0: 0.0016}[sigma]


def test_banded_matrix_is_the_1d_blur() -> None:
    size, sigma = 11, 1.3
    matrix = banded_blur_matrix(size, sigma, torch.float64)
    radius = kernel_radius(sigma)
    assert matrix.shape == (size, size) and torch.equal(matrix, matrix.T)
    assert matrix[0, radius] > 0 and matrix[0, radius + 1] == 0  # banded: ceil(3 sigma) taps each side
    vector = torch.rand(size, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = brute_force_blur(vector[:, None, None], (sigma, 0.0, 0.0))[:, 0, 0]
    torch.testing.assert_close(matrix @ vector, expected, atol=1e-12, rtol=0)
    matrix.zero_()  # a copy: the cached matrix the blur uses is untouched
    torch.testing.assert_close(banded_blur_matrix(size, sigma, torch.float64) @ vector, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("bad", [-1.0, -1e-9, float("nan"), float("inf"), (1.0, float("nan"), 1.0), (1.0, 2.0)])
def test_bad_sigma_is_refused(bad) -> None:
    with pytest.raises(ValueError):
        gaussian_blur_3d(torch.zeros(3, 3, 3), bad)
    if isinstance(bad, float):
        with pytest.raises(ValueError):
            gaussian_kernel_1d(bad)
