"""Optimisation state that torch.load(weights_only=True) accepts."""

from __future__ import annotations

import io

import pytest
import torch

from rs_nerfstudio.optim import (
    ExponentialDecaySchedulerConfig,
    FusedAdamOptimizerConfig,
    exponential_decay_multiplier,
    resolve_decay_steps,
)


def test_multiplier_decays_from_one_to_the_final_ratio() -> None:
    assert exponential_decay_multiplier(0, 0.1, 0.01, 0, 100) == 1.0
    assert exponential_decay_multiplier(100, 0.1, 0.01, 0, 100) == pytest.approx(0.1)
    assert exponential_decay_multiplier(50, 0.1, 0.01, 0, 100) == pytest.approx(0.1**0.5)
    assert exponential_decay_multiplier(5, 0.1, 0.01, 10, 100) == pytest.approx(0.5)
    assert type(exponential_decay_multiplier(7, 0.1, 0.01, 0, 100)) is float


def test_optimizer_and_scheduler_state_load_with_weights_only() -> None:
    parameter = torch.nn.Parameter(torch.randn(10))
    optimizer = FusedAdamOptimizerConfig(lr=0.1).setup([parameter])
    scheduler = ExponentialDecaySchedulerConfig(lr_final=0.01, max_steps=10).setup().get_scheduler(optimizer, 0.1)
    for _ in range(3):
        parameter.grad = torch.randn(10)
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["scheduler"]["_last_lr"][0] == pytest.approx(0.1 * 0.1 ** (3 / 10))
    assert optimizer.defaults["fused"] is True


def test_time_budget_decay_sets_each_group_where_its_decay_is() -> None:
    """With a time budget, the learning rates follow the fraction of the budget spent, not the step count."""
    from nerfstudio.engine.optimizers import Optimizers

    from rs_nerfstudio.optim import decay_learning_rates_to

    grid, mlp, other = (torch.nn.Parameter(torch.randn(4)) for _ in range(3))
    configs = {
        "grid": {
            "optimizer": FusedAdamOptimizerConfig(lr=0.1),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=0.001, max_steps=10_000),
        },
        "mlp": {"optimizer": FusedAdamOptimizerConfig(lr=1e-3), "scheduler": ExponentialDecaySchedulerConfig()},
        "other": {"optimizer": FusedAdamOptimizerConfig(lr=0.5), "scheduler": None},
    }
    optimizers = Optimizers(configs, {"grid": [grid], "mlp": [mlp], "other": [other]})
    decay_learning_rates_to(0.5, optimizers, configs)
    assert optimizers.optimizers["grid"].param_groups[0]["lr"] == pytest.approx(0.01)  # halfway, in log space
    assert optimizers.optimizers["mlp"].param_groups[0]["lr"] == pytest.approx(1e-3)  # no lr_final: constant
    assert optimizers.optimizers["other"].param_groups[0]["lr"] == 0.5  # no scheduler of ours: untouched
    decay_learning_rates_to(2.0, optimizers, configs)  # past the budget: stays at the final rate
    assert optimizers.optimizers["grid"].param_groups[0]["lr"] == pytest.approx(0.001)


def test_time_budget_decay_is_what_the_schedulers_step_to_and_log(tmp_path) -> None:
    """Under a time budget the schedulers themselves follow the share of the budget spent, so nerfstudio's logged
    `learning_rate/NAME` (each scheduler's last rate) is the rate in use; it used to stay at the initial rate while
    the groups' rates were overwritten after each step. Checkpoints of such schedulers load with weights_only."""
    from nerfstudio.engine.optimizers import Optimizers

    from rs_nerfstudio.optim import decay_by_progress

    grid, other = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(4))
    configs = {
        "grid": {
            "optimizer": FusedAdamOptimizerConfig(lr=0.1),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=0.001, max_steps=1 << 30),
        },
        "other": {"optimizer": FusedAdamOptimizerConfig(lr=0.5), "scheduler": None},
    }
    optimizers = Optimizers(configs, {"grid": [grid], "other": [other]})
    spent = {"share": 0.0}
    decay_by_progress(lambda: spent["share"], optimizers, configs)
    scheduler = optimizers.schedulers["grid"]
    for step, share in enumerate((0.25, 0.5, 1.0, 3.0)):
        spent["share"] = share
        optimizers.scheduler_step_all(step)
        expected = 0.1 * 0.01 ** min(share, 1.0)  # halfway is 0.01, in log space; past the budget, the final rate
        assert optimizers.optimizers["grid"].param_groups[0]["lr"] == pytest.approx(expected)
        assert scheduler.get_last_lr()[0] == pytest.approx(expected)
    assert optimizers.optimizers["other"].param_groups[0]["lr"] == 0.5
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")
    assert torch.load(tmp_path / "scheduler.pt", weights_only=True)["lr_lambdas"] == [None]


def test_decays_left_open_run_over_the_trainers_steps_and_set_ones_are_kept() -> None:
    configs = {
        "open": {
            "optimizer": FusedAdamOptimizerConfig(lr=0.1),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=0.01),
        },
        "set": {
            "optimizer": FusedAdamOptimizerConfig(lr=0.1),
            "scheduler": ExponentialDecaySchedulerConfig(max_steps=7),
        },
        "none": {"optimizer": FusedAdamOptimizerConfig(lr=0.1), "scheduler": None},
    }
    parameter = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="resolve_decay_steps"):
        configs["open"]["scheduler"].setup().get_scheduler(FusedAdamOptimizerConfig(lr=0.1).setup([parameter]), 0.1)
    resolve_decay_steps(configs, 1234)
    assert configs["open"]["scheduler"].max_steps == 1234 and configs["set"]["scheduler"].max_steps == 7
