"""Profile rs-sdf training steps on a Blender scene with torch.profiler: where does a step's time go?

    python benchmarks/profile_step.py --data ../shared/data/lego_200 --warmup 300 --steps 10

The steps run the model's training callbacks, as ns-train does: the warm-up should pass `fit_box_at_step` (100),
or the profile is of the coarse stage's half-resolution grids over the whole scene box.

    python benchmarks/profile_step.py --data ../shared/data/lego_200 --warmup 400 --steps 2 --timed-steps 0 \
        --alternate-blur-block 100000 --rounds 16

times the blur's blocks (`rs_nerfstudio.smoothing.BLOCK`) against another block size in the same process, 25 steps
of each in turn: this machine's speed drifts by 10% and more between runs, so a ratio is measured within one.

    python benchmarks/profile_step.py --data ../shared/data/lego_200 --warmup 400 --steps 0 --timed-steps 0 \
        --breakdown 60

times the forward pass's stages (the ray batch, the blur, the sampler and its parts, the colour) by wall clock, with
no profiler to slow the small operations down.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Dict

import torch

from rs_nerfstudio.config import rs_sdf_trainer_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lego_200"))
    parser.add_argument("--warmup", type=int, default=300, help="steps before profiling")
    parser.add_argument("--steps", type=int, default=10, help="steps profiled")
    parser.add_argument("--timed-steps", type=int, default=100, help="steps timed without the profiler, after it")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--load-config", type=Path, default=None, help="start from a trained run (steady state)")
    parser.add_argument("--alternate-blur-block", type=int, default=None, metavar="N",
                        help="then time training steps with the blur in blocks of N voxels against the default, in turn")
    parser.add_argument("--rounds", type=int, default=16, help="rounds of 25 steps each for --alternate-blur-block")
    parser.add_argument("--breakdown", type=int, default=0, metavar="N",
                        help="then time the forward pass's stages over N more steps")
    args = parser.parse_args()

    if args.load_config is not None:
        from nerfstudio.utils.eval_utils import eval_setup

        config, pipeline, _, start_step = eval_setup(args.load_config, test_mode="val")
        pipeline.train()
    else:
        config = rs_sdf_trainer_config()
        config.resolve_defaults()
        config.pipeline.datamanager.data = args.data
        pipeline = config.pipeline.setup(device="cpu", test_mode="val")
        start_step = 0
    optimizers = config.optimizers
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
    from nerfstudio.engine.optimizers import Optimizers

    opt = Optimizers(optimizers, pipeline.get_param_groups())
    model = pipeline.model
    attributes = TrainingCallbackAttributes(optimizers=opt, grad_scaler=None, pipeline=pipeline, trainer=None)
    callbacks = model.get_training_callbacks(attributes)  # the coarse stage's end, the fills

    phases = {"forward": 0.0, "backward": 0.0, "optimizer and callbacks": 0.0}

    def step(i: int) -> None:
        started = time.perf_counter()
        for callback in callbacks:
            callback.run_callback_at_location(i, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        opt.zero_grad_all()
        forward = time.perf_counter()
        _, loss_dict, _ = pipeline.get_train_loss_dict(i)
        backward = time.perf_counter()
        sum(loss_dict.values()).backward()
        optimizer = time.perf_counter()
        opt.optimizer_step_all()
        opt.scheduler_step_all(i)
        for callback in callbacks:
            callback.run_callback_at_location(i, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        ended = time.perf_counter()
        phases["forward"] += backward - forward
        phases["backward"] += optimizer - backward
        phases["optimizer and callbacks"] += ended - optimizer + forward - started

    for i in range(start_step, start_step + args.warmup):
        step(i)
    if args.steps:
        start = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for i in range(start_step + args.warmup, start_step + args.warmup + args.steps):
                step(i)
        elapsed = (time.perf_counter() - start) / args.steps
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=args.rows))
        rays = config.pipeline.datamanager.train_num_rays_per_batch
        print(f"{elapsed * 1000:.1f} ms/step (profiled), {rays / elapsed:.0f} rays/s at {rays} rays per batch, "
              f"grid {model.field.grid_shape}")
    phases.update({name: 0.0 for name in phases})
    first_timed = start_step + args.warmup + args.steps
    for i in range(first_timed, first_timed + args.timed_steps):
        step(i)
    if args.timed_steps:
        total = sum(phases.values()) / args.timed_steps
        split = ", ".join(f"{name} {1000 * seconds / args.timed_steps:.1f}" for name, seconds in phases.items())
        print(f"{1000 * total:.1f} ms/step without the profiler over {args.timed_steps} more steps: {split}")
    if args.alternate_blur_block is not None:
        alternate_blur_blocks(step, first_timed + args.timed_steps, args.alternate_blur_block, args.rounds)
    if args.breakdown:
        time_stages(step, pipeline, first_timed + args.timed_steps, args.breakdown)


def time_stages(step, pipeline, first: int, steps: int) -> Dict[str, float]:
    """Wall-clock ms per training step in each stage of the forward pass, printed and returned: each stage's function
    is wrapped in a timer for ``steps`` steps. A stage of depth 2 is a part of the depth-1 stage above it."""
    from nerfstudio.cameras.rays import RayBundle

    from rs_nerfstudio import sampler as rs_sampler

    model = pipeline.model
    stages = [  # (owner, attribute, depth, label)
        (pipeline, "get_train_loss_dict", 0, "forward pass and loss"),
        (pipeline.datamanager, "next_train", 1, "the ray batch (nerfstudio's pixel sampler and ray generator)"),
        (model.field, "smoothed_occupancy_grid", 1, "the blur (randomized smoothing of the grid)"),
        (model.sampler, "coarse_weights", 1, "the sampler: its coarse march"),
        (rs_sampler, "bins_near_matter", 2, "of which the cheaper march that clips it"),
        (rs_sampler, "sample_packed_pdf", 1, "the sampler: inverse-CDF sampling"),
        (RayBundle, "get_ray_samples", 1, "the sampler: nerfstudio's RaySamples"),
        (model, "_smoothed_at_samples", 1, "f_hat at the samples"),
        (model, "_deferred_colour", 1, "deferred colour"),
        (model.field, "composite_appearance", 2, "of which compositing the features"),
        (model.field, "decode_colour_heads", 2, "of which the colour MLPs"),
        (model, "get_loss_dict", 1, "the loss"),
    ]
    spent = {label: 0.0 for _, _, _, label in stages}
    own_attributes = []  # what each owner held under the name itself (None: it was the class's), to put back
    for owner, attribute, _, label in stages:
        own_attributes.append((owner, attribute, vars(owner).get(attribute)))

        def timed(*args, _wrapped=getattr(owner, attribute), _label=label, **kwargs):
            started = time.perf_counter()
            try:
                return _wrapped(*args, **kwargs)
            finally:
                spent[_label] += time.perf_counter() - started

        setattr(owner, attribute, timed)
    try:
        for i in range(first, first + steps):
            step(i)
    finally:
        for owner, attribute, own in reversed(own_attributes):
            if own is None:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, own)
    rest = "the rest (densities, weights, renderers)"
    spent[rest] = spent[stages[0][3]] - sum(spent[label] for _, _, depth, label in stages if depth == 1)
    depths = {label: depth for _, _, depth, label in stages} | {rest: 1}
    milliseconds = {label: 1000 * seconds / steps for label, seconds in spent.items()}
    for label, value in milliseconds.items():
        print(f"{value:6.1f} ms/step  {'  ' * depths[label]}{label}")
    return milliseconds


def alternate_blur_blocks(step, first: int, other_block: int, rounds: int, steps_per_turn: int = 25) -> None:
    """Median ms per training step with the blur in blocks of the default size and of ``other_block``, in turns."""
    from rs_nerfstudio import smoothing

    default = smoothing.BLOCK
    times: dict = {default: [], other_block: []}
    i = first
    for _ in range(rounds):
        for block in times:
            smoothing.BLOCK = block
            started = time.perf_counter()
            for _ in range(steps_per_turn):
                step(i)
                i += 1
            times[block].append(1000 * (time.perf_counter() - started) / steps_per_turn)
    smoothing.BLOCK = default
    medians = {block: statistics.median(values) for block, values in times.items()}
    for block, values in times.items():
        print(f"blur in blocks of {block}: median {medians[block]:.1f} ms/step over {rounds} turns of "
              f"{steps_per_turn} ({min(values):.1f}-{max(values):.1f})")
    print(f"ratio {medians[other_block] / medians[default]:.3f} (blocks of {other_block} / blocks of {default})")


if __name__ == "__main__":
    main()
