"""Bad input to ``ns-train rs-sdf``: one clear line naming the culprit, exit status 1, nothing written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from rs_nerfstudio.config import rs_sdf_trainer_config
from rs_nerfstudio.validation import InputError, check_training_inputs
from tests.conftest import command


def config_for(data: Path, **model_overrides):
    config = rs_sdf_trainer_config()
    config.data = data
    config.pipeline.datamanager.data = data
    for key, value in model_overrides.items():
        setattr(config.pipeline.model, key, value)
    return config


def check(data: Path, **model_overrides) -> str:
    with pytest.raises(InputError) as caught:
        check_training_inputs(config_for(data, **model_overrides))
    message = str(caught.value.code)
    assert "\n" not in message
    return message


def test_good_scene_passes(scene_copy: Path) -> None:
    check_training_inputs(config_for(scene_copy))


def test_missing_folder(tmp_path: Path) -> None:
    assert str(tmp_path / "nope") in check(tmp_path / "nope")


def test_missing_transforms(scene_copy: Path) -> None:
    (scene_copy / "transforms_val.json").unlink()
    assert "transforms_val.json" in check(scene_copy)


def test_malformed_transforms(scene_copy: Path) -> None:
    (scene_copy / "transforms_train.json").write_text("{not json", encoding="utf8")
    assert "transforms_train.json" in check(scene_copy)


def test_missing_image(scene_copy: Path) -> None:
    image = scene_copy / "train" / "r_1.png"
    image.unlink()
    assert str(image) in check(scene_copy)


def test_unreadable_image(scene_copy: Path) -> None:
    image = scene_copy / "train" / "r_2.png"
    image.write_bytes(b"this is not a png")
    assert str(image) in check(scene_copy)


def test_non_finite_pose(scene_copy: Path) -> None:
    transforms = scene_copy / "transforms_train.json"
    meta = json.loads(transforms.read_text(encoding="utf8"))
    meta["frames"][3]["transform_matrix"][0][3] = float("nan")
    transforms.write_text(json.dumps(meta), encoding="utf8")  # json writes NaN, as Python's json reads it
    message = check(scene_copy)
    assert "frame 3" in message and "NaN" in message


def test_grid_too_large_for_memory(scene_copy: Path) -> None:
    message = check(scene_copy, grid_resolution=20000)
    assert "--pipeline.model.grid-resolution" in message and "GiB" in message


def test_no_colour_heads(scene_copy: Path) -> None:
    assert "--pipeline.model.colour-heads must be at least 1, got 0" in check(scene_copy, colour_heads=0)


def test_empty_space_threshold_above_the_starting_fog(scene_copy: Path) -> None:
    """At 1e-2 the march skipped every voxel of Lego's starting fog (G = 0.0025): 300 s of training stayed at 9.6 dB."""
    message = check(scene_copy, empty_space_threshold=1e-2)
    assert "--pipeline.model.empty-space-threshold 0.01" in message and "0.002473" in message
    check_training_inputs(config_for(scene_copy, empty_space_threshold=1e-2, initial_occupancy=0.4))  # G = 0.047


def test_ns_train_reports_one_line_and_writes_nothing(scene_copy: Path, tmp_path: Path) -> None:
    (scene_copy / "train" / "r_0.png").unlink()
    output = tmp_path / "outputs"
    result = subprocess.run(
        [command("ns-train"), "rs-sdf", "--data", str(scene_copy), "--output-dir", str(output), "--vis", "tensorboard"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: image named in the transforms is missing") and "r_0.png" in last
    assert not output.exists()
