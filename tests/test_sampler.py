"""Sampling rays from the explicit geometry: box intersection, inverse-CDF sampling, samples at the surface."""

from __future__ import annotations

import torch
from nerfstudio.cameras.rays import RayBundle

from rs_nerfstudio.sampler import (
    OccupancyGuidedSampler,
    PackedMarch,
    RayVisibility,
    block_mask,
    bins_near_matter,
    empty_space_mask,
    intersect_aabb,
    opaque_interior,
    sample_packed_pdf,
)
from rs_nerfstudio.sdf import density_from_occupancy, occupancy

BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def test_intersect_aabb() -> None:
    origins = torch.tensor([[-3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-3.0, 5.0, 0.0]])
    directions = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    near, far = intersect_aabb(origins, directions, BOX)
    torch.testing.assert_close(near[:2], torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(far[:2], torch.tensor([4.0, 1.0]))
    assert far[2] == near[2]  # a miss has an empty interval


def test_packed_march_covers_each_chord_in_steps_of_at_most_one() -> None:
    t_near = torch.tensor([0.0, 2.0, 1.0, 0.5])
    t_far = torch.tensor([3.5, 2.0, 4.0, 0.75])  # the second ray misses the box: one bin of length 0
    march = PackedMarch.through_box(t_near, t_far, step=1.0)
    assert march.counts.tolist() == [4, 1, 3, 1] and march.first.tolist() == [0, 4, 5, 8]
    assert march.ray.tolist() == [0, 0, 0, 0, 1, 2, 2, 2, 3]
    torch.testing.assert_close(march.starts[march.first], t_near)
    torch.testing.assert_close(march.ends[march.first + march.counts - 1], t_far)
    lengths = march.ends - march.starts
    same_ray = march.ray[1:] == march.ray[:-1]
    assert (lengths <= 1.0 + 1e-6).all() and (march.starts[1:] == march.ends[:-1])[same_ray].all()
    inclusive, exclusive = march.cumsum_in_rays(torch.ones(9))
    assert inclusive.tolist() == [1, 2, 3, 4, 1, 1, 2, 3, 1] and exclusive.tolist() == [0, 1, 2, 3, 0, 0, 1, 2, 0]


def test_sample_packed_pdf_follows_the_weights() -> None:
    generator = torch.Generator().manual_seed(0)
    t_near = torch.rand(500, generator=generator)
    march = PackedMarch.through_box(t_near, t_near + 1 + 9 * torch.rand(500, generator=generator), step=1.0)
    heavy = march.first + (march.counts * torch.rand(500, generator=generator)).long()  # one bin per ray
    weights = torch.full_like(march.starts, 1e-9)
    weights[heavy] = 1.0
    samples = sample_packed_pdf(march, weights, 9, stratified=True)
    assert samples.shape == (500, 9) and (samples.diff(dim=-1) >= 0).all()
    assert ((samples >= march.starts[heavy, None] - 1e-5) & (samples <= march.ends[heavy, None] + 1e-5)).all()
    uniform = sample_packed_pdf(PackedMarch.through_box(torch.zeros(2), torch.tensor([1.0, 5.0]), 1.0),
                                torch.ones(6), 5, stratified=False)  # fmt: skip
    torch.testing.assert_close(uniform, torch.tensor([[0.1, 0.3, 0.5, 0.7, 0.9], [0.5, 1.5, 2.5, 3.5, 4.5]]))


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


def test_opaque_interior_keeps_the_outer_layer_and_the_box_faces() -> None:
    grid = torch.zeros(10, 10, 10)
    grid[2:8, 2:8, 0:6] = 1.0  # a solid block resting against the box's x = 0 face
    interior = opaque_interior(grid, 0.999)
    expected = torch.zeros_like(interior)
    expected[3:7, 3:7, 1:5] = True  # one voxel in from every side, the face included
    assert torch.equal(interior, expected)
    grid[5, 5, 3] = 0.5  # a voxel that is not opaque exposes its neighbours
    assert not opaque_interior(grid, 0.999)[4:7, 4:7, 2:5].any()


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


def test_samples_stay_within_the_rays_nears_and_fars() -> None:
    """A near/far collider, or the viewer's crop box, gives the rays ``nears``/``fars``: the samples keep to them.
    The slab of the test above lies at t = 3 along these rays; cut to [2.5, 2.9], they see only the space above it."""
    resolution, voxel = 32, 2.0 / 32
    centres = torch.linspace(-1 + voxel / 2, 1 - voxel / 2, resolution)
    smoothed = (centres < 0).float()[:, None, None].expand(resolution, resolution, resolution).contiguous()
    origins = torch.tensor([[0.1, -0.2, 3.0]]).expand(64, 3)
    directions = torch.tensor([[0.0, 0.0, -1.0]]).expand(64, 3)
    density = lambda f: density_from_occupancy(occupancy(f, 40.0), 1 / voxel)  # noqa: E731
    sampler = OccupancyGuidedSampler(num_samples=16, uniform_fraction=0.0)
    mask = empty_space_mask(occupancy(smoothed, 40.0), 1e-3)
    for training in (False, True):
        bundle = RayBundle(
            origins=origins, directions=directions, pixel_area=torch.ones(64, 1),
            nears=torch.full((64, 1), 2.5), fars=torch.full((64, 1), 2.9),
        )  # fmt: skip
        samples = sampler(bundle, smoothed, mask, BOX, voxel, density, training=training)
        assert float(samples.frustums.starts.min()) >= 2.5 - 1e-6
        assert float(samples.frustums.ends.max()) <= 2.9 + 1e-6
        bundle.nears = torch.full((64, 1), 3.5)  # starts inside the slab; fars past the box's far side (t = 4)
        bundle.fars = torch.full((64, 1), 10.0)
        samples = sampler(bundle, smoothed, mask, BOX, voxel, density, training=training)
        assert float(samples.frustums.starts.min()) >= 3.5 - 1e-6
        assert float(samples.frustums.ends.max()) <= 4.0 + 1e-6


def test_visibility_sees_through_the_space_in_front_of_the_surface_only() -> None:
    """Rays down the z axis onto the slab z < 0 of the box's lower half, one per column but for the last row."""
    resolution, voxel = 32, 2.0 / 32
    centres = torch.linspace(-1 + voxel / 2, 1 - voxel / 2, resolution)
    smoothed = (centres < 0).float()[:, None, None].expand(resolution, resolution, resolution).contiguous()
    xy = torch.stack(torch.meshgrid(centres, centres[:-1], indexing="xy"), -1).reshape(-1, 2)
    origins = torch.cat([xy, torch.full((xy.shape[0], 1), 3.0)], -1)
    directions = torch.tensor([[0.0, 0.0, -1.0]]).expand_as(origins)
    bundle = RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(xy.shape[0], 1))
    density = lambda f: density_from_occupancy(occupancy(f, 40.0), 1 / voxel)  # noqa: E731
    visibility = RayVisibility.empty(smoothed.shape, torch.device("cpu"))
    mask = empty_space_mask(occupancy(smoothed, 40.0), 1e-3)
    sampler = OccupancyGuidedSampler(num_samples=8, clip=False)  # the whole chord (see the next test for clip)
    sampler.coarse_weights(bundle, smoothed, mask, BOX, voxel, density, visibility=visibility)
    assert visibility.batches == 1
    reached = torch.zeros_like(visibility.hidden)
    reached[:, :-1, :] = True  # (z, y, x): no ray ran down the last row of y
    upper = torch.zeros_like(reached)
    upper[resolution // 2 :] = True
    assert torch.equal(visibility.seen_through, reached & upper)  # empty, and light went on
    assert torch.equal(visibility.hidden, reached & ~upper)  # the slab's first voxel stops it: the rest is hidden
    through_only = RayVisibility.empty(smoothed.shape, torch.device("cpu"), behind_matter=False)
    sampler.coarse_weights(bundle, smoothed, mask, BOX, voxel, density, visibility=through_only)
    assert torch.equal(through_only.seen_through, visibility.seen_through) and through_only.behind_matter is None


def test_block_mask_is_a_max_pool_then_a_dilation() -> None:
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    for shape in [(24, 17, 9), (5, 7, 1), (3, 4, 4)]:
        mask = torch.rand(shape, generator=generator) > 0.97
        pooled = F.max_pool3d(mask[None, None].float(), kernel_size=2, stride=2, ceil_mode=True)
        expected = F.max_pool3d(pooled, kernel_size=3, stride=1, padding=1)[0, 0] > 0
        assert torch.equal(block_mask(mask, 2), expected), shape


def test_bins_near_matter_keep_every_bin_in_the_mask() -> None:
    """Random lumps and specks of matter, random rays through the box: every bin of the whole march whose midpoint
    lies in a voxel of the mask is among the bins kept; a ray that meets none keeps none, most of the time."""
    from rs_nerfstudio.grid import nearest_voxel_index

    generator = torch.Generator().manual_seed(0)
    shape = (40, 48, 32)  # (z, y, x): voxels of 2/32 x 2/48 x 2/40, not cubes
    mask = torch.rand(shape, generator=generator) > 0.9995  # specks
    for corner in torch.randint(0, 28, (4, 3), generator=generator).tolist():  # and lumps
        mask[corner[0] : corner[0] + 5, corner[1] : corner[1] + 7, corner[2] : corner[2] + 4] = True
    count = 4000
    origins = 3.0 * torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=-1)
    targets = 0.8 * (2 * torch.rand(count, 3, generator=generator) - 1)
    directions = torch.nn.functional.normalize(targets - origins, dim=-1)
    t_near, t_far = intersect_aabb(origins, directions, BOX)
    step = 2.0 / 48
    low, high = bins_near_matter(origins, directions, t_near, t_far, step, mask, block_mask(mask), BOX)
    whole = PackedMarch.through_box(t_near, t_far, step)
    mids = 0.5 * (whole.starts + whole.ends)
    index, inside = nearest_voxel_index(origins[whole.ray] + directions[whole.ray] * mids[:, None], BOX, shape)
    in_mask = inside & mask.reshape(-1)[index]
    bin_in_ray = torch.arange(mids.shape[0]) - whole.first[whole.ray]
    kept = (bin_in_ray >= low[whole.ray]) & (bin_in_ray < high[whole.ray])
    assert kept[in_mask].all()
    meets = torch.zeros(count, dtype=torch.bool).index_fill_(0, whole.ray[in_mask], True)
    assert 0.1 < meets.float().mean() < 0.8 and (high > low)[meets].all()
    assert (high == low)[~meets].float().mean() > 0.3  # those that pass no cell next to matter
    assert kept.sum() < 0.3 * kept.numel()
    clipped = PackedMarch.through_box(t_near, t_far, step, (low, high))  # the same bins, the others left out
    torch.testing.assert_close(clipped.starts[(clipped.ends > clipped.starts)], whole.starts[kept])
    assert clipped.counts.tolist() == (high - low).clamp_min(1).tolist()


def test_clipped_march_samples_as_the_whole_march() -> None:
    """Outside training (no uniform share), the samples of the clipped march are those of the whole march."""
    resolution, voxel = 32, 2.0 / 32
    generator = torch.Generator().manual_seed(0)
    smoothed = torch.zeros(resolution, resolution, resolution)
    smoothed[10:20, 12:22, 8:16] = 1.0
    count = 2000
    origins = 3.0 * torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=-1)
    directions = torch.nn.functional.normalize(0.5 * torch.rand(count, 3, generator=generator) - origins, dim=-1)
    bundle = RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(count, 1))
    density = lambda f: density_from_occupancy(occupancy(f, 40.0), 1 / voxel)  # noqa: E731
    mask = empty_space_mask(occupancy(smoothed, 40.0), 1e-3)
    samples = [
        OccupancyGuidedSampler(num_samples=16, clip=clip)(bundle, smoothed, mask, BOX, voxel, density, training=False)
        for clip in (False, True)
    ]
    hits = samples[0].metadata["coarse_accumulation"][:, 0, 0] > 1e-3
    assert 0.2 < hits.float().mean() < 0.9
    for name in ("starts", "ends"):
        torch.testing.assert_close(getattr(samples[1].frustums, name)[hits], getattr(samples[0].frustums, name)[hits])


def test_clipping_keeps_what_the_fills_need() -> None:
    """A hollow cube, with a window in its top wall and without: clipped or not, the march's record seals the cavity
    exactly when the window is shut. The clipped march leaves out only empty space far from matter, which is joined to
    the box's faces anyway. The "hidden" rule's record (what rays reached behind matter, too) is never clipped."""
    from rs_nerfstudio.grid import enclosed_voxels

    resolution, voxel = 32, 2.0 / 32
    generator = torch.Generator().manual_seed(0)
    count = 20000
    origins = 3.0 * torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=-1)
    targets = 0.6 * (2 * torch.rand(count, 3, generator=generator) - 1)
    directions = torch.nn.functional.normalize(targets - origins, dim=-1)
    bundle = RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(count, 1))
    density = lambda f: density_from_occupancy(occupancy(f, 40.0), 1 / voxel)  # noqa: E731
    for window in (True, False):
        solid = torch.zeros(resolution, resolution, resolution)
        solid[8:24, 8:24, 8:24] = 1.0
        solid[10:22, 10:22, 10:22] = 0.0  # the cavity
        if window:
            solid[22:24, 13:19, 13:19] = 0.0
        grid = occupancy(solid, 40.0)
        mask = empty_space_mask(grid, 1e-3) & ~opaque_interior(grid, 1 - 1e-3)
        records = {}
        for clip, behind_matter in ((False, False), (True, False), (False, True), (True, True)):
            visibility = RayVisibility.empty(solid.shape, torch.device("cpu"), behind_matter=behind_matter)
            sampler = OccupancyGuidedSampler(num_samples=8, clip=clip)
            sampler.coarse_weights(bundle, solid, mask, BOX, voxel, density, visibility=visibility)
            records[clip, behind_matter] = visibility
        sealed = [enclosed_voxels(solid < 0.5, records[clip, False].seen_through) for clip in (False, True)]
        assert torch.equal(sealed[0], sealed[1])
        assert sealed[0][10:22, 10:22, 10:22].all() != window and sealed[0].sum() == (0 if window else 12**3)
        assert records[True, False].seen_through.sum() < 0.75 * records[False, False].seen_through.sum()
        assert torch.equal(records[True, True].hidden, records[False, True].hidden)


def test_samples_bracket_a_surface_between_voxel_centres() -> None:
    """A steep surface 0.1 voxel above the voxel centres, met by oblique rays: the samples must render it where dense
    sampling of the same field does. Reading the voxel that holds each march point instead of interpolating puts the
    surface where that voxel ends, 0.4 voxel off here: then only ~64% of these rays render it within 0.15 voxel of
    where it is."""
    from rs_nerfstudio.grid import interpolate

    resolution, voxel = 32, 2.0 / 32
    centres = torch.linspace(-1 + voxel / 2, 1 - voxel / 2, resolution)
    surface_z = 0.1 * voxel
    ramp = torch.special.ndtr(-(centres - surface_z) / voxel)  # f_hat of the half-space z < surface_z, sigma 1 voxel
    smoothed = ramp[:, None, None].expand(resolution, resolution, resolution).contiguous()
    generator = torch.Generator().manual_seed(0)
    count = 256
    directions = torch.nn.functional.normalize(
        torch.cat([torch.rand(count, 2, generator=generator) - 0.5, -torch.ones(count, 1)], -1), dim=-1
    )
    origins = torch.cat([0.4 * (torch.rand(count, 2, generator=generator) - 0.5), torch.full((count, 1), 1.5)], -1)
    bundle = RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(count, 1))
    density = lambda f: density_from_occupancy(occupancy(f, 60.0), 1 / voxel)  # noqa: E731

    def render(positions: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> tuple:
        sigma = density(interpolate(smoothed[..., None], positions.reshape(-1, 3), BOX)[:, 0]).reshape(starts.shape)
        optical_depth = sigma * (ends - starts)
        light_in = torch.exp(-(torch.cumsum(optical_depth, dim=-1) - optical_depth))
        weights = light_in * -torch.expm1(-optical_depth)
        return weights.sum(-1), (weights * 0.5 * (starts + ends)).sum(-1) / weights.sum(-1).clamp_min(1e-8)

    dense_t = torch.linspace(0.5, 3.0, 8001).expand(count, -1)
    dense_positions = origins[:, None, :] + directions[:, None, :] * dense_t[..., None]
    _, dense_depth = render(dense_positions[:, :-1], dense_t[:, :-1], dense_t[:, 1:])
    mask = empty_space_mask(occupancy(smoothed, 60.0), 1e-3)
    within = {}
    for interpolated in (True, False):
        sampler = OccupancyGuidedSampler(num_samples=32, uniform_fraction=0.0, interpolate=interpolated)
        frustums = sampler(bundle, smoothed, mask, BOX, voxel, density, training=False).frustums
        accumulation, depth = render(frustums.get_positions(), frustums.starts[..., 0], frustums.ends[..., 0])
        assert (accumulation > 0.95).all() or not interpolated, accumulation.min()
        within[interpolated] = ((depth - dense_depth).abs() < 0.15 * voxel).float().mean()
    assert within[True] > 0.95 and within[False] < 0.75, within
