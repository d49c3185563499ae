"""Cell-centred grids: interpolation against grid_sample, gradients, layout, memory estimate."""

from __future__ import annotations

import math

import psutil
import pytest
import torch
import torch.nn.functional as F

from rs_nerfstudio import grid as grids

AABB = torch.tensor([[-1.0, -2.0, 0.0], [1.0, 2.0, 3.0]])


def grid_sample_reference(grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """torch's own trilinear interpolation, with the border-clamp convention of :func:`grids.interpolate`."""
    coords = ((points - AABB[0]) / (AABB[1] - AABB[0]) * 2 - 1).reshape(1, -1, 1, 1, 3)
    channels_first = grid.permute(3, 0, 1, 2)[None]
    out = F.grid_sample(channels_first, coords, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(grid.shape[-1], -1).T


@pytest.mark.parametrize("shape", [(5, 7, 9), (12, 6, 4)])
def test_interpolate_matches_grid_sample(shape) -> None:
    torch.manual_seed(0)
    grid = torch.randn(*shape, 3, dtype=torch.float64)
    points = AABB[0] + torch.rand(500, 3, dtype=torch.float64) * (AABB[1] - AABB[0]) * 1.2 - 0.1 * (AABB[1] - AABB[0])
    ours = grids.interpolate(grid, points, AABB.double())
    torch.testing.assert_close(ours, grid_sample_reference(grid, points), atol=1e-6, rtol=0)


def test_one_channel_without_gradient_takes_grid_sample_and_agrees_with_the_corners() -> None:
    torch.manual_seed(2)
    grid = torch.randn(7, 5, 6, 1)
    points = AABB[0] + torch.rand(2000, 3) * (AABB[1] - AABB[0]) * 1.2 - 0.1 * (AABB[1] - AABB[0])  # some outside
    with torch.no_grad():
        fast = grids.interpolate(grid, points, AABB)
    corners = grids.interpolate(grid.clone().requires_grad_(), points, AABB)  # the differentiable path
    assert corners.requires_grad and not fast.requires_grad
    torch.testing.assert_close(fast, corners.detach(), atol=1e-5, rtol=0)


def test_interpolate_is_exact_at_voxel_centres() -> None:
    shape = (4, 5, 6)
    grid = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(*shape, 1)
    centres = grids.grid_coords_of_nodes(AABB, shape)
    torch.testing.assert_close(grids.interpolate(grid, centres.reshape(-1, 3), AABB)[:, 0], grid.reshape(-1))


@pytest.mark.parametrize("channels", [1, 2])  # one channel's gradient is a bincount, several an index_add_
def test_gradient_matches_autograd_of_grid_sample(channels: int) -> None:
    torch.manual_seed(1)
    grid = torch.randn(6, 5, 4, channels, dtype=torch.float64, requires_grad=True)
    points = AABB[0] + torch.rand(300, 3, dtype=torch.float64) * (AABB[1] - AABB[0])
    weights = torch.randn(300, channels, dtype=torch.float64)
    (grids.interpolate(grid, points, AABB.double()) * weights).sum().backward()
    ours = grid.grad.clone()
    grid.grad = None
    (grid_sample_reference(grid, points) * weights).sum().backward()
    torch.testing.assert_close(ours, grid.grad)


def test_composite_equals_summing_interpolated_values_with_gradients() -> None:
    """Rays of points a fraction of a voxel apart, many in one cell: the per-cell gather gives the per-point sums,
    and the same gradients for the grid and the coefficients."""
    generator = torch.Generator().manual_seed(0)
    box = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    grid = torch.randn(6, 7, 8, 5, generator=generator, dtype=torch.float64)
    num_rays, per_ray = 40, 12
    starts = 2 * torch.rand(num_rays, 1, 3, generator=generator, dtype=torch.float64) - 1
    steps = 0.04 * torch.randn(num_rays, 1, 3, generator=generator, dtype=torch.float64)
    points = (starts + steps * torch.arange(per_ray, dtype=torch.float64)[:, None]).reshape(-1, 3)
    keep = torch.rand(points.shape[0], generator=generator) > 0.2  # some points are left out, some rays empty
    keep[: 2 * per_ray] = False
    ray = torch.arange(num_rays).repeat_interleave(per_ray)[keep]
    points = points[keep]
    coefficients = torch.rand(points.shape[0], generator=generator, dtype=torch.float64)
    grid_a, coeff_a = grid.clone().requires_grad_(), coefficients.clone().requires_grad_()
    grid_b, coeff_b = grid.clone().requires_grad_(), coefficients.clone().requires_grad_()
    merged = grids.composite(grid_a, points, coeff_a, ray, num_rays, box)
    per_point = coeff_b[:, None] * grids.interpolate(grid_b, points, box)
    expected = torch.zeros(num_rays, 5, dtype=torch.float64).index_add(0, ray, per_point)
    torch.testing.assert_close(merged, expected)
    assert (merged[:2] == 0).all()
    upstream = torch.randn(num_rays, 5, generator=generator, dtype=torch.float64)
    (merged * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(grid_a.grad, grid_b.grad)
    torch.testing.assert_close(coeff_a.grad, coeff_b.grad)
    index, _ = grids.trilinear_corners(points, box, grid.shape[:3])
    cells = torch.unique_consecutive(ray * grid[..., 0].numel() + index[:, 0]).numel()
    assert cells < 0.5 * points.shape[0]  # the case it is for: several points per cell


def test_staggered_grids_read_each_slice_at_shifted_points_with_gradients() -> None:
    """Three grids of 2 channels side by side, each read at the points shifted by its offset: the same values and
    gradients as compositing (and interpolating) each slice on its own at its shifted points."""
    generator = torch.Generator().manual_seed(1)
    box = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    grid = torch.randn(6, 7, 8, 6, generator=generator, dtype=torch.float64)
    offsets = torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.05, 0.2], [-0.3, 0.1, 0.0]], dtype=torch.float64)
    num_rays, per_ray = 30, 10
    starts = 1.6 * torch.rand(num_rays, 1, 3, generator=generator, dtype=torch.float64) - 0.8
    steps = 0.05 * torch.randn(num_rays, 1, 3, generator=generator, dtype=torch.float64)
    points = (starts + steps * torch.arange(per_ray, dtype=torch.float64)[:, None]).reshape(-1, 3)
    ray = torch.arange(num_rays).repeat_interleave(per_ray)
    coefficients = torch.rand(points.shape[0], generator=generator, dtype=torch.float64)
    grid_a, coeff_a = grid.clone().requires_grad_(), coefficients.clone().requires_grad_()
    grid_b, coeff_b = grid.clone().requires_grad_(), coefficients.clone().requires_grad_()
    staggered = grids.composite(grid_a, points, coeff_a, ray, num_rays, box, offsets)
    expected = torch.cat(
        [grids.composite(grid_b[..., 2 * k : 2 * k + 2], points + offsets[k], coeff_b, ray, num_rays, box)
         for k in range(3)],
        dim=-1,
    )  # fmt: skip
    torch.testing.assert_close(staggered, expected)
    upstream = torch.randn(num_rays, 6, generator=generator, dtype=torch.float64)
    (staggered * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(grid_a.grad, grid_b.grad)
    torch.testing.assert_close(coeff_a.grad, coeff_b.grad)
    values = grids.interpolate(grid, points, box, offsets)
    each = [grids.interpolate(grid[..., 2 * k : 2 * k + 2], points + offsets[k], box) for k in range(3)]
    torch.testing.assert_close(values, torch.cat(each, dim=-1))
    assert not torch.allclose(values, grids.interpolate(grid, points, box))  # the offsets do shift what is read


def test_staggered_grids_refuse_channels_that_do_not_split() -> None:
    with pytest.raises(ValueError, match="5 channels do not split into 2 grids"):
        grids.interpolate(torch.zeros(3, 3, 3, 5), torch.zeros(1, 3), AABB, torch.zeros(2, 3))


def test_composite_of_no_points_is_zero_with_zero_gradients() -> None:
    """A batch where no sample shows (every weight under the colour threshold) composites nothing, and backs up."""
    box = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    grid = torch.randn(4, 5, 6, 3, requires_grad=True)
    coefficients = torch.zeros(0, requires_grad=True)
    merged = grids.composite(grid, torch.zeros(0, 3), coefficients, torch.zeros(0, dtype=torch.long), 7, box)
    assert merged.shape == (7, 3) and (merged == 0).all()
    merged.sum().backward()
    assert (grid.grad == 0).all() and coefficients.grad.shape == (0,)


def test_grid_shape_keeps_voxels_near_cubic() -> None:
    shape = grids.grid_shape_for_box(AABB, 64)
    assert shape == (48, 64, 32)  # (D, H, W) = (z, y, x) for extents (2, 4, 3)
    size = grids.voxel_size(AABB, shape)
    assert float(size.max() / size.min()) < 1.02


def test_nearest_voxel_index_and_inside() -> None:
    shape = (3, 3, 3)
    box = torch.tensor([[0.0, 0.0, 0.0], [3.0, 3.0, 3.0]])
    flat, inside = grids.nearest_voxel_index(torch.tensor([[0.5, 0.5, 0.5], [2.5, 1.5, 0.5], [3.5, 0.5, 0.5]]), box, shape)
    assert flat[:2].tolist() == [0, 2 + 3] and inside.tolist() == [True, True, False]


def test_the_memory_estimate_covers_what_a_training_step_keeps() -> None:
    """After a step of rs-sdf's optimizers, each grid's parameter, gradient and optimizer state are alive: the
    estimate for the grid's voxels and channels must cover them (the step's transient copies come on top)."""
    from nerfstudio.data.scene_box import SceneBox
    from nerfstudio.engine.optimizers import Optimizers

    from rs_nerfstudio.config import rs_sdf_trainer_config
    from rs_nerfstudio.model import RSSDFModelConfig

    model = RSSDFModelConfig(grid_resolution=24, appearance_resolution=12).setup(
        scene_box=SceneBox(aabb=torch.tensor([[-1.5] * 3, [1.5] * 3])), num_train_data=1
    )
    config = rs_sdf_trainer_config()
    config.resolve_defaults()
    optimizers = Optimizers(config.optimizers, model.get_param_groups())
    field = model.field
    (field.smoothed_occupancy_grid().sum() + field.features.sum()).backward()
    optimizers.optimizer_step_all()
    for group, grid in (("geometry", field.base_logits), ("appearance", field.features)):
        state = optimizers.optimizers[group].state[grid]
        kept = [grid, grid.grad, *(value for value in state.values() if value.numel() == grid.numel())]
        assert len(kept) == 4  # the parameter, its gradient, Adam's two moments
        voxels, channels = math.prod(grid.shape[:3]), (grid.shape[3] if grid.dim() == 4 else 1)
        assert grids.training_memory_bytes(voxels, channels) >= sum(t.numel() * t.element_size() for t in kept)
    assert 0 < grids.available_memory_bytes("cpu") <= psutil.virtual_memory().total


def hollow_cube(size: int = 12, wall: int = 2) -> torch.Tensor:
    """An empty-space mask: True everywhere but a closed cubic shell of matter ``wall`` voxels thick."""
    matter = torch.zeros(size, size, size, dtype=torch.bool)
    matter[3:-3, 3:-3, 3:-3] = True
    matter[3 + wall : -3 - wall, 3 + wall : -3 - wall, 3 + wall : -3 - wall] = False
    return ~matter


def test_enclosed_voxels_finds_the_sealed_cavity_only() -> None:
    empty = hollow_cube()
    enclosed = grids.enclosed_voxels(empty)
    expected = torch.zeros_like(empty)
    expected[5:-5, 5:-5, 5:-5] = True
    assert torch.equal(enclosed, expected)


def test_enclosed_voxels_a_hole_or_a_camera_opens_the_cavity() -> None:
    empty = hollow_cube()
    holed = empty.clone()
    holed[6, 6, 3:5] = True  # a one-voxel tunnel through the wall
    assert not grids.enclosed_voxels(holed).any()
    camera = torch.zeros_like(empty)
    camera[6, 6, 6] = True  # a ray saw through a voxel inside: a camera stands there, or a wall lets light in
    assert not grids.enclosed_voxels(empty, camera).any()


def test_enclosed_voxels_diagonal_gaps_do_not_leak() -> None:
    """Empty voxels touching only along an edge are not a passage: the shell still seals its cavity."""
    empty = hollow_cube(wall=1)
    empty[6, 3, 6] = True  # carve a cell out of the wall's face...
    empty[6, 4, 7] = True  # ...and one inside the cavity, touching it only along an edge (y and x both differ)
    empty[6, 4, 6] = False
    enclosed = grids.enclosed_voxels(empty)
    assert enclosed[6, 4, 7] and not enclosed[6, 3, 6]
