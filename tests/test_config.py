"""rs-sdf's trainer config: what it settles before a run is printed, saved or set up."""

from __future__ import annotations

import pytest

from rs_nerfstudio.config import BUDGET_MAX_STEPS, DEFAULT_MAX_STEPS, rs_sdf_trainer_config


@pytest.mark.parametrize(
    "budget, max_steps, expected",
    [
        (None, None, DEFAULT_MAX_STEPS),  # no budget: the default steps end the run
        (None, 1234, 1234),
        (600.0, None, BUDGET_MAX_STEPS),  # the budget ends it, not the default 5000 steps
        (600.0, DEFAULT_MAX_STEPS, DEFAULT_MAX_STEPS),  # a limit the user gave is kept: whichever comes first
        (600.0, 2000, 2000),
    ],
)
def test_a_time_budget_lifts_the_default_step_limit(budget, max_steps, expected, tmp_path) -> None:
    config = rs_sdf_trainer_config(max_steps)
    config.pipeline.model.train_time_budget = budget
    assert config.max_num_iterations == max_steps  # open until resolved
    config.resolve_defaults()
    assert config.max_num_iterations == expected
    assert config.optimizers["geometry"]["scheduler"].max_steps == expected  # the step decay, which a budget overrides
