"""The real ``ns-train rs-sdf`` on a tiny generated scene, on CPU, then nerfstudio's own eval_setup on the run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import BIN, command


def test_training_resumes_from_a_fitted_box(trained_run: Path, tiny_scene: Path, tmp_path: Path) -> None:
    """--load-dir: nerfstudio builds the model on the scene box and its optimizers before loading the checkpoint,
    whose grids live on the fitted box. Training must go on, updating the loaded grids."""
    from tests.conftest import TINY_TRAINING, ns_train_rs_sdf

    first = torch.load(trained_run.parent / "nerfstudio_models" / "step-000000059.ckpt", weights_only=True)
    aabb = first["pipeline"]["_model.field.aabb"]
    assert (aabb[1] - aabb[0]).prod() < 0.5 * 3.0**3  # fitted: well inside the generated scene's 3-unit box
    options = list(TINY_TRAINING) + ["--load-dir", str(trained_run.parent / "nerfstudio_models")]
    options[options.index("--max-num-iterations") + 1] = "10"  # ten more steps: 60..69
    ns_train_rs_sdf(tiny_scene, tmp_path, options)
    resumed = torch.load(next(tmp_path.glob("*/rs-sdf/*/nerfstudio_models/step-000000069.ckpt")), weights_only=True)
    torch.testing.assert_close(resumed["pipeline"]["_model.field.aabb"], aabb)  # fitted once, not again
    before, after = first["pipeline"]["_model.field.base_logits"], resumed["pipeline"]["_model.field.base_logits"]
    assert before.shape == after.shape and not torch.equal(before, after)


def test_checkpoints_load_with_weights_only(trained_run: Path) -> None:
    checkpoints = sorted((trained_run.parent / "nerfstudio_models").glob("step-*.ckpt"))
    assert checkpoints, "no checkpoint written"
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)
    assert state["step"] == 59
    assert "_model.field.base_logits" in state["pipeline"]


def test_the_learning_rates_decay_over_max_num_iterations(trained_run: Path) -> None:
    """`--max-num-iterations 60` sets the decays' length too, where no `--optimizers.NAME.scheduler.max-steps` does
    (the tiny runs give the geometry's: 5000): the run's last checkpoint holds the colour's final rates."""
    import yaml

    config = yaml.load(trained_run.read_text(), Loader=yaml.Loader)
    schedulers = {name: group["scheduler"] for name, group in config.optimizers.items()}
    assert {name: scheduler.max_steps for name, scheduler in schedulers.items()} == {
        "geometry": 5000, "appearance": 60, "colour_mlp": 60,
    }  # fmt: skip
    state = torch.load(trained_run.parent / "nerfstudio_models" / "step-000000059.ckpt", weights_only=True)
    for name in ("appearance", "colour_mlp"):
        lr = state["optimizers"][name]["param_groups"][0]["lr"]
        assert lr == pytest.approx(schedulers[name].lr_final, rel=0.2), name


def test_eval_setup_and_metrics(trained_run: Path, tiny_scene: Path) -> None:
    from nerfstudio.utils.eval_utils import eval_setup

    from rs_nerfstudio.model import RSSDFModel

    _, pipeline, _, step = eval_setup(trained_run, test_mode="test")
    assert step == 59 and isinstance(pipeline.model, RSSDFModel)
    assert pipeline.device.type == "cpu"
    # The steepness is restored from the checkpoint's step, not left at its initial value.
    assert pipeline.model.field.steepness == pytest.approx(pipeline.model.steepness_at(59))

    metrics = pipeline.get_average_eval_image_metrics()
    assert {"psnr", "ssim"} <= set(metrics)
    # 60 steps must beat a blank white image of the test views by a clear margin.
    dataset = pipeline.datamanager.eval_dataset
    white_psnr = torch.stack(
        [-10 * torch.log10(((dataset[i]["image"][..., :3] - 1.0) ** 2).mean()) for i in range(len(dataset))]
    ).mean()
    assert metrics["psnr"] > white_psnr + 3.0, (metrics, float(white_psnr))


def test_outputs_are_per_ray_in_viewer_order(trained_run: Path) -> None:
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(trained_run, test_mode="test")
    camera = pipeline.datamanager.eval_dataset.cameras[0:1]
    with torch.no_grad():
        outputs = pipeline.model.get_outputs_for_camera(camera)
    keys = list(outputs)
    assert keys[:3] == ["rgb", "accumulation", "depth"]
    assert {"normals", "weak_sdf", "occupancy"} <= set(keys)
    height, width = int(camera.height), int(camera.width)
    channels = {"rgb": 3, "accumulation": 1, "depth": 1, "normals": 3, "weak_sdf": 1, "occupancy": 1}
    for key, num in channels.items():
        assert outputs[key].shape == (height, width, num), key
        assert torch.isfinite(outputs[key]).all(), key
    assert 0.0 <= float(outputs["normals"].min()) and float(outputs["normals"].max()) <= 1.0
    # Rays that hit the object pass through its inside (negative weak SDF); rays that miss it stay outside.
    hit = outputs["accumulation"][..., 0] > 0.9
    miss = outputs["accumulation"][..., 0] < 0.1
    assert hit.any() and miss.any()
    assert float((outputs["weak_sdf"][..., 0][hit] < 0).float().mean()) > 0.9
    assert float((outputs["weak_sdf"][..., 0][miss] > 0).float().mean()) > 0.9


def test_export_interface(trained_run: Path) -> None:
    """``ns-export marching-cubes`` reads the weak SDF as ``field.forward_geonetwork(x)[:, 0]`` (where CUDA is:
    ``tests/test_method.py`` checks the ``sdf_field`` mark it looks for first)."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(trained_run, test_mode="inference")
    points = torch.rand(1000, 3) * 2 - 1
    sdf = pipeline.model.field.forward_geonetwork(points)[:, 0]
    assert sdf.shape == (1000,) and torch.isfinite(sdf).all()
    assert float(sdf.min()) < 0 < float(sdf.max())


def test_ns_render_renders_the_model(trained_run: Path, tmp_path: Path) -> None:
    """``ns-render interpolate`` runs on the CPU, and its frame at the first test camera is the model's render of
    that view. ns-render refuses to start without an ffmpeg on PATH, even for images: `make setup` links one."""
    import mediapy
    from nerfstudio.utils.eval_utils import eval_setup

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "CUDA_VISIBLE_DEVICES": ""}
    assert shutil.which("ffmpeg", path=env["PATH"]), "no ffmpeg on PATH nor in the venv: run `make setup`"
    frames = tmp_path / "frames"
    result = subprocess.run(
        [command("ns-render"), "interpolate", "--load-config", str(trained_run), "--output-path", str(frames),
         "--output-format", "images", "--image-format", "png", "--interpolation-steps", "1"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    written = sorted(frames.glob("*.png"))
    assert [path.name for path in written] == ["00000.png"]  # two test cameras, one step from the first to the next

    _, pipeline, _, _ = eval_setup(trained_run, test_mode="inference")
    with torch.no_grad():
        expected = pipeline.model.get_outputs_for_camera(pipeline.datamanager.eval_dataset.cameras[0:1])["rgb"]
    frame = torch.from_numpy(mediapy.read_image(written[0])).float() / 255.0
    assert frame.shape == expected.shape
    assert float(expected.std()) > 0.05  # not a blank image
    assert float((frame - expected.clamp(0, 1)).abs().max()) <= 2.0 / 255.0


def test_time_budget_stops_training_and_decays_the_learning_rate(tiny_scene: Path, tmp_path: Path) -> None:
    """--pipeline.model.train-time-budget: training stops on time (not steps), saves, with the lr at its final value.
    The budget lifts the default step limit, which would otherwise end a long budget early."""
    import yaml

    from rs_nerfstudio.config import BUDGET_MAX_STEPS, rs_sdf_trainer_config
    from tests.conftest import TINY_TRAINING, ns_train_rs_sdf

    options = list(TINY_TRAINING) + ["--pipeline.model.train-time-budget", "4"]
    at = options.index("--max-num-iterations")
    del options[at : at + 2]  # the default limit
    ns_train_rs_sdf(tiny_scene, tmp_path, options)
    (config_path,) = tmp_path.glob("*/rs-sdf/*/config.yml")
    assert yaml.load(config_path.read_text(), Loader=yaml.Loader).max_num_iterations == BUDGET_MAX_STEPS
    checkpoints = list(config_path.parent.glob("nerfstudio_models/step-*.ckpt"))
    assert len(checkpoints) >= 1
    state = torch.load(sorted(checkpoints)[-1], map_location="cpu", weights_only=True)
    assert 1 <= state["step"] < BUDGET_MAX_STEPS - 1
    geometry = rs_sdf_trainer_config().optimizers["geometry"]
    lr, lr_final = geometry["optimizer"].lr, geometry["scheduler"].lr_final
    assert lr_final < lr / 5
    last_lr = state["optimizers"]["geometry"]["param_groups"][0]["lr"]
    assert last_lr == pytest.approx(lr_final, rel=0.2)  # decayed over the 4 s


def ns_export_on_the_cpu(subcommand: str, run: Path, output: Path, *flags: str) -> subprocess.CompletedProcess:
    """``ns-export SUBCOMMAND`` on a run, with CUDA hidden even where a GPU is."""
    return subprocess.run(
        [command("ns-export"), subcommand, "--load-config", str(run), "--output-dir", str(output), *flags],
        capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip


def test_ns_export_marching_cubes_without_cuda_says_so_in_one_line(trained_run: Path, tmp_path: Path) -> None:
    """nerfstudio's marching-cubes exporter calls ``.cuda()``: without CUDA it ended in a 20-line traceback about
    NVIDIA drivers. It now ends in one line that names ``rs-export mesh``, and writes nothing."""
    from rs_nerfstudio.model import MARCHING_CUBES_NEEDS_CUDA

    output = tmp_path / "mesh"
    result = ns_export_on_the_cpu("marching-cubes", trained_run, output, "--resolution", "512")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == MARCHING_CUBES_NEEDS_CUDA
    assert not any(output.iterdir())  # the exporter makes the folder before it loads the run


def test_ns_export_pointcloud_lies_on_the_scenes_surface(trained_run: Path, tmp_path: Path) -> None:
    """``ns-export`` starts (it imports open3d, which needs libusb-1.0: `make setup` links one where the machine has
    none), and its point cloud, from the model's depth on the training views, lies near the scene's true surface."""
    import numpy as np
    import trimesh

    from rs_nerfstudio.runs import load_model
    from rs_nerfstudio.scenes import get_shape

    result = ns_export_on_the_cpu("pointcloud", trained_run, tmp_path, "--num-points", "2000")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    points = np.asarray(trimesh.load(tmp_path / "point_cloud.ply").vertices)
    assert len(points) >= 1000
    model, _ = load_model(trained_run)
    box = model.field.aabb.cpu()
    anywhere = box[0] + torch.rand(len(points), 3, generator=torch.Generator().manual_seed(0)) * (box[1] - box[0])
    exact = get_shape("union").sdf  # the tiny scene's shape
    cloud = float(exact(torch.from_numpy(points).float()).abs().median())
    uniform = float(exact(anywhere).abs().median())  # points anywhere in the grids' box, for scale
    assert cloud < uniform / 3  # measured 0.039 against 0.177; with nerfstudio's alpha of 1 for every ray, 0.83
