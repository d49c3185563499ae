"""Optimisation that is fast on a CPU and whose checkpoints load with ``torch.load(weights_only=True)``.

torch's Adam runs a per-tensor Python loop on the CPU unless asked for its fused kernel, which is ~5x faster on a
grid of millions of voxels; nerfstudio's optimizer config cannot ask for it.

nerfstudio's ExponentialDecayScheduler computes its multiplier with numpy, so the learning rates stored in the
optimizer and scheduler state are numpy scalars, which torch >= 2.6 refuses to unpickle by default (nerfstudio
issue #3683): ns-viewer, ns-eval, ns-export and resuming then fail. This one does the same in plain Python floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Optional, Tuple, Type

from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import Scheduler, SchedulerConfig
from torch.optim import Optimizer, lr_scheduler


@dataclass
class FusedAdamOptimizerConfig(AdamOptimizerConfig):
    """Adam with torch's fused kernel (CPU and CUDA)."""

    fused: bool = True
    """Use torch's fused Adam kernel: one pass over each tensor instead of a loop of element-wise ops."""


@dataclass
class ExponentialDecaySchedulerConfig(SchedulerConfig):
    """Linear warm-up to the optimizer's learning rate, then exponential decay to `lr_final`."""

    _target: Type = field(default_factory=lambda: ExponentialDecayScheduler)
    """The scheduler class this config builds."""
    lr_final: Optional[float] = None
    """Learning rate at `max_steps` (None: no decay)."""
    warmup_steps: int = 0
    """Steps of linear warm-up from zero."""
    max_steps: Optional[int] = None
    """Step at which the decay reaches `lr_final`; constant after it. None: the trainer's `--max-num-iterations`,
    filled in by rs-sdf's trainer config before training (`RSSDFTrainerConfig.resolve_defaults`)."""


def resolve_decay_steps(optimizer_configs: Dict[str, Dict], max_num_iterations: int) -> None:
    """Let every decay left at ``max_steps=None`` run over the trainer's steps, so that one flag sets a run's length."""
    for config in optimizer_configs.values():
        scheduler = config.get("scheduler")
        if isinstance(scheduler, ExponentialDecaySchedulerConfig) and scheduler.max_steps is None:
            scheduler.max_steps = max_num_iterations


def exponential_decay_multiplier(
    step: float, lr_init: float, lr_final: float, warmup_steps: int, max_steps: int
) -> float:
    """Multiplier of lr_init at ``step``, as a Python float."""
    if step < warmup_steps:
        return float(step) / warmup_steps
    t = min(max((step - warmup_steps) / max(1, max_steps - warmup_steps), 0.0), 1.0)
    return math.exp(math.log(lr_final / lr_init) * t)


class ExponentialDecayScheduler(Scheduler):
    """See :class:`ExponentialDecaySchedulerConfig`."""

    config: ExponentialDecaySchedulerConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        lr_final = lr_init if self.config.lr_final is None else self.config.lr_final
        warmup, max_steps = self.config.warmup_steps, self.config.max_steps
        if max_steps is None and self.config.lr_final is not None:
            raise ValueError("ExponentialDecaySchedulerConfig.max_steps is None: call resolve_decay_steps first")
        max_steps = warmup + 1 if max_steps is None else max_steps  # no decay to run: only the warm-up counts

        def multiplier(step: int) -> float:
            return exponential_decay_multiplier(step, lr_init, lr_final, warmup, max_steps)

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=multiplier)


def _exponential_decays(
    optimizers, optimizer_configs: Dict[str, Dict]
) -> Iterator[Tuple[Optimizer, lr_scheduler.LambdaLR, Optional[float]]]:
    """Each optimizer whose scheduler is an :class:`ExponentialDecaySchedulerConfig`'s, with it and its ``lr_final``."""
    for name, optimizer in optimizers.optimizers.items():
        scheduler_config = optimizer_configs.get(name, {}).get("scheduler")
        scheduler = optimizers.schedulers.get(name)
        if isinstance(scheduler_config, ExponentialDecaySchedulerConfig) and isinstance(
            scheduler, lr_scheduler.LambdaLR
        ):
            yield optimizer, scheduler, scheduler_config.lr_final


def _decay_at(progress: float, lr_init: float, lr_final: Optional[float]) -> float:
    """The multiplier of ``lr_init`` at ``progress`` in [0, 1] of the decay, with no warm-up."""
    return exponential_decay_multiplier(max(progress, 0.0), lr_init, lr_init if lr_final is None else lr_final, 0, 1)


def decay_learning_rates_to(progress: float, optimizers, optimizer_configs: Dict[str, Dict]) -> None:
    """Set every parameter group's learning rate to where its exponential decay is at ``progress`` in [0, 1], now.

    ``benchmarks/ablate.py`` trains on a clock without nerfstudio's trainer and sets the rates before each step;
    ``ns-train`` under a time budget uses :func:`decay_by_progress`. ``optimizers`` is nerfstudio's ``Optimizers``;
    groups whose scheduler is not an :class:`ExponentialDecaySchedulerConfig` are left alone.
    """
    for optimizer, scheduler, lr_final in _exponential_decays(optimizers, optimizer_configs):
        for group, lr_init in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = lr_init * _decay_at(progress, lr_init, lr_final)


def decay_by_progress(progress: Callable[[], float], optimizers, optimizer_configs: Dict[str, Dict]) -> None:
    """Make each exponential decay run over ``progress()``, a share in [0, 1] (of a time budget spent), instead of
    ``max_steps`` steps, with no warm-up, from the schedulers' next step on. Groups whose scheduler is not an
    :class:`ExponentialDecaySchedulerConfig` are left alone.

    The schedulers compute the rates themselves, so what nerfstudio logs as ``learning_rate/NAME`` (each scheduler's
    last rate) is the rate in use. Setting the groups' rates after the schedulers had stepped trained as well, but
    left those curves flat at the initial rates. The multipliers are closures, which ``LambdaLR.state_dict`` leaves
    out of checkpoints.
    """

    def multiplier(lr_init: float, lr_final: Optional[float]) -> Callable[[int], float]:
        return lambda _step: _decay_at(progress(), lr_init, lr_final)

    for _, scheduler, lr_final in _exponential_decays(optimizers, optimizer_configs):
        scheduler.lr_lambdas = [multiplier(lr_init, lr_final) for lr_init in scheduler.base_lrs]
