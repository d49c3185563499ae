"""The rs-sdf model's training-time behaviour: fitting the grids' box, filling hidden space."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.engine.optimizers import Optimizers

from rs_nerfstudio import grid as grids
from rs_nerfstudio.config import rs_sdf_trainer_config
from rs_nerfstudio.field import RSSDFField
from rs_nerfstudio.model import RSSDFModelConfig, indecision
from rs_nerfstudio.sampler import OccupancyGuidedSampler


def small_model(**overrides):
    config = RSSDFModelConfig(grid_resolution=32, appearance_resolution=16, sigma=0.1, **overrides)
    return config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.5] * 3, [1.5] * 3])), num_train_data=1)


def default_optimizers(model) -> Optimizers:
    """rs-sdf's optimizers and schedules, as ns-train makes them."""
    config = rs_sdf_trainer_config()
    config.resolve_defaults()
    return Optimizers(config.optimizers, model.get_param_groups())


def test_the_field_and_sampler_default_to_the_methods_settings() -> None:
    """Scripts that build the field or the sampler directly get what `ns-train rs-sdf` trains with."""
    config = RSSDFModelConfig()
    method = {
        RSSDFField: {
            "resolution": config.grid_resolution,
            "sigma": config.sigma,
            "steepness": config.initial_steepness,
            "density_eps": config.density_eps,
            "initial_occupancy": config.initial_occupancy,
            "appearance_resolution": config.appearance_resolution,
            "appearance_dim": config.appearance_dim,
            "hidden_dim": config.hidden_dim,
            "sh_levels": config.sh_levels,
            "colour_heads": config.colour_heads,
            "stagger_colour": config.stagger_colour,
        },
        OccupancyGuidedSampler: {
            "num_samples": config.num_samples,
            "coarse_step": config.coarse_step,
            "uniform_fraction": config.uniform_sample_fraction,
            "interpolate": config.coarse_read == "interpolated",
            "clip": config.clip_march,
        },
    }
    for cls, settings in method.items():
        defaults = inspect.signature(cls.__init__).parameters
        assert {name: defaults[name].default for name in settings} == settings, cls.__name__


def test_the_coarse_stage_then_the_fitted_box_train_through_the_optimizers() -> None:
    model = small_model(coarse_scale=0.5)
    assert model.field.grid_shape == (16, 16, 16) and not model.box_fitted
    optimizers = default_optimizers(model)
    assert not model.fit_box(optimizers)  # no matter yet: nothing to fit
    centres = grids.grid_coords_of_nodes(model.field.aabb, model.field.grid_shape)
    with torch.no_grad():
        model.field.base_logits.copy_(torch.where(centres.norm(dim=-1) < 0.6, 8.0, -8.0))
    model.field.smoothed_occupancy_grid().sum().backward()
    optimizers.optimizer_step_all()  # Adam now has moments for the coarse grid

    assert model.fit_box(optimizers) and model.box_fitted
    assert max(model.field.grid_shape) == 32 and float(model.field.aabb[1, 0]) < 1.0
    geometry = optimizers.optimizers["geometry"]
    assert geometry.param_groups[0]["params"] == [model.field.base_logits]
    assert optimizers.parameters["appearance"] == [model.field.features]
    before = model.field.base_logits.detach().clone()
    model.field.smoothed_occupancy_grid().sum().backward()
    optimizers.optimizer_step_all()  # no stale moments of the old shape, and the new grid moves
    assert not torch.equal(before, model.field.base_logits.detach())


def test_no_coarse_stage_without_a_box_fit() -> None:
    model = small_model(coarse_scale=0.5, fit_box_at_step=0)
    assert model.field.grid_shape == (32, 32, 32)


ALL_SIX = tuple((axis, sign) for axis in range(3) for sign in (1.0, -1.0))


def rays_along_the_axes(count: int = 32, directions=ALL_SIX) -> RayBundle:
    """Parallel rays through the box along ``(axis, sign)`` directions, one per voxel column of a ``count``^3 grid."""
    side = torch.linspace(-1.5, 1.5, 2 * count + 1)[1::2]
    u, v = (a.reshape(-1) for a in torch.meshgrid(side, side, indexing="ij"))
    origins, unit = [], []
    for axis, sign in directions:
        position = torch.zeros(u.shape[0], 3)
        position[:, (axis + 1) % 3], position[:, (axis + 2) % 3], position[:, axis] = u, v, -3.0 * sign
        direction = torch.zeros_like(position)
        direction[:, axis] = sign
        origins.append(position)
        unit.append(direction)
    origins, directions = torch.cat(origins), torch.cat(unit)
    return RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(origins.shape[0], 1))


def model_with_matter(region: str, **overrides):
    """A 32^3 model whose base grid holds a shell (radius 0.6-0.9), or its upper half (a dome), in 0.3 fog."""
    model = small_model(fit_box_at_step=0, fill_every=2, initial_occupancy=0.3, **overrides)
    centres = grids.grid_coords_of_nodes(model.field.aabb, model.field.grid_shape)
    radius = centres.norm(dim=-1)
    matter = (radius > 0.6) & (radius < 0.9)
    if region == "dome":
        matter &= centres[..., 2] > 0
    with torch.no_grad():
        model.field.base_logits[matter] = 8.0
    model.train()
    return model, radius


def model_with_ball(**overrides):
    """A 32^3 model, no box fit, whose base grid holds a solid ball of radius 0.6 in empty space."""
    model = small_model(fit_box_at_step=0, **overrides)
    radius = grids.grid_coords_of_nodes(model.field.aabb, model.field.grid_shape).norm(dim=-1)
    with torch.no_grad():
        model.field.base_logits.copy_(torch.where(radius < 0.6, 8.0, -8.0))
    return model


def test_the_viewers_crop_box_and_a_near_far_collider_cut_what_is_rendered() -> None:
    """The viewer's Crop Viewport renders with ``obb_box``, and ``--pipeline.model.enable-collider`` gives the rays a
    near and far plane: both used to be ignored, and the ball rendered whole."""
    from nerfstudio.cameras.cameras import Cameras
    from nerfstudio.data.scene_box import OrientedBox

    c2w = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4.0]])[None]  # at z = 4, looking down -z
    camera = Cameras(camera_to_worlds=c2w, fx=20.0, fy=20.0, cx=8.0, cy=8.0, width=16, height=16)

    def centre_and_total(model, **kwargs):
        accumulation = model.get_outputs_for_camera(camera, **kwargs)["accumulation"][..., 0]
        return float(accumulation[6:10, 6:10].min()), float(accumulation.sum())

    model = model_with_ball().eval()
    centre, total = centre_and_total(model)
    assert centre > 0.95  # the ball, radius 0.6, fills the middle of the view
    around_ball = OrientedBox(R=torch.eye(3), T=torch.zeros(3), S=torch.full((3,), 1.5))
    # (shorter chords, so other bins: the same ball to within 1%)
    assert centre_and_total(model, obb_box=around_ball) == pytest.approx((centre, total), rel=0.01)
    off_ball = OrientedBox(R=torch.eye(3), T=torch.tensor([1.1, 1.1, 1.1]), S=torch.full((3,), 0.4))
    assert centre_and_total(model, obb_box=off_ball)[1] < 1e-3
    short = model_with_ball(enable_collider=True, collider_params={"near_plane": 0.1, "far_plane": 3.0}).eval()
    assert centre_and_total(short)[1] < 1e-3  # the ball's surface lies at t = 3.4
    long = model_with_ball(enable_collider=True, collider_params={"near_plane": 0.1, "far_plane": 6.0}).eval()
    assert centre_and_total(long) == pytest.approx((centre, total), abs=1e-4)


def test_training_reads_only_the_rays_whose_march_saw_matter() -> None:
    """A ball of radius 0.6 in empty space, rays down the z axis: those that pass far from it render background."""
    model = model_with_ball()
    rays = rays_along_the_axes(directions=((2, 1.0),))
    far = rays.origins[:, :2].norm(dim=-1) > 0.85
    model.train()
    accumulation = model.get_outputs(rays)["accumulation"]
    assert (accumulation[~far].amax() > 0.9) and (accumulation[far] < 1e-4).all()
    accumulation[far].sum().backward(retain_graph=True)
    gradient = model.field.base_logits.grad
    assert gradient is None or not gradient.any()  # not read: no gradient, however small
    accumulation[~far].sum().backward()
    assert model.field.base_logits.grad.abs().sum() > 0


@pytest.mark.parametrize("rule", ["sealed", "hidden"])
def test_training_rays_fill_the_inside_of_a_shell(rule: str) -> None:
    model, radius = model_with_matter("shell", fill_rule=rule)
    rays = rays_along_the_axes()
    model.get_outputs(rays)
    assert model.fill_unseen_space() == 0  # one batch is too few to tell
    model.get_outputs(rays)
    before = model.field.base_logits.detach().clone()
    assert model.fill_unseen_space() > 0
    filled = model.field.base_logits.detach() != before
    assert (radius[filled] < 0.65).all()  # inside the shell only
    assert filled[radius < 0.5].all()  # all of the fog inside
    assert model.fill_unseen_space() == 0  # a new count starts after a fill


@pytest.mark.parametrize("budget", [None, 60.0])
def test_the_geometry_freezes_at_its_share_of_training_and_colour_trains_on(budget) -> None:
    """From `freeze_geometry_at` on (of the steps, or of the time budget), the geometry takes no gradient and its
    optimizer leaves it, the fills stop (the shell's fog would be filled), the blur is cached; colour still learns."""
    model, _ = model_with_matter("shell", freeze_geometry_at=0.5, train_time_budget=budget)
    model.max_steps = 10
    optimizers = default_optimizers(model)
    rays = rays_along_the_axes()

    def train_step(step: int) -> None:
        model.train_seconds = step * 6.0  # a 60-s budget: half of it at step 5
        model.freeze_geometry_when_due(step)
        optimizers.zero_grad_all()
        model.get_outputs(rays)["rgb"].sum().backward()
        optimizers.optimizer_step_all()

    train_step(3)
    train_step(4)
    assert not model.geometry_frozen and model.field.base_logits.grad.abs().sum() > 0
    geometry, colour = model.field.base_logits.detach().clone(), model.field.features.detach().clone()
    train_step(5)
    assert model.geometry_frozen and model.field.base_logits.grad is None
    assert torch.equal(model.field.base_logits.detach(), geometry)
    assert not torch.equal(model.field.features.detach(), colour)
    assert model.fill_unseen_space() == 0 and model._visibility is None  # no fills, and no record kept for them
    assert model.field.smoothed_occupancy_grid() is model.field.smoothed_occupancy_grid()
    model.field.base_logits.requires_grad_(True)  # the same rays would have filled the fog inside the shell
    for _ in range(model.config.fill_every):
        model.get_outputs(rays)
    assert model.fill_unseen_space() > 0


def test_the_training_callbacks_freeze_the_geometry_at_the_trainers_step() -> None:
    from types import SimpleNamespace

    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation

    model = small_model(freeze_geometry_at=0.25)
    trainer = SimpleNamespace(config=SimpleNamespace(max_num_iterations=8))
    attributes = TrainingCallbackAttributes(optimizers=None, grad_scaler=None, pipeline=None, trainer=trainer)
    callbacks = model.get_training_callbacks(attributes)
    for step in range(3):
        for callback in callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        assert model.geometry_frozen == (step >= 2)


def run_one_step(callbacks, step: int) -> None:
    """The training callbacks around one iteration, as nerfstudio's trainer runs them."""
    from nerfstudio.engine.callbacks import TrainingCallbackLocation

    for location in (TrainingCallbackLocation.BEFORE_TRAIN_ITERATION, TrainingCallbackLocation.AFTER_TRAIN_ITERATION):
        for callback in callbacks:
            callback.run_callback_at_location(step, location)


def test_under_a_time_budget_the_terminal_counts_down_to_the_step_the_clock_ends_at(monkeypatch) -> None:
    """nerfstudio prints progress and an ETA against its step limit, which a budget lifts: the budget callbacks put
    the step the clock will end at there, so the run reads 100% when it stops."""
    from types import SimpleNamespace

    from nerfstudio.engine.callbacks import TrainingCallbackAttributes
    from nerfstudio.utils import writer

    from rs_nerfstudio import model as model_module
    from rs_nerfstudio.config import BUDGET_MAX_STEPS

    clock = iter(0.5 * i for i in range(1000))  # each iteration takes 0.5 s
    monkeypatch.setattr(model_module.time, "perf_counter", lambda: next(clock))
    monkeypatch.setitem(writer.GLOBAL_BUFFER, "max_iter", BUDGET_MAX_STEPS)
    model = small_model(train_time_budget=10.0, fit_box_at_step=0, fill_every=0)
    trainer = SimpleNamespace(config=SimpleNamespace(max_num_iterations=BUDGET_MAX_STEPS), stop_training=False)
    attributes = TrainingCallbackAttributes(optimizers=None, grad_scaler=None, pipeline=None, trainer=trainer)
    callbacks = model.get_training_callbacks(attributes)
    step = 0
    while not trainer.stop_training:
        run_one_step(callbacks, step)
        if step == 0:
            assert writer.GLOBAL_BUFFER["max_iter"] == 20  # 0.5 s of 10 s: 19 more steps
        step += 1
    assert step == 20 and writer.GLOBAL_BUFFER["max_iter"] == 20

    trainer = SimpleNamespace(config=SimpleNamespace(max_num_iterations=5), stop_training=False)  # a lower limit
    model = small_model(train_time_budget=10.0, fit_box_at_step=0, fill_every=0)
    attributes = TrainingCallbackAttributes(optimizers=None, grad_scaler=None, pipeline=None, trainer=trainer)
    run_one_step(model.get_training_callbacks(attributes), 0)
    assert writer.GLOBAL_BUFFER["max_iter"] == 5


def test_under_a_time_budget_the_rates_follow_the_clock_to_the_iteration_under_way(monkeypatch) -> None:
    """nerfstudio steps the schedulers inside an iteration, before the budget callbacks count its time: each rate is
    where the decay is at that moment, and the last iteration's ends at the final rate (it lagged one iteration)."""
    from types import SimpleNamespace

    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation

    from rs_nerfstudio import model as model_module

    now = {"t": 0.0}
    monkeypatch.setattr(model_module.time, "perf_counter", lambda: now["t"])
    model = small_model(train_time_budget=10.0, fit_box_at_step=0, fill_every=0)
    optimizers = default_optimizers(model)
    config = rs_sdf_trainer_config()
    config.max_num_iterations = 1 << 30
    trainer = SimpleNamespace(config=config, stop_training=False)
    attributes = TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=None, pipeline=None, trainer=trainer)
    callbacks = model.get_training_callbacks(attributes)
    geometry = optimizers.optimizers["geometry"].param_groups[0]
    step = 0
    while not trainer.stop_training:
        for callback in callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        now["t"] += 0.5  # the forward and backward pass, then the optimizer and scheduler steps, as nerfstudio's
        optimizers.scheduler_step_all(step)
        assert geometry["lr"] == pytest.approx(0.1 * 1e-3 ** ((step + 1) * 0.5 / 10.0), rel=1e-9)  # 0.1 -> 1e-4
        for callback in callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        step += 1
    assert step == 20 and geometry["lr"] == pytest.approx(1e-4, rel=1e-9)


def test_resuming_a_run_that_spent_its_budget_says_so(capsys) -> None:
    from types import SimpleNamespace

    from nerfstudio.engine.callbacks import TrainingCallbackAttributes

    trainer = SimpleNamespace(config=SimpleNamespace(max_num_iterations=100), stop_training=False)
    attributes = TrainingCallbackAttributes(optimizers=None, grad_scaler=None, pipeline=None, trainer=trainer)
    model = small_model(train_time_budget=10.0, fit_box_at_step=0, fill_every=0)
    model.get_training_callbacks(attributes)
    assert "time budget" not in capsys.readouterr().out
    model.train_seconds = 10.2  # as a checkpoint at the end of the budget has it
    callbacks = model.get_training_callbacks(attributes)
    out = " ".join(capsys.readouterr().out.split())
    assert "the checkpoint has trained its time budget already (10.2 of 10 s)" in out
    assert "--pipeline.model.train-time-budget" in out
    run_one_step(callbacks, 0)
    assert trainer.stop_training


def test_hidden_space_under_a_dome_is_filled_by_the_hidden_rule_only() -> None:
    """Seen only from above, a dome hides the space under it: it is open, yet no ray can tell it from matter."""
    from_above = rays_along_the_axes(directions=[(2, -1.0)])
    filled = {}
    for rule in ("sealed", "hidden"):
        model, radius = model_with_matter("dome", fill_rule=rule)
        for _ in range(2):
            model.get_outputs(from_above)
        filled[rule] = model.fill_unseen_space()
    assert filled["sealed"] == 0
    assert filled["hidden"] > 1000  # the dome's inside and the column under it, down to the box's floor


def test_the_unseen_inside_of_soft_matter_is_made_solid_below_a_layer_the_images_keep() -> None:
    """A ball of f_theta = 0.6 is opaque to the rays, yet its weak SDF is barely negative inside: the fill makes it 0.99
    wherever no ray saw through, except the one-voxel layer under the surface."""
    model = small_model(fit_box_at_step=0, fill_every=2, initial_occupancy=0.01)
    radius = grids.grid_coords_of_nodes(model.field.aabb, model.field.grid_shape).norm(dim=-1)
    ball = radius < 0.9
    soft = torch.logit(torch.tensor(0.6))
    with torch.no_grad():
        model.field.base_logits[ball] = soft
    model.train()
    for _ in range(2):
        model.get_outputs(rays_along_the_axes())
    assert model.fill_unseen_space() > 0
    logits = model.field.base_logits.detach()
    solid = torch.logit(torch.tensor(0.99))
    assert torch.allclose(logits[radius < 0.6], solid)  # the deep inside
    assert (logits[~ball] < solid).all()  # empty space stays empty
    outer_layer = ball & (radius > 0.9 - model.field.voxel_length)
    assert outer_layer.any() and torch.allclose(logits[outer_layer], soft)  # the surface is the images' to shape


def test_indecision_pushes_the_classifier_away_from_one_half() -> None:
    assert float(indecision(torch.tensor([0.0, 1.0, 1.0, 0.0]))) == 0.0
    assert float(indecision(torch.tensor([0.5]))) == 0.25
    logits = torch.tensor([-1.0, -0.2, 0.3, 2.0], requires_grad=True)
    indecision(torch.sigmoid(logits)).backward()
    step = -logits.grad  # gradient descent moves each logit further from 0, the way it already leans
    assert (torch.sign(step) == torch.sign(logits.detach())).all()


@pytest.mark.parametrize("deferred, stagger", [(True, False), (False, False), (True, True), (False, True)])
def test_each_colour_head_fits_the_pixels_alone_and_the_render_is_their_mean(deferred: bool, stagger: bool) -> None:
    """The loss is the mean of the heads' own losses, not the loss of their mean, which would make one model of them."""
    torch.manual_seed(0)
    model = model_with_ball(colour_heads=3, deferred_colour=deferred, uniform_sample_fraction=0.0,
                            stagger_colour=stagger)  # fmt: skip
    assert model.field.staggered == stagger
    model.train()
    rays = rays_along_the_axes(count=8)
    target = torch.rand(rays.origins.shape[0], 3)
    outputs = model.get_outputs(rays)
    heads = outputs["head_rgb"]
    assert heads.shape == (3, rays.origins.shape[0], 3)
    torch.testing.assert_close(outputs["rgb"], heads.mean(dim=0))
    loss = model.get_loss_dict(outputs, {"image": target})["rgb_loss"]
    torch.testing.assert_close(loss, torch.stack([(head - target).pow(2).mean() for head in heads]).mean())
    spread = heads.var(dim=0, unbiased=False).mean()  # the mean's loss is lower by the heads' spread (bias-variance)
    assert spread > 0
    torch.testing.assert_close(loss - (outputs["rgb"] - target).pow(2).mean(), spread)

    model.eval()
    with torch.no_grad():
        evaluated = model.get_outputs(rays)
    assert "head_rgb" not in evaluated
    # the training march differs a little (it skips rays that saw nothing, see `_smoothed_at_samples`)
    torch.testing.assert_close(evaluated["rgb"], outputs["rgb"].detach(), atol=1e-3, rtol=0)



@pytest.mark.parametrize("deferred", [True, False])
def test_a_model_loads_a_checkpoint_with_another_number_of_colour_heads(deferred: bool) -> None:
    """An older run (one head) opened with today's defaults (two) renders as it did."""
    torch.manual_seed(0)
    saved = model_with_ball(colour_heads=1, deferred_colour=deferred)
    loaded = small_model(fit_box_at_step=0, colour_heads=2, deferred_colour=deferred)
    loaded.load_state_dict(saved.state_dict())
    rays = rays_along_the_axes(count=8)
    saved.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.get_outputs(rays)["rgb"], saved.get_outputs(rays)["rgb"])
    assert loaded.field.colour_mlp.heads == 1


def load_as_nerfstudio_does(model, state: dict) -> None:
    """nerfstudio's Pipeline.load_state_dict (ns-viewer, ns-eval, ns-render, resuming): the model's keys, then a
    second pass over every module with the pipeline's other keys (none of the model's)."""
    from nerfstudio.pipelines.base_pipeline import Pipeline

    class Holder(Pipeline):
        def __init__(self) -> None:
            torch.nn.Module.__init__(self)
            self._model = model

    Holder().load_state_dict({f"_model.{name}": value for name, value in state.items()})


def test_the_viewers_sliders_move_the_rendered_surface_outside_training_only() -> None:
    """The iso-level slider renders the level set weak SDF = level: a ray on a ball's axis stops where the weak SDF
    reads the level (less ~0.3 sigma: the soft front of the density), and a ray that misses the ball stays clear at
    every level. The sigma slider re-smooths for rendering only; training keeps the trained sigma."""
    model = model_with_ball()
    sigma = model.config.sigma
    rays = RayBundle(
        origins=torch.tensor([[0.0, 0.0, -3.0], [1.2, 0.0, -3.0]]), directions=torch.tensor([[0.0, 0.0, 1.0]] * 2),
        pixel_area=torch.ones(2, 1),
    )  # fmt: skip

    def render(level: float = 0.0, sigma_scale: float = 1.0):
        for slider, value in ((model.viewer_level, level), (model.viewer_sigma, sigma_scale)):
            slider.value = value
            slider.cb_hook(slider)
        with torch.no_grad():
            outputs = model.get_outputs(rays)
        depth = float(outputs["depth"][0])
        on_axis = torch.tensor([[0.0, 0.0, -3.0 + depth]])
        return depth, float(model.field.weak_sdf(on_axis)) / sigma, float(outputs["accumulation"][1])

    model.eval()
    depths = []
    for sigma_scale in (1.0, 2.0):
        for level in (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.5):
            depth, reads, missed = render(level, sigma_scale)
            assert missed < 0.01, (level, sigma_scale)  # no fog: at +1.5 sigma, alpha alone made 0.97 of it
            if abs(level) <= 1.5:
                assert level - 0.45 < reads < level, (level, sigma_scale)
            depths.append(depth)
        assert model.field.active_sigma == pytest.approx(sigma_scale * sigma)
    assert depths[:8] == sorted(depths[:8], reverse=True) and depths[8:] == sorted(depths[8:], reverse=True)
    assert render()[0] == pytest.approx(depths[3])  # back at 0: nothing kept from the other levels
    for level in (-2.5, 2.5):  # 10 render sigmas: past saturation, the threshold rounds to 1 or 0
        assert math.isfinite(render(level, sigma_scale=0.25)[0])
    render(level=1.0, sigma_scale=2.0)
    model.train()
    assert model.field.active_sigma == sigma and model.field.active_threshold == 0.5
    assert model.field.active_steepness == model.field.steepness


def test_the_geometry_penalties_take_their_weights_and_apply_only_in_training() -> None:
    """A base grid that steps from 0 to 1 across one plane of x: its total variation (the mean squared difference
    between neighbours, summed over the axes) is 1 / (W - 1); mean f (1 - f) is 1/4 where f is 1/2 everywhere."""
    model = small_model(tv_weight=2.0, confidence_weight=3.0, fit_box_at_step=0)
    depth, height, width = model.field.grid_shape
    outputs = {"rgb": torch.full((4, 3), 0.5), "accumulation": torch.ones(4, 1)}
    batch = {"image": torch.full((4, 3), 0.25)}
    with torch.no_grad():
        model.field.base_logits.fill_(-30.0)
        model.field.base_logits[..., width // 2 :] = 30.0
    model.train()
    losses = model.get_loss_dict(outputs, batch)
    assert float(losses["rgb_loss"]) == pytest.approx(0.0625)
    assert float(losses["tv_loss"]) == pytest.approx(2.0 / (width - 1), rel=1e-5)
    assert float(losses["confidence_loss"]) == pytest.approx(0.0, abs=1e-9)
    with torch.no_grad():
        model.field.base_logits.zero_()
    assert float(model.get_loss_dict(outputs, batch)["confidence_loss"]) == pytest.approx(3.0 * 0.25)
    model.eval()
    assert set(model.get_loss_dict(outputs, batch)) == {"rgb_loss"}


def test_the_box_is_fitted_at_its_step_retried_while_there_is_no_matter_and_fitted_once() -> None:
    from types import SimpleNamespace

    from nerfstudio.engine.callbacks import TrainingCallbackAttributes

    model = small_model(coarse_scale=0.5, fit_box_at_step=10, mask_refresh_steps=4, fill_every=0)
    optimizers = default_optimizers(model)
    trainer = SimpleNamespace(config=SimpleNamespace(max_num_iterations=100))
    attributes = TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=None, pipeline=None, trainer=trainer)
    callbacks = model.get_training_callbacks(attributes)
    centres = grids.grid_coords_of_nodes(model.field.aabb, model.field.grid_shape)
    fitted_at = None
    for step in range(30):
        if step == 16:  # matter appears only now: the fits at steps 10 and 14 found none
            with torch.no_grad():
                model.field.base_logits.copy_(torch.where(centres.norm(dim=-1) < 0.6, 8.0, -8.0))
        run_one_step(callbacks, step)
        if model.box_fitted and fitted_at is None:
            fitted_at, box = step, model.field.aabb.clone()
    assert fitted_at == 18  # the next retry after the matter appeared
    assert torch.equal(model.field.aabb, box) and max(model.field.grid_shape) == 32  # once, at full resolution


def test_the_rgba_image_takes_the_background_out_and_the_accumulation_as_alpha() -> None:
    """Composited again over the background, the colour and alpha give back the rendered pixel (what ns-render's rgba
    output and ns-export's opacity filter read)."""
    model = small_model()
    alpha = torch.tensor([[0.0], [0.25], [1.0]])
    colour = torch.tensor([[0.3, 0.6, 0.9], [0.2, 0.4, 0.8], [0.1, 0.5, 0.7]])
    white = torch.ones(3)
    outputs = {"rgb": colour * alpha + (1 - alpha) * white, "accumulation": alpha}
    rgba = model.get_rgba_image(outputs)
    torch.testing.assert_close(rgba[:, 3:], alpha)
    torch.testing.assert_close(rgba[1:, :3], colour[1:])  # an empty pixel has no colour of its own
    torch.testing.assert_close(rgba[:, :3] * alpha + (1 - alpha) * white, outputs["rgb"])


def test_the_steepness_rises_geometrically_over_its_warm_up() -> None:
    model = small_model(initial_steepness=20.0, steepness=80.0, steepness_warmup_steps=100)
    expected = {0: 20.0, 50: 40.0, 100: 80.0, 5000: 80.0}  # halfway: the geometric mean
    assert {step: model.steepness_at(step) for step in expected} == pytest.approx(expected)
    model.update_to_step(50)
    assert model.field.steepness == pytest.approx(40.0)


def test_checkpoints_keep_the_training_clock() -> None:
    """A run resumed under a time budget goes on with its decay; a checkpoint from before the clock starts it at 0."""
    saved = small_model(train_time_budget=600.0)
    saved.train_seconds = 123.5
    state = saved.state_dict()
    resumed = small_model(train_time_budget=600.0)
    load_as_nerfstudio_does(resumed, state)
    assert resumed.train_seconds == 123.5 and resumed.training_progress(step=0) == 123.5 / 600.0
    older = {name: value for name, value in state.items() if name != "trained_seconds"}
    resumed.load_state_dict(older)
    assert resumed.train_seconds == 0.0


def test_nerfstudios_loading_keeps_staggered_colour() -> None:
    """Its second pass holds none of the field's keys: it used to reset the stagger to a checkpoint's default."""
    saved = small_model(colour_heads=2, stagger_colour=True)
    loaded = small_model(colour_heads=2)
    load_as_nerfstudio_does(loaded, saved.state_dict())
    assert loaded.field.stagger_colour and float(loaded.field.colour_stagger) == 1.0
