"""``rs-demo``: make the default scene, train rs-sdf on it for a few minutes, score it on the test views.

Everything runs through nerfstudio's own training loop and evaluation, exactly as ``ns-train rs-sdf`` and
``ns-eval`` would, so the run it leaves behind opens in ``ns-viewer`` and exports with ``rs-export`` (or, on CUDA,
``ns-export``).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import tyro

from rs_nerfstudio.validation import InputError


@dataclass
class DemoConfig:
    """Train rs-sdf on a generated scene of analytic shapes and report its test PSNR."""

    output_dir: Path = Path("rs-demo")
    """Folder for the scene (``scene/``) and the runs (``runs/``); an existing scene made by rs-scene is reused."""
    shape: str = "union"
    """Scene preset from rs-scene (sphere, box, torus, union)."""
    image_size: int = 100
    """Width and height of the generated views, in pixels."""
    train_seconds: float = 150.0
    """Training budget, in seconds spent inside training iterations (start-up and evaluation come on top)."""
    viewer: bool = False
    """Open nerfstudio's viewer during training (it stays up after training until you press Ctrl+C)."""


def run_demo(config: DemoConfig) -> dict:
    """Make (or reuse) the scene, train, evaluate on the test split; return the metrics and where the run is."""
    from rs_nerfstudio.config import rs_sdf_trainer_config
    from rs_nerfstudio.scenes import SceneError, make_scene

    if not 0 < config.train_seconds < float("inf"):
        raise InputError(f"--train-seconds must be a positive number of seconds, got {config.train_seconds}")
    if config.output_dir.exists() and not config.output_dir.is_dir():
        raise InputError(f"--output-dir {config.output_dir} is a file, not a folder")
    scene_dir = config.output_dir / "scene"
    if not (scene_dir / "scene.json").is_file():
        try:
            make_scene(scene_dir, shape=config.shape, image_size=config.image_size)
        except FileExistsError:  # make_scene's own refusal names rs-scene's --overwrite, which rs-demo lacks
            message = f"{scene_dir} exists but holds no scene made by rs-scene: choose another --output-dir"
            raise InputError(message) from None
        except (SceneError, OSError) as error:
            raise InputError(str(error)) from None
    else:
        check_reused_scene(scene_dir, config)
        print(f"rs-demo: reusing the scene in {scene_dir}")

    trainer_config = rs_sdf_trainer_config()
    trainer_config.data = scene_dir
    trainer_config.pipeline.datamanager.data = scene_dir
    trainer_config.output_dir = config.output_dir / "runs"
    trainer_config.experiment_name = config.shape
    trainer_config.vis = "viewer" if config.viewer else "tensorboard"
    trainer_config.viewer.quit_on_train_completion = not config.viewer
    trainer_config.pipeline.model.train_time_budget = config.train_seconds
    trainer_config.steps_per_eval_image = 1_000_000  # the demo evaluates once, at the end
    trainer_config.steps_per_eval_batch = 1_000_000

    finished = train(trainer_config)
    config_path = trainer_config.get_base_dir() / "config.yml"  # after train(), which sets the run's timestamp
    if not finished:
        print(f"\nrs-demo: training stopped by Ctrl+C before its budget; the run so far is in {config_path.parent}")
        raise SystemExit(130)
    metrics = evaluate_run(config_path)
    print_summary(config_path, metrics)
    return {"config": str(config_path), **metrics}


def train(trainer_config) -> bool:
    """What ``ns-train`` does with the config, in this process; False if Ctrl+C stopped training before its end.

    ns-train's launcher catches Ctrl+C and returns as if training had ended, which would have the demo go on to score
    a half-trained run. Ctrl+C while the viewer stays up after training (``--viewer``) is how that ends: True.
    """
    import random

    import numpy as np
    import torch

    trainer_config.set_timestamp()
    trainer_config.print_to_terminal()
    trainer_config.save_config()
    random.seed(trainer_config.machine.seed)
    np.random.seed(trainer_config.machine.seed)
    torch.manual_seed(trainer_config.machine.seed)
    trainer = trainer_config.setup(local_rank=0, world_size=1)
    trainer.setup()
    try:
        trainer.train()
    except KeyboardInterrupt:
        return trainer.training_state == "completed"  # set once the final checkpoint is saved
    return True


def check_reused_scene(scene_dir: Path, config: DemoConfig) -> None:
    """The scene already in ``scene_dir`` is the one the flags ask for; a run of another would be filed wrongly."""
    try:
        made = json.loads((scene_dir / "scene.json").read_text(encoding="utf8"))
    except (OSError, ValueError) as error:
        raise InputError(f"unreadable {scene_dir / 'scene.json'}: {error}") from None
    if not isinstance(made, dict):
        raise InputError(f"{scene_dir / 'scene.json'} is not a scene's description from rs-scene")
    asked = {"shape": config.shape, "image_size": config.image_size}
    if any(made.get(key) != value for key, value in asked.items()):
        raise InputError(
            f"{scene_dir} holds a '{made.get('shape')}' scene of {made.get('image_size')} px, not the '{config.shape}' "
            f"scene of {config.image_size} px asked for: pass those flags, or another --output-dir"
        )


def evaluate_run(config_path: Path) -> dict:
    """Mean metrics over the run's test split, as ``ns-eval`` computes them; also written beside the config."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, step = eval_setup(config_path, test_mode="test")
    metrics = {key: float(value) for key, value in pipeline.get_average_eval_image_metrics().items()}
    metrics["step"] = step
    (config_path.parent / "demo_eval.json").write_text(json.dumps(metrics, indent=2), encoding="utf8")
    return metrics


def print_summary(config_path: Path, metrics: dict) -> None:
    print()
    print(f"rs-demo: test PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f} after {metrics['step']} steps")
    print(f"rs-demo: the run is in {config_path.parent}")
    print(f"rs-demo: open it in the viewer with: ns-viewer --load-config {shlex.quote(str(config_path))}")


def entrypoint() -> None:
    """Command-line entry point."""
    from rs_nerfstudio.cli import run_command

    config = tyro.cli(DemoConfig)
    run_command("rs-demo", lambda: run_demo(config), "--image-size")


if __name__ == "__main__":
    entrypoint()
