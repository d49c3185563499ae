"""The rs-sdf field's caches: what evaluation and the viewer render must follow the training."""

from __future__ import annotations

import math

import torch

from rs_nerfstudio import grid as grids
from rs_nerfstudio.field import RSSDFField
from rs_nerfstudio.smoothing import gaussian_blur_3d

BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def test_cached_smoothing_follows_fused_adam_steps() -> None:
    """torch's fused Adam changes parameters without bumping their version counter; the cache must still notice."""
    field = RSSDFField(aabb=BOX, resolution=16, sigma=0.15, appearance_resolution=8)
    optimizer = torch.optim.Adam([field.base_logits], lr=0.5, fused=True)
    with torch.no_grad():
        before = field.smoothed_occupancy_grid().clone()  # evaluation: computed once, then cached
    for _ in range(2):  # two training steps, each a forward with gradients and a fused optimizer step
        version = field.base_logits._version
        (field.smoothed_occupancy_grid() * torch.linspace(0, 1, 16)).sum().backward()
        optimizer.step()
        assert field.base_logits._version == version  # the trap itself: the counter did not move
        with torch.no_grad():
            cached = field.smoothed_occupancy_grid()
        expected = gaussian_blur_3d(torch.sigmoid(field.base_logits.detach()), field.sigma_voxels())
        torch.testing.assert_close(cached, expected)
    assert not torch.allclose(before, cached)
    with torch.no_grad():
        assert field.smoothed_occupancy_grid() is cached  # and no change, no recomputation


def test_cached_smoothing_follows_load_state_dict_and_sigma() -> None:
    field = RSSDFField(aabb=BOX, resolution=16, sigma=0.15, appearance_resolution=8)
    with torch.no_grad():
        first = field.smoothed_occupancy_grid().clone()
        state = field.state_dict()
        state["base_logits"] = torch.randn(field.grid_shape)
        field.load_state_dict(state)
        loaded = field.smoothed_occupancy_grid()
        torch.testing.assert_close(loaded, gaussian_blur_3d(torch.sigmoid(state["base_logits"]), field.sigma_voxels()))
        assert not torch.allclose(first, loaded)
        wider = field.smoothed_occupancy_grid(sigma=0.3)
        assert not torch.allclose(wider, loaded)


def hollow_shell_field() -> tuple:
    """A closed spherical shell of matter around never-seen fog (the initial occupancy 0.3)."""
    field = RSSDFField(aabb=BOX, resolution=32, sigma=0.07, appearance_resolution=8, initial_occupancy=0.3)
    radius = grids.grid_coords_of_nodes(field.aabb, field.grid_shape).norm(dim=-1)
    with torch.no_grad():
        field.base_logits[(radius > 0.45) & (radius < 0.6)] = 6.0
    return field, radius


def test_make_solid_fills_a_hollow_shell() -> None:
    field, radius = hollow_shell_field()
    hidden = radius < 0.6  # what cameras outside the shell reach only behind matter
    fog = radius <= 0.45
    centre = torch.zeros(1, 3)
    wall_before = field.base_logits[~fog].clone()
    with torch.no_grad():
        assert field.weak_sdf(centre) > 0  # the fog inside counts as outside the surface: an inner shell
        assert field.make_solid(hidden, occupancy=0.99) == int(fog.sum())
        assert field.weak_sdf(centre) < 0  # solid now
    torch.testing.assert_close(field.base_logits[fog], torch.full((int(fog.sum()),), math.log(99.0)))
    assert torch.equal(field.base_logits[~fog], wall_before)  # the wall (6.0) is above 0.99 already
    assert field.make_solid(hidden) == 0  # nothing left to fill


def test_make_solid_raises_only_its_region_and_never_lowers() -> None:
    field, radius = hollow_shell_field()
    hidden = (radius >= 0.3) & (radius < 0.6)  # a camera inside the shell sees through the space around it
    before = field.base_logits.detach().clone()
    with torch.no_grad():
        assert field.make_solid(hidden) == int((hidden & (radius <= 0.45)).sum())
        assert field.make_solid(hidden, occupancy=0.5) == 0  # below what is there: nothing is lowered
        assert field.base_occupancy(torch.zeros(1, 3)) < 0.5
    changed = field.base_logits.detach() != before
    assert torch.equal(changed, hidden & (radius <= 0.45))


def ball_field(radius: float = 0.3, centre=(0.2, -0.1, 0.0)) -> RSSDFField:
    """A solid ball of matter in empty space."""
    field = RSSDFField(aabb=BOX, resolution=40, sigma=0.06, appearance_resolution=20)
    distance = (grids.grid_coords_of_nodes(field.aabb, field.grid_shape) - torch.tensor(centre)).norm(dim=-1)
    with torch.no_grad():
        field.base_logits.copy_(torch.where(distance < radius, 8.0, -8.0))
    return field


def test_occupied_box_bounds_the_matter_with_its_margin() -> None:
    field = ball_field()
    box = field.occupied_box(margin=0.1)
    centre = torch.tensor([0.2, -0.1, 0.0])
    # The ball's f_hat > 1/2 region is the ball to within a voxel (0.05): the box is it, grown by 0.1.
    torch.testing.assert_close(box, torch.stack([centre - 0.4, centre + 0.4]), atol=0.05, rtol=0)
    assert torch.equal(field.occupied_box(margin=5.0), BOX)  # clipped to the scene box
    empty = RSSDFField(aabb=BOX, resolution=8, sigma=0.2, appearance_resolution=4)
    assert empty.occupied_box(margin=0.1) is None


def test_occupied_box_ignores_a_lone_voxel_at_a_sigma_far_below_the_voxel() -> None:
    """At sigma = 0.1 voxel the blur is nearly the identity: a speck of fog at a corner would stretch the box."""
    field = ball_field()
    field.sigma = 0.1 * field.voxel_length
    ball_box = field.occupied_box(margin=0.0)
    with torch.no_grad():
        field.base_logits[1, 1, 1] = 8.0  # one voxel of matter near the box's low corner
        assert float(field.smoothed_occupancy_grid()[1, 1, 1]) > 0.99  # inside at the field's own sigma
    torch.testing.assert_close(field.occupied_box(margin=0.0), ball_box)
    with torch.no_grad():
        field.base_logits[1:4, 1:4, 1:4] = 8.0  # a 3-voxel cube is matter at half a voxel's sigma too
    assert torch.equal(field.occupied_box(margin=0.0)[0], BOX[0] + field.voxel)


def test_resample_to_box_keeps_the_surface_and_refines_the_voxels() -> None:
    field = ball_field()
    points = torch.tensor([0.2, -0.1, 0.0]) + 0.6 * (torch.rand(500, 3) - 0.5)
    with torch.no_grad():
        before = field.weak_sdf(points)
        box = field.occupied_box(margin=0.15)
        old_parameters = (field.base_logits, field.features)
        field.resample_to_box(box)
        after = field.weak_sdf(points)
    assert field.grid_shape == grids.grid_shape_for_box(box, 40)
    assert float(field.voxel.max()) < 0.05 / 2  # 40 voxels over 0.9 instead of 2 units
    assert field.base_logits is not old_parameters[0] and field.features is not old_parameters[1]
    assert field.features.shape[:3] == grids.grid_shape_for_box(box, 20)
    # The blur now runs on finer voxels, so f_hat changes a little; the weak SDF stays within a fifth of a voxel.
    assert (after - before).abs().median() < 0.2 * 0.05


def test_a_fitted_checkpoint_loads_into_a_new_field_and_its_optimizer() -> None:
    """ns-viewer, ns-eval and resumed training build the field on the scene box, then load a fitted checkpoint."""
    fitted = ball_field()
    with torch.no_grad():
        fitted.resample_to_box(fitted.occupied_box(margin=0.15))
    fresh = ball_field(radius=0.5)
    optimizer = torch.optim.Adam([fresh.base_logits, fresh.features], lr=0.1)  # made before loading, as nerfstudio does
    fresh.load_state_dict(fitted.state_dict())
    assert fresh.grid_shape == fitted.grid_shape and fresh.appearance_shape == fitted.appearance_shape
    torch.testing.assert_close(fresh.voxel, fitted.voxel)
    points = torch.rand(100, 3) - 0.5
    with torch.no_grad():
        torch.testing.assert_close(fresh.weak_sdf(points), fitted.weak_sdf(points))
    assert optimizer.param_groups[0]["params"][0] is fresh.base_logits  # still the optimizer's parameter
    fresh.smoothed_occupancy_grid().sum().backward()
    optimizer.step()  # shapes agree: the optimizer trains the loaded grid


def test_reset_appearance_starts_colour_over_and_keeps_the_geometry() -> None:
    field = ball_field()
    with torch.no_grad():
        field.features.fill_(3.0)
        for parameter in field.colour_mlp.parameters():
            parameter.fill_(1.0)
    logits = field.base_logits.detach().clone()
    field.reset_appearance()
    torch.testing.assert_close(field.base_logits.detach(), logits)
    assert 0.08 < float(field.features.std()) < 0.12 and float(field.features.mean().abs()) < 0.02
    assert all(not torch.all(parameter == 1.0) for parameter in field.colour_mlp.parameters())


def test_a_checkpoint_from_before_the_colour_heads_loads_and_colours_as_it_did() -> None:
    """Runs saved with one nn.Sequential colour MLP and 12 features load into a field of two heads as one head."""
    torch.manual_seed(0)
    saved = RSSDFField(aabb=BOX, resolution=16, sigma=0.15, appearance_resolution=8, colour_heads=1)
    state = saved.state_dict()
    for layer, index in enumerate((0, 2, 4)):  # back to the old names and layout: nn.Linear's (out, in) weights
        state[f"colour_mlp.{index}.weight"] = state.pop(f"colour_mlp.weights.{layer}")[0].T
        state[f"colour_mlp.{index}.bias"] = state.pop(f"colour_mlp.biases.{layer}")[0, 0]
    field = RSSDFField(aabb=BOX, resolution=16, sigma=0.15, appearance_resolution=8, colour_heads=2)
    field.load_state_dict(state)
    points = torch.rand(100, 3) * 2.0 - 1.0
    directions = torch.nn.functional.normalize(torch.randn(100, 3), dim=-1)
    assert field.features.shape == saved.features.shape and field.colour_mlp.heads == 1
    torch.testing.assert_close(field.colour(points, directions), saved.colour(points, directions))


def staggered_linear_field() -> tuple:
    """Two staggered colour heads whose features are linear in position: head k's voxel v holds the function at v's
    centre minus head k's offset, so that either head reads the same linear function at any point inside."""
    field = RSSDFField(aabb=BOX, resolution=16, appearance_resolution=10, appearance_dim=2, colour_heads=2,
                       stagger_colour=True)  # fmt: skip
    slope = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-0.7, 1.5]])  # xyz -> 2 features

    def linear(points: torch.Tensor) -> torch.Tensor:
        return points @ slope + torch.tensor([0.1, -0.2])

    centres = grids.grid_coords_of_nodes(field.aabb, field.appearance_shape)
    offsets = field.colour_offsets
    with torch.no_grad():
        field.features.copy_(torch.cat([linear(centres - offsets[k]) for k in range(2)], dim=-1))
    return field, linear


def test_staggered_heads_read_their_grids_half_a_voxel_apart() -> None:
    field, linear = staggered_linear_field()
    voxel = grids.voxel_size(field.aabb, field.appearance_shape)
    torch.testing.assert_close(field.colour_offsets, torch.stack([torch.zeros(3), voxel / 2]))
    points = 1.2 * torch.rand(200, 3) - 0.6  # inside, where no head's read is clamped at the border
    with torch.no_grad():
        features = field.appearance_features(points)
        expected = torch.cat([linear(points)] * 2, dim=-1)
        torch.testing.assert_close(features, expected)
        aligned = grids.interpolate(field.features, points, field.aabb)
        assert (aligned[:, 2:] - expected[:, 2:]).abs().max() > 0.05  # read unstaggered, head 1 would be off
        shares = torch.rand(200)
        ray = torch.arange(200) // 10
        composite = field.composite_appearance(points, shares, ray, 20)
        torch.testing.assert_close(composite, torch.zeros(20, 4).index_add(0, ray, shares[:, None] * expected))


def test_resample_to_box_keeps_what_staggered_heads_read() -> None:
    field, linear = staggered_linear_field()
    box = torch.tensor([[-0.6, -0.5, -0.4], [0.6, 0.5, 0.4]])
    with torch.no_grad():
        field.resample_to_box(box)
        points = 0.6 * (torch.rand(200, 3) - 0.5) * (box[1] - box[0])  # where no read is clamped at the border
        torch.testing.assert_close(field.appearance_features(points), torch.cat([linear(points)] * 2, dim=-1))
    assert field.features.shape[:3] == grids.grid_shape_for_box(box, 10)


def test_a_checkpoint_from_before_staggering_renders_with_aligned_heads() -> None:
    """Two-head runs saved before the heads' grids were staggered were trained aligned, and load so."""
    saved = RSSDFField(aabb=BOX, resolution=16, appearance_resolution=8, colour_heads=2, stagger_colour=True)
    state = saved.state_dict()
    assert float(state["colour_stagger"]) == 1.0
    fresh = RSSDFField(aabb=BOX, resolution=16, appearance_resolution=8, colour_heads=2, stagger_colour=True)
    fresh.load_state_dict(state)
    assert fresh.staggered
    del state["colour_stagger"]
    fresh.load_state_dict(state)
    assert not fresh.staggered
    points = torch.rand(50, 3) * 2.0 - 1.0
    with torch.no_grad():
        torch.testing.assert_close(fresh.appearance_features(points), grids.interpolate(saved.features, points, BOX))


def test_the_weak_sdf_gradient_of_a_ball_points_outward_with_unit_length() -> None:
    """Near a ball's surface the weak SDF is close to the signed distance, whose gradient is the unit radial
    direction: the field's central differences must find it (rendered normals and mesh colours read them)."""
    field = RSSDFField(aabb=BOX, resolution=48, sigma=0.08, appearance_resolution=4)
    centres = grids.grid_coords_of_nodes(field.aabb, field.grid_shape)
    inside = (centres.norm(dim=-1) < 0.5).float().clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():
        field.base_logits.copy_(torch.log(inside / (1 - inside)))
    generator = torch.Generator().manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(200, 3, generator=generator), dim=-1)
    points = directions * (0.5 + 0.1 * (torch.rand(200, 1, generator=generator) - 0.5))  # within 0.05 of the surface
    gradient = field.sdf_gradient(points)
    # Measured: cosines from 0.9991, lengths 0.956-0.984 (1-Lipschitz, and a ball's weak SDF is a little flatter).
    assert float((torch.nn.functional.normalize(gradient, dim=-1) * directions).sum(-1).min()) > 0.995
    assert 0.9 < float(gradient.norm(dim=-1).min()) and float(gradient.norm(dim=-1).max()) < 1.02
