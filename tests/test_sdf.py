"""The weak SDF sigma * Phi^-1(1 - f_hat) (positive outside) against exact distances, and the occupancy and density
built on f_hat.

Shapes are voxelised fairly: each voxel holds its volume fraction inside the shape (exact for a half-space,
supersampled otherwise), then blurred by :func:`gaussian_blur_3d`. Lengths are in voxels, grids cell-centred.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Tuple

import pytest
import torch

from rs_nerfstudio.sdf import (
    SATURATION,
    density_from_occupancy,
    level_threshold,
    occupancy,
    smoothed_occupancy_from_sdf,
    weak_sdf,
)
from rs_nerfstudio.smoothing import gaussian_blur_3d, kernel_radius

SDF = Callable[[torch.Tensor], torch.Tensor]
"""Signed distance of points ``[..., 3]`` (x, y, z), negative inside."""


def cell_centres(size: int) -> torch.Tensor:
    """(x, y, z) of the voxel centres of a ``size^3`` grid ``[D, H, W] = [z, y, x]`` centred on the origin."""
    coords = torch.arange(size, dtype=torch.float64) - size / 2 + 0.5
    z, y, x = torch.meshgrid(coords, coords, coords, indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def half_space_fractions(normal: torch.Tensor, offset: float, size: int) -> torch.Tensor:
    """Exact volume fraction of each voxel in {p : normal . p < offset}, for a unit normal.

    With u uniform in the unit cube and a = |normal|, the fraction is P(a . u <= t), t = -sdf(centre) + sum(a) / 2:
    the box-spline formula sum_S (-1)^|S| (t - a_S)_+^k / (k! prod a) over the k nonzero components.
    """
    t = offset - cell_centres(size) @ normal + 0.5 * float(normal.abs().sum())
    a = [abs(v) for v in normal.tolist() if v != 0]
    total = torch.zeros_like(t)
    for subset in itertools.product((0, 1), repeat=len(a)):
        shift = sum(ai for ai, chosen in zip(a, subset) if chosen)
        total += (-1) ** sum(subset) * (t - shift).clamp(min=0) ** len(a)
    return (total / (math.factorial(len(a)) * math.prod(a))).clamp(0, 1)


def supersampled_fractions(sdf: SDF, size: int, samples: int = 4) -> torch.Tensor:
    """Volume fraction of each voxel inside ``sdf < 0`` from ``samples^3`` stratified points per voxel."""
    centres = cell_centres(size)
    inside = torch.zeros(centres.shape[:-1], dtype=torch.float64)
    for offset in itertools.product(range(samples), repeat=3):
        shift = (torch.tensor(offset, dtype=torch.float64) + 0.5) / samples - 0.5
        inside += (sdf(centres + shift) < 0).double()
    return inside / samples**3


def interior(tensor: torch.Tensor, margin: int) -> torch.Tensor:
    return tensor[margin:-margin, margin:-margin, margin:-margin]


def max_axis_step(values: torch.Tensor) -> float:
    """Largest change of a grid between neighbouring voxels along any axis."""
    return max(float(values.diff(dim=axis).abs().max()) for axis in range(values.dim()))


NORMALS = {
    "axis": [0.0, 0.0, 1.0],
    "face-diagonal": [0.0, 1.0, 1.0],
    "body-diagonal": [1.0, 1.0, 1.0],
    "oblique": [0.3, -0.5, 0.81],
}


@pytest.mark.parametrize("normal", NORMALS.values(), ids=NORMALS.keys())
def test_half_space_fractions_are_exact(normal) -> None:
    """The exact formula against dense supersampling (16^3 points per voxel: error <= 1/32 in one axis)."""
    unit = torch.tensor(normal, dtype=torch.float64) / torch.tensor(normal).norm()
    exact = half_space_fractions(unit, 0.37, 6)
    sampled = supersampled_fractions(lambda p: p @ unit - 0.37, 6, samples=16)
    assert float((exact - sampled).abs().max()) < 0.035
    assert float((exact * (1 - exact)).max()) > 0.1  # some voxels are cut well inside
    if normal == NORMALS["axis"]:  # the 1-D case: the height of the plane above the voxel's bottom face
        z = cell_centres(6)[..., 2]
        torch.testing.assert_close(exact, (0.37 - z + 0.5).clamp(0, 1), atol=1e-12, rtol=0)


# Max |weak - exact| in voxels within |d| <= 2.5 sigma, worst over NORMALS; measured 0.160, 0.107, 0.063, 0.078.
# The error is the discretisation: blurring cell-averaged occupancy adds the variance 1/12 of a voxel-wide box, so
# f_hat is smoothed by sqrt(sigma^2 + 1/12) and the weak SDF shrinks by that factor (2.5 sigma * 4% at sigma = 1).
HALF_SPACE_TOLERANCE = {1.0: 0.18, 1.5: 0.12, 2.0: 0.075, 3.0: 0.09}


@pytest.mark.parametrize("sigma", HALF_SPACE_TOLERANCE.keys())
@pytest.mark.parametrize("normal", NORMALS.values(), ids=NORMALS.keys())
def test_half_space_weak_sdf_is_the_distance(normal, sigma: float) -> None:
    """Exact for a half-space (Cohen et al.), up to discretisation, up to the saturation at 2.5 sigma (so the band is
    |d| <= 2.5 sigma, not 3 sigma: beyond, the weak SDF is +-2.5 sigma by design)."""
    size = 2 * kernel_radius(sigma) + 28
    unit = torch.tensor(normal, dtype=torch.float64) / torch.tensor(normal).norm()
    weak = weak_sdf(gaussian_blur_3d(half_space_fractions(unit, 0.37, size), sigma), sigma)
    exact = cell_centres(size) @ unit - 0.37

    # Zero padding (empty outside the grid) distorts the last kernel radius: deep inside, at a face, f_hat ~ 1/2...
    assert float((weak - exact)[exact < -SATURATION * sigma].abs().max()) > sigma
    # ...so compare one kernel radius, ceil(3 sigma), away from every face.
    margin = kernel_radius(sigma)
    weak, exact = interior(weak, margin), interior(exact, margin)
    band = exact.abs() <= SATURATION * sigma
    assert band.sum() > 1000
    assert float((weak - exact)[band].abs().max()) < HALF_SPACE_TOLERANCE[sigma]
    # A lower bound in magnitude (the certified radius); measured excess <= 0.005 voxel for sigma <= 2, but 0.08 at
    # sigma = 3, where the kernel's truncation at 3 sigma thins f_hat's tail (it would be 0.000 cut at 4 sigma).
    assert float((weak.abs() - exact.abs())[band].max()) < (0.01 if sigma <= 2 else 0.1)
    # Saturated beyond 2.5 sigma, with the right sign.
    assert float(weak.abs().max()) <= SATURATION * sigma * (1 + 1e-9)
    far = exact.abs() > SATURATION * sigma + 0.5
    torch.testing.assert_close(weak[far], SATURATION * sigma * exact[far].sign(), atol=1e-9, rtol=0)


SPHERES = [(12.0, 1.5), (16.0, 2.0)]
"""(radius, sigma) in voxels."""


@pytest.fixture(scope="module", params=SPHERES, ids=[f"R{r:g}-sigma{s:g}" for r, s in SPHERES])
def sphere(request) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float]:
    """Weak SDF, exact SDF and cell centres of a ball of radius R in a grid that holds it with a 2 sigma band
    (outside the grid is empty, which is true, so zero padding is exact here)."""
    radius, sigma = request.param
    size = 2 * math.ceil(radius + 2 * sigma) + 4
    centres = cell_centres(size)
    ball = lambda p: p.norm(dim=-1) - radius  # noqa: E731
    weak = weak_sdf(gaussian_blur_3d(supersampled_fractions(ball, size), sigma), sigma)
    return weak, ball(centres), centres, radius, sigma


def test_sphere_within_half_a_voxel_near_the_surface(sphere) -> None:
    """The issue's acceptance line; measured max error 0.27 (R 12, sigma 1.5) and 0.31 voxel (R 16, sigma 2)."""
    weak, exact, _, _, sigma = sphere
    band = exact.abs() <= 2 * sigma
    assert float((weak - exact)[band].abs().max()) < 0.5


def test_sphere_certified_radius(sphere) -> None:
    """|weak(x)| is a radius that the smoothed classifier certifies: it is at most the distance from x to the
    smoothed surface {f_hat = 1/2} = {weak = 0}.

    For a ball that surface is a sphere of radius R' < R (it shrinks by the mean curvature flow, ~ sigma^2 / R), so
    against the *base* surface the weak SDF is an upper bound as a signed function: exact <= weak, and outside the
    ball |weak| may exceed |exact| by up to sigma^2 / R (measured 0.196 vs 0.188, 0.248 vs 0.250).
    """
    weak, exact, centres, radius, sigma = sphere
    band = exact.abs() <= 2 * sigma
    # R' from the zero crossing of weak along the +x axis, by linear interpolation.
    middle = weak.shape[0] // 2
    profile, along = weak[middle, middle, middle:], centres[middle, middle, middle:, 0]
    i = int((profile > 0).nonzero()[0])
    smoothed_radius = float(along[i - 1] - profile[i - 1] * (along[i] - along[i - 1]) / (profile[i] - profile[i - 1]))
    assert radius - smoothed_radius == pytest.approx(sigma**2 / radius, abs=0.02)  # 0.201 / 0.188, 0.252 / 0.250

    to_smoothed_surface = (centres.norm(dim=-1) - smoothed_radius).abs()
    assert float((weak.abs() - to_smoothed_surface)[band].max()) < 0.03  # voxel; measured 0.017, 0.013
    assert float((weak - exact)[band].min()) > 0  # measured 0.116, 0.200
    assert float((weak.abs() - exact.abs())[band].max()) < 1.1 * sigma**2 / radius


SHAPES = {
    "ball": lambda p: p.norm(dim=-1) - 12.0,
    "box": lambda p: (lambda q: q.clamp(min=0).norm(dim=-1) + q.amax(dim=-1).clamp(max=0))(
        (p - torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)).abs()
        - torch.tensor([9.0, 6.5, 4.2], dtype=torch.float64)
    ),
    "two-balls": lambda p: torch.minimum(
        (p - torch.tensor([-5.0, 0.3, 0.2], dtype=torch.float64)).norm(dim=-1) - 7.5,
        (p - torch.tensor([6.0, -0.4, 0.1], dtype=torch.float64)).norm(dim=-1) - 6.2,
    ),
}


@pytest.mark.parametrize("sigma", [1.5, 2.0])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_one_lipschitz_by_finite_differences(shape: SDF, sigma: float) -> None:
    """|r(i + 1) - r(i)| <= 1 voxel, over the whole grid (saturated values included), up to a few percent.

    Measured worst step 1.023 / 1.033 (box), 1.005 / 1.019 (ball), 0.996 / 1.008 (two balls) at sigma 1.5 / 2, just
    inside the saturation at 2.5 sigma: there the 3-sigma truncation of the kernel makes f_hat's tail fall faster
    than a Gaussian's (cut at 4 sigma instead, the box's worst step at sigma 2 is 1.011).
    """
    weak = weak_sdf(gaussian_blur_3d(supersampled_fractions(shape, 40), sigma), sigma)
    assert float(weak.max()) > 0 > float(weak.min())
    assert max_axis_step(weak) <= 1.04


def test_one_lipschitz_half_space() -> None:
    """Along the normal of an axis-aligned plane the step is exactly the slope: measured 0.966 / 0.981 (sigma 1 /
    1.5: below 1 from the voxel box's variance), 1.020 at sigma 2 where the truncation starts to show."""
    normal = torch.tensor(NORMALS["axis"], dtype=torch.float64)
    for sigma, bound in ((1.0, 0.97), (1.5, 0.985), (2.0, 1.025)):
        size = 2 * kernel_radius(sigma) + 24
        weak = weak_sdf(gaussian_blur_3d(half_space_fractions(normal, 0.37, size), sigma), sigma)
        assert max_axis_step(interior(weak, kernel_radius(sigma))) < bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clamping_keeps_values_and_gradients_finite(dtype: torch.dtype) -> None:
    sigma = 0.1
    f_hat = torch.tensor([0.0, 1.0, 0.5, 0.3, 1e-9, 1 - 1e-7], dtype=dtype, requires_grad=True)
    sdf = weak_sdf(f_hat, sigma)
    sdf.sum().backward()
    assert torch.isfinite(sdf).all() and torch.isfinite(f_hat.grad).all()
    saturation = SATURATION * sigma
    assert float(sdf[0]) == pytest.approx(saturation, rel=1e-5)  # empty: outside, positive
    assert float(sdf[1]) == pytest.approx(-saturation, rel=1e-5)
    assert float(sdf[2]) == 0.0 and float(sdf[3]) > 0
    assert float(f_hat.grad[0]) == 0.0 and float(f_hat.grad[1]) == 0.0  # clamped
    assert float(f_hat.grad[2]) == pytest.approx(-sigma * math.sqrt(2 * math.pi), rel=1e-5)  # -sigma / phi(0)

    # Through the blur, from a base grid of exact zeros and ones.
    base = torch.zeros(8, 8, 8, dtype=dtype)
    base[:4] = 1.0
    base.requires_grad_()
    weak = weak_sdf(gaussian_blur_3d(base, 1.0), 1.0)
    weak.sum().backward()
    assert torch.isfinite(weak).all() and torch.isfinite(base.grad).all() and base.grad.abs().sum() > 0


def test_weak_sdf_inverts_the_smoothed_half_space() -> None:
    sigma = 0.1
    distance = torch.linspace(-SATURATION * sigma, SATURATION * sigma, 51, dtype=torch.float64)
    f_hat = smoothed_occupancy_from_sdf(distance, sigma)
    assert float(f_hat[0]) > 0.99 and float(f_hat[-1]) < 0.01  # inside is occupied
    torch.testing.assert_close(weak_sdf(f_hat, sigma), distance, atol=1e-9, rtol=0)


def test_occupancy() -> None:
    f_hat = torch.linspace(0, 1, 101, dtype=torch.float64)
    soft, sharp = occupancy(f_hat, 10.0), occupancy(f_hat, 80.0)
    for steepness in (1.0, 10.0, 80.0):
        assert float(occupancy(torch.tensor(0.5), steepness)) == 0.5
    assert (soft.diff() > 0).all() and (sharp.diff() >= 0).all()  # sharp reaches 1.0 in float64
    # Steeper is sharper: further from 1/2 everywhere but at f_hat = 1/2, slope alpha / 4 there.
    off = (f_hat - 0.5).abs() > 1e-9
    assert ((sharp - 0.5).abs()[off] > (soft - 0.5).abs()[off]).all()
    assert float(sharp[40]) < 0.001 and float(sharp[60]) > 0.999
    half = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(occupancy(half, 80.0), half)
    assert float(slope) == pytest.approx(20.0)
    # The level threshold moves the 1/2-crossing of G to the weak SDF's level set.
    threshold = level_threshold(0.05, 0.1)
    assert float(weak_sdf(torch.tensor(threshold, dtype=torch.float64), 0.1)) == pytest.approx(0.05, abs=1e-12)
    assert float(occupancy(torch.tensor(threshold), 30.0, threshold)) == 0.5


@pytest.mark.parametrize("scale", [1.0, 64.0])
@pytest.mark.parametrize("eps", [1e-3, 1e-6])
def test_density_makes_opacity_track_occupancy(scale: float, eps: float) -> None:
    occ = torch.linspace(0, 1, 11, dtype=torch.float64)
    density = density_from_occupancy(occ, scale, eps)
    assert float(density[0]) == 0.0 and (density.diff() > 0).all()
    assert float(density[-1]) == pytest.approx(-scale * math.log(eps), rel=1e-9)  # finite at G = 1
    opacity = 1 - torch.exp(-density / scale)  # a segment of length 1 / scale
    torch.testing.assert_close(opacity, (1 - eps) * occ, atol=1e-12, rtol=0)
    delta = 0.3 / scale  # any other length: 1 - (1 - (1 - eps) G)^(scale delta)
    torch.testing.assert_close(1 - torch.exp(-density * delta), 1 - (1 - (1 - eps) * occ) ** (scale * delta))
