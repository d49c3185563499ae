"""Shared fixtures: tiny generated scenes, made once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
"""The virtual env's scripts (ns-train, rs-scene, ...), wherever the tests are run from."""


def command(name: str) -> str:
    """Path of a console script of this environment."""
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32-pixel scene of the union preset: 8 train, 2 val, 2 test views."""
    from rs_nerfstudio.scenes import make_scene

    return make_scene(
        tmp_path_factory.mktemp("scenes") / "union",
        shape="union",
        image_size=32,
        num_train=8,
        num_val=2,
        num_test=2,
        mesh_resolution=48,
        sdf_resolution=24,
    )


@pytest.fixture
def scene_copy(tiny_scene: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny scene that a test may break."""
    return Path(shutil.copytree(tiny_scene, tmp_path / "scene"))


TINY_TRAINING = [
    "--vis", "tensorboard",
    "--max-num-iterations", "60",
    "--steps-per-save", "30",
    "--steps-per-eval-image", "1000",
    "--steps-per-eval-batch", "1000",
    "--pipeline.datamanager.train-num-rays-per-batch", "1024",
    "--pipeline.model.grid-resolution", "48",
    "--pipeline.model.appearance-resolution", "32",
    "--pipeline.model.sigma", "0.0625",
    "--pipeline.model.steepness", "60",  # a rising alpha, so that tests see it restored from a checkpoint
    "--pipeline.model.fit-box-at-step", "10",  # checkpoints hold grids on a fitted box, smaller than the scene's
    "--pipeline.model.fill-every", "20",
    "--optimizers.geometry.scheduler.max-steps", "5000",  # the other rates decay over the 60 steps
]  # fmt: skip


def ns_train_rs_sdf(data: Path, output: Path, options: list) -> None:
    """The real ``ns-train rs-sdf`` on CPU; fails the test with its output's tail if it fails."""
    result = subprocess.run(
        [command("ns-train"), "rs-sdf", "--data", str(data), "--output-dir", str(output), *options],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="session")
def trained_run(tiny_scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config.yml of a 60-step ns-train run on the tiny scene, on CPU (shared by the tests that need a run)."""
    output = tmp_path_factory.mktemp("runs")
    ns_train_rs_sdf(tiny_scene, output, TINY_TRAINING)
    configs = list(output.glob("*/rs-sdf/*/config.yml"))
    assert len(configs) == 1, configs
    return configs[0]


os.environ.setdefault("MPLBACKEND", "Agg")
