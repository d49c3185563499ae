"""The weak SDF sigma * Phi^-1(1 - f_hat) against exact distances, and the occupancy and density built on f_hat."""

from __future__ import annotations

import pytest
import torch

from rs_nerfstudio.sdf import (
    density_from_occupancy,
    level_threshold,
    occupancy,
    smoothed_occupancy_from_sdf,
    weak_sdf,
)
from rs_nerfstudio.smoothing import gaussian_blur_3d

SUPERSAMPLE = 4


def volume_fractions(sdf, size: int) -> torch.Tensor:
    """Each voxel's fraction inside the shape (``sdf < 0``), from SUPERSAMPLE^3 points per voxel; voxel = 1."""
    sub = (torch.arange(SUPERSAMPLE, dtype=torch.float64) + 0.5) / SUPERSAMPLE - 0.5
    centres = torch.arange(size, dtype=torch.float64) - size / 2 + 0.5
    fine = (centres[:, None] + sub[None, :]).reshape(-1)
    z, y, x = torch.meshgrid(fine, fine, fine, indexing="ij")
    inside = (sdf(torch.stack([x, y, z], -1)) < 0).double()
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, size, SUPERSAMPLE).mean(dim=(1, 3, 5))


def node_points(size: int) -> torch.Tensor:
    centres = torch.arange(size, dtype=torch.float64) - size / 2 + 0.5
    z, y, x = torch.meshgrid(centres, centres, centres, indexing="ij")
    return torch.stack([x, y, z], -1)


def test_half_space_is_exact() -> None:
    size, sigma = 32, 1.5
    normal = torch.tensor([0.3, 0.5, 0.81], dtype=torch.float64)
    normal = normal / normal.norm()
    plane = lambda p: p @ normal - 0.37  # noqa: E731
    smoothed = gaussian_blur_3d(volume_fractions(plane, size), sigma)
    weak, exact = weak_sdf(smoothed, sigma), plane(node_points(size))
    margin = int(4 * sigma)  # zero padding outside the grid distorts the last few sigma; saturation at 2.5 sigma
    band = (exact.abs() <= 2.4 * sigma)[margin:-margin, margin:-margin, margin:-margin]
    error = (weak - exact)[margin:-margin, margin:-margin, margin:-margin][band].abs()
    assert band.sum() > 1000 and float(error.max()) < 0.08  # voxels; measured 0.054


@pytest.fixture(scope="module")
def sphere_field():
    size, sigma, radius = 40, 1.5, 12.0
    ball = lambda p: p.norm(dim=-1) - radius  # noqa: E731
    smoothed = gaussian_blur_3d(volume_fractions(ball, size), sigma)
    return weak_sdf(smoothed, sigma), ball(node_points(size)), sigma


def test_sphere_within_half_a_voxel_near_the_surface(sphere_field) -> None:
    weak, exact, sigma = sphere_field
    band = exact.abs() <= 2 * sigma
    error = (weak - exact)[band].abs()
    assert float(error.max()) < 0.5  # voxels; measured 0.27
    # The certified radius is a lower bound of the distance, up to the discretisation (measured 0.20 voxel).
    assert float((weak.abs() - exact.abs())[band].max()) < 0.25


def test_one_lipschitz_by_finite_differences(sphere_field) -> None:
    weak, _, _ = sphere_field
    for axis in range(3):
        assert float(weak.diff(dim=axis).abs().max()) <= 1.01  # voxel steps; measured 1.005


def test_clamping_keeps_values_and_gradients_finite() -> None:
    f_hat = torch.tensor([0.0, 1.0, 0.5, 0.3], requires_grad=True)
    sdf = weak_sdf(f_hat, sigma=0.1)
    sdf.sum().backward()
    assert torch.isfinite(sdf).all() and torch.isfinite(f_hat.grad).all()
    assert float(sdf[0]) == pytest.approx(0.25) and float(sdf[1]) == pytest.approx(-0.25)  # saturates at 2.5 sigma
    assert float(sdf[2]) == 0.0


def test_weak_sdf_inverts_the_smoothed_half_space() -> None:
    distance = torch.linspace(-0.24, 0.24, 49, dtype=torch.float64)
    roundtrip = weak_sdf(smoothed_occupancy_from_sdf(distance, 0.1), 0.1)
    torch.testing.assert_close(roundtrip, distance)


def test_occupancy() -> None:
    f_hat = torch.linspace(0, 1, 101)
    soft, sharp = occupancy(f_hat, 10.0), occupancy(f_hat, 80.0)
    assert float(occupancy(torch.tensor(0.5), 30.0)) == 0.5
    assert (soft.diff() > 0).all() and (sharp.diff() >= 0).all()
    assert float(sharp[40]) < float(soft[40]) and float(sharp[60]) > float(soft[60])
    # The level threshold moves the 1/2-crossing of G to the weak SDF's level set.
    threshold = level_threshold(0.05, 0.1)
    assert float(weak_sdf(torch.tensor(threshold), 0.1)) == pytest.approx(0.05, abs=1e-5)
    assert float(occupancy(torch.tensor(threshold), 30.0, threshold)) == 0.5


def test_density_makes_opacity_track_occupancy() -> None:
    scale, eps = 64.0, 1e-3
    occ = torch.linspace(0, 1, 11, dtype=torch.float64)
    density = density_from_occupancy(occ, scale, eps)
    assert float(density[0]) == 0.0 and (density >= 0).all()
    assert float(density[-1]) == pytest.approx(-scale * torch.log(torch.tensor(eps)).item())
    opacity = 1 - torch.exp(-density / scale)  # a segment of length 1 / scale
    torch.testing.assert_close(opacity, (1 - eps) * occ)
