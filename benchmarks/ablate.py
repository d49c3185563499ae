"""Train rs-sdf in-process for a few minutes with some settings changed, and print a test-pixel PSNR along the way.

    python benchmarks/ablate.py --seconds 300 --decay-seconds 600 \
        --ns-train-args="--pipeline.model.appearance-resolution 192"
    python benchmarks/ablate.py --seconds 300 --decay-seconds 600 --ns-train-args="\
        --optimizers.appearance.optimizer.lr 0.1 --optimizers.appearance.scheduler.lr-final 0.01"

Cheaper than benchmarks/compare_methods.py for comparing variants: no ns-train process, and the whole test views are
scored only with ``--whole-views``. The clock counts training iterations only; the learning rates decay over
``--decay-seconds`` as ``train_time_budget`` makes them in ns-train. At each mark it renders a fixed set of random
test pixels (the harness's probe, seeded, so every run sees the same pixels). ``--save FILE`` keeps the trained
model's ``state_dict``, to look at where its error is. Runs on one machine drift by ~10% in speed, and three runs of
the same settings differ by ~0.4 dB at 300 s: compare variants run one after another, and more than once.

More options ask where the gap between the training and the test pixels comes from:

    python benchmarks/ablate.py --with-test-views --save all.pt      # the test views trained on too (an oracle)
    python benchmarks/ablate.py --load all.pt --freeze-geometry --reset-colour
                                # that geometry, colour trained anew on the training views alone
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

MARKS = (60.0, 120.0, 180.0, 240.0, 300.0, 420.0, 600.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lego_200"))
    parser.add_argument("--seconds", type=float, default=300.0, help="training time")
    parser.add_argument("--decay-seconds", type=float, default=None, help="learning-rate decay horizon (--seconds)")
    parser.add_argument("--ns-train-args", default="", metavar="FLAGS",
                        help='ns-train flags for rs-sdf, written --ns-train-args="--pipeline.model.num-samples 48"')
    parser.add_argument("--probe-pixels", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, default=None, help="write the trained model's state_dict here at the end")
    parser.add_argument("--load", type=Path, default=None, help="start from a state_dict that --save wrote")
    parser.add_argument("--freeze-geometry", action="store_true",
                        help="train colour alone: the geometry grid stays as it starts (or as --load has it), unfilled")
    parser.add_argument("--reset-colour", action="store_true", help="colour grid and MLP start afresh, after --load")
    parser.add_argument("--with-test-views", action="store_true",
                        help="train on the test views too (an oracle); the probe's pixels are among them")
    parser.add_argument("--whole-views", action="store_true",
                        help="at the end, render every test view whole and print their mean PSNR and SSIM, as the "
                        "harness scores (the probe reads ~1 dB higher, and its ranking of close variants can differ)")
    return parser.parse_args()


def with_test_views(data: Path, folder: Path) -> Path:
    """A Blender scene in ``folder`` whose training split is ``data``'s training and test frames: links to ``data``'s
    files, and a ``transforms_train.json`` of its own. Nothing is copied or written in ``data``."""
    for entry in data.iterdir():
        if entry.name != "transforms_train.json":
            (folder / entry.name).symlink_to(entry.resolve())
    transforms = json.loads((data / "transforms_train.json").read_text())
    test = json.loads((data / "transforms_test.json").read_text())
    transforms["frames"] = transforms["frames"] + test["frames"]
    (folder / "transforms_train.json").write_text(json.dumps(transforms))
    return folder


def keep_geometry_only(state: dict, model_state: dict) -> dict:
    """``state`` with the colour MLP's weights of ``model_state`` and colour features of the model's width, on the
    saved grid's voxels (the box is the saved one); the colour values are to be re-initialised."""
    state = {name: value for name, value in state.items() if not name.startswith("field.colour_mlp.")}
    state.update({name: value for name, value in model_state.items() if name.startswith("field.colour_mlp.")})
    features = state["field.features"]
    state["field.features"] = features.new_zeros(*features.shape[:3], model_state["field.features"].shape[-1])
    return state


def configure(args: argparse.Namespace):
    """rs-sdf's defaults with ``--ns-train-args`` applied, as the harness applies its ``--rs-sdf-args``."""
    from compare_methods import with_ns_train_flags

    from rs_nerfstudio.config import rs_sdf_trainer_config

    config = with_ns_train_flags(rs_sdf_trainer_config(), args.ns_train_args)
    config.resolve_defaults()  # as ns-train does; the clock overrides them
    config.pipeline.datamanager.data = args.data
    config.pipeline.model.train_time_budget = args.decay_seconds or args.seconds  # the model's clock: train()'s
    if args.freeze_geometry:
        config.optimizers.pop("geometry")
        config.pipeline.model.fill_every = 0  # the fills would write into the frozen grid
    return config


def main() -> None:
    args = parse_args()
    if not args.data.is_dir():
        sys.exit(f"--data {args.data}: no such folder")
    if args.save is not None and args.save.exists():
        sys.exit(f"--save {args.save}: already exists, not overwritten")
    if args.save is not None and not args.save.parent.is_dir():
        sys.exit(f"--save {args.save}: no folder {args.save.parent}")
    if args.load is not None and not args.load.is_file():
        sys.exit(f"--load {args.load}: no such file")
    if args.with_test_views:
        from rs_nerfstudio.validation import check_blender_folder

        check_blender_folder(args.data, splits=("train", "test"))  # the splits joined: one line naming a bad file
        with tempfile.TemporaryDirectory(prefix="rs-sdf-ablate-") as folder:
            args.data = with_test_views(args.data, Path(folder))
            train(args)
    else:
        train(args)


def train(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from compare_methods import CurveProbe, eval_split_views, score_test_split
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
    from nerfstudio.engine.optimizers import Optimizers

    from rs_nerfstudio.optim import decay_learning_rates_to

    config = configure(args)
    torch.manual_seed(args.seed)
    pipeline = config.pipeline.setup(device="cpu", test_mode="test")
    model = pipeline.model
    if args.load is not None:
        state = torch.load(args.load, map_location="cpu", weights_only=True)
        if args.reset_colour:  # only the geometry is kept, so the colour may differ in shape (other --ns-train-args)
            state = keep_geometry_only(state, model.state_dict())
        model.load_state_dict(state)
    if args.reset_colour:
        model.field.reset_appearance()
    if args.freeze_geometry:
        model.field.base_logits.requires_grad_(False)
    groups = {name: group for name, group in pipeline.get_param_groups().items() if name in config.optimizers}
    optimizers = Optimizers(config.optimizers, groups)
    attributes = TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=None, pipeline=pipeline, trainer=None)
    callbacks = model.get_training_callbacks(attributes)
    probe = CurveProbe.build(eval_split_views(pipeline.datamanager), args.probe_pixels, seed=args.seed)
    decay_seconds = args.decay_seconds or args.seconds
    marks = [mark for mark in MARKS if mark < args.seconds] + [args.seconds]
    elapsed, step, train_psnr = 0.0, 0, []
    while marks:
        started = time.perf_counter()
        model.train_seconds = elapsed
        pipeline.train()
        for callback in callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        decay_learning_rates_to(elapsed / decay_seconds, optimizers, config.optimizers)
        optimizers.zero_grad_all()
        _, loss_dict, metrics = pipeline.get_train_loss_dict(step)
        sum(loss_dict.values()).backward()
        optimizers.optimizer_step_all()
        for callback in callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        elapsed += time.perf_counter() - started
        step += 1
        train_psnr = (train_psnr + [float(metrics["psnr"].detach())])[-50:]
        if elapsed >= marks[0]:
            marks = [mark for mark in marks if mark > elapsed]
            pipeline.eval()
            scores = probe.scores(model)
            print(
                f"{elapsed:6.1f} s  step {step:5d}  train {sum(train_psnr) / len(train_psnr):.2f} dB  "
                f"probe {scores['psnr']:.2f} dB (pooled {scores['psnr_pooled']:.2f})  "
                f"{1000 * elapsed / step:.0f} ms/step",
                flush=True,
            )
    if args.whole_views:
        scores = score_test_split(pipeline)
        print(f"whole test views: {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f} ({scores['num_views']} views)")
    if args.save is not None:
        torch.save(model.state_dict(), args.save)


if __name__ == "__main__":
    main()
