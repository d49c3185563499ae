"""Optimisation state that torch.load(weights_only=True) accepts."""

from __future__ import annotations

import io

import pytest
import torch

from rs_nerfstudio.optim import (
    ExponentialDecaySchedulerConfig,
    FusedAdamOptimizerConfig,
    exponential_decay_multiplier,
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
