"""Shared fixtures: tiny generated scenes, made once per session."""

from __future__ import annotations

import os
import shutil
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


os.environ.setdefault("MPLBACKEND", "Agg")
