"""rs-demo's own checks (its training is nerfstudio's, tested in test_integration.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rs_nerfstudio.demo import DemoConfig, check_reused_scene, run_demo
from rs_nerfstudio.validation import InputError


def test_a_reused_scene_must_be_the_one_asked_for(tiny_scene: Path) -> None:
    check_reused_scene(tiny_scene, DemoConfig(shape="union", image_size=32))
    with pytest.raises(InputError, match="holds a 'union' scene of 32 px, not the 'torus' scene of 32 px"):
        check_reused_scene(tiny_scene, DemoConfig(shape="torus", image_size=32))
    with pytest.raises(InputError, match="not the 'union' scene of 100 px"):
        check_reused_scene(tiny_scene, DemoConfig(shape="union", image_size=100))


def test_bad_flags_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--train-seconds"):
        run_demo(DemoConfig(output_dir=tmp_path, train_seconds=-5))
    with pytest.raises(InputError, match="foo"):
        run_demo(DemoConfig(output_dir=tmp_path, shape="foo"))
    assert not (tmp_path / "scene").exists()


def test_a_folder_in_the_way_of_the_scene_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "scene").mkdir()
    (tmp_path / "scene" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds no scene made by rs-scene: choose another --output-dir"):
        run_demo(DemoConfig(output_dir=tmp_path))
    assert (tmp_path / "scene" / "notes.txt").read_text() == "mine"
