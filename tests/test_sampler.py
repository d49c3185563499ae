"""Sampling rays from the explicit geometry: box intersection, inverse-CDF sampling, samples at the surface."""

from __future__ import annotations

import torch
from nerfstudio.cameras.rays import RayBundle

from rs_nerfstudio.sampler import OccupancyGuidedSampler, empty_space_mask, intersect_aabb, sample_pdf
from rs_nerfstudio.sdf import density_from_occupancy, occupancy

BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def test_intersect_aabb() -> None:
    origins = torch.tensor([[-3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-3.0, 5.0, 0.0]])
    directions = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    near, far = intersect_aabb(origins, directions, BOX)
    torch.testing.assert_close(near[:2], torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(far[:2], torch.tensor([4.0, 1.0]))
    assert far[2] == near[2]  # a miss has an empty interval


def test_sample_pdf_follows_the_weights() -> None:
    bins = torch.linspace(0, 1, 11).expand(2000, 11)
    weights = torch.zeros(2000, 10)
    weights[:, 3] = 1.0  # all mass in [0.3, 0.4]
    samples = sample_pdf(bins, weights, 9, stratified=True)
    assert ((samples >= 0.3 - 1e-6) & (samples <= 0.4 + 1e-6)).all()
    assert (samples.diff(dim=-1) >= 0).all()
    uniform = sample_pdf(bins[:1], torch.ones(1, 10), 5, stratified=False)
    torch.testing.assert_close(uniform, torch.tensor([[0.1, 0.3, 0.5, 0.7, 0.9]]))


def test_empty_space_mask_dilates_by_one_voxel() -> None:
    grid = torch.zeros(5, 5, 5)
    grid[2, 2, 2] = 1.0
    mask = empty_space_mask(grid, 0.5)
    assert mask.sum() == 27 and mask[1:4, 1:4, 1:4].all()


def test_empty_space_mask_equals_a_max_pool() -> None:
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    for shape in [(24, 17, 9), (5, 7, 1), (1, 4, 4)]:
        grid = torch.rand(shape, generator=generator) ** 8  # sparse: a few voxels above the threshold
        expected = F.max_pool3d(grid[None, None], kernel_size=3, stride=1, padding=1)[0, 0] > 0.5
        assert torch.equal(empty_space_mask(grid, 0.5), expected), shape


def test_samples_concentrate_at_the_surface() -> None:
    """A slab z < 0 of smoothed occupancy 1: rays coming down the z axis put their samples near z = 0."""
    resolution, voxel = 32, 2.0 / 32
    centres = torch.linspace(-1 + voxel / 2, 1 - voxel / 2, resolution)
    smoothed = (centres < 0).float()[:, None, None].expand(resolution, resolution, resolution).contiguous()
    origins = torch.tensor([[0.1, -0.2, 3.0]]).expand(64, 3)
    directions = torch.tensor([[0.0, 0.0, -1.0]]).expand(64, 3)
    bundle = RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(64, 1))
    density = lambda f: density_from_occupancy(occupancy(f, 40.0), 1 / voxel)  # noqa: E731
    sampler = OccupancyGuidedSampler(num_samples=16, uniform_fraction=0.0)
    mask = empty_space_mask(occupancy(smoothed, 40.0), 1e-3)
    samples = sampler(bundle, smoothed, mask, BOX, voxel, density, training=False)
    z = samples.frustums.get_positions()[..., 2]
    assert samples.frustums.shape == (64, 16)
    assert (z.abs() < 3 * voxel).float().mean() > 0.9, z[0]
