"""benchmarks/profile_step.py's stage timer: every stage it names is one a training step runs, and it puts the
functions it wraps back."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from profile_step import time_stages  # noqa: E402


def test_time_stages_times_every_stage_of_a_training_step_and_unwraps(tiny_scene: Path, capsys) -> None:
    from nerfstudio.cameras.rays import RayBundle
    from nerfstudio.engine.optimizers import Optimizers

    from rs_nerfstudio import sampler as rs_sampler
    from rs_nerfstudio.config import rs_sdf_trainer_config

    config = rs_sdf_trainer_config()
    config.resolve_defaults()
    config.pipeline.datamanager.data = tiny_scene
    config.pipeline.datamanager.train_num_rays_per_batch = 256
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    optimizers = Optimizers(config.optimizers, pipeline.get_param_groups())

    def step(i: int) -> None:
        optimizers.zero_grad_all()
        _, loss_dict, _ = pipeline.get_train_loss_dict(i)
        sum(loss_dict.values()).backward()
        optimizers.optimizer_step_all()

    originals = (rs_sampler.bins_near_matter, rs_sampler.sample_packed_pdf, RayBundle.get_ray_samples)
    capsys.readouterr()  # what setting up printed
    milliseconds = time_stages(step, pipeline, first=0, steps=2)

    assert len(milliseconds) == 13 and len(capsys.readouterr().out.splitlines()) == 13  # one line per stage
    for label, value in milliseconds.items():
        if not label.startswith("the rest"):
            assert value > 0, label  # a stage that never ran reads 0: the step does not call what it names
    assert (rs_sampler.bins_near_matter, rs_sampler.sample_packed_pdf, RayBundle.get_ray_samples) == originals
    for owner in (pipeline, pipeline.datamanager, pipeline.model, pipeline.model.field, pipeline.model.sampler):
        assert not {"get_train_loss_dict", "next_train", "coarse_weights", "_deferred_colour"} & set(vars(owner))
