"""The rs-sdf model's training-time behaviour: fitting the grids' box, filling sealed cavities."""

from __future__ import annotations

import torch
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.engine.optimizers import Optimizers

from rs_nerfstudio import grid as grids
from rs_nerfstudio.config import rs_sdf_trainer_config
from rs_nerfstudio.model import RSSDFModelConfig


def small_model(**overrides):
    config = RSSDFModelConfig(grid_resolution=32, appearance_resolution=16, sigma=0.1, **overrides)
    return config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.5] * 3, [1.5] * 3])), num_train_data=1)


def test_the_coarse_stage_then_the_fitted_box_train_through_the_optimizers() -> None:
    model = small_model(coarse_scale=0.5)
    assert model.field.grid_shape == (16, 16, 16) and not model.box_fitted
    optimizers = Optimizers(rs_sdf_trainer_config().optimizers, model.get_param_groups())
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
