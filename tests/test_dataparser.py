"""The Blender dataparser of rs-sdf runs: nerfstudio's, with each split's files checked before it parses them."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from rs_nerfstudio.dataparser import CheckedBlenderDataParserConfig
from rs_nerfstudio.validation import InputError
from tests.conftest import command


def parse(data: Path, split: str):
    return CheckedBlenderDataParserConfig(data=data).setup().get_dataparser_outputs(split=split)


def test_parses_as_nerfstudio_does(tiny_scene: Path) -> None:
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    for split in ("train", "test"):
        ours = parse(tiny_scene, split)
        theirs = BlenderDataParserConfig(data=tiny_scene).setup().get_dataparser_outputs(split=split)
        assert ours.image_filenames == theirs.image_filenames
        assert torch.equal(ours.cameras.camera_to_worlds, theirs.cameras.camera_to_worlds)
        for name in ("fx", "fy", "cx", "cy"):  # theirs are float64 (numpy's tan); ours float32, the same values
            assert getattr(ours.cameras, name).dtype == torch.float32
            assert torch.allclose(getattr(ours.cameras, name).double(), getattr(theirs.cameras, name).double())


def test_ns_render_spiral_works_on_a_blender_scene(tiny_scene: Path) -> None:
    """``ns-render spiral`` makes its path with nerfstudio's ``get_spiral_path``, which failed on the float64
    intrinsics of nerfstudio's Blender parser ("expected scalar type Float but found Double")."""
    from nerfstudio.cameras.camera_paths import get_spiral_path

    cameras = parse(tiny_scene, "test").cameras
    path = get_spiral_path(cameras[0:1], steps=3, radius=0.1)
    rays = path.generate_rays(camera_indices=2)
    assert torch.isfinite(rays.directions).all()


def test_names_a_missing_split_image_or_folder(scene_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (scene_copy / "transforms_test.json").unlink()
    with pytest.raises(InputError, match=re.escape(f"missing transforms file: {scene_copy / 'transforms_test.json'}")):
        parse(scene_copy, "test")
    assert len(parse(scene_copy, "train").image_filenames) == 8  # the other splits still parse

    image = sorted((scene_copy / "train").glob("*.png"))[0]
    image.unlink()
    with pytest.raises(InputError, match=re.escape(f"image named in the transforms is missing: {image}")):
        parse(scene_copy, "train")

    elsewhere = scene_copy.parent / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(InputError, match=re.escape(f"data folder not found: scene (relative to {elsewhere})")):
        parse(Path("scene"), "val")  # config.yml keeps --data as typed, relative to where ns-train ran


def test_ns_eval_names_the_missing_test_split(trained_run: Path, scene_copy: Path, tmp_path: Path) -> None:
    """ns-eval on a run whose scene lacks transforms_test.json: one line naming it, exit status 1, nothing written."""
    import yaml

    config = yaml.load(trained_run.read_text(), Loader=yaml.Loader)
    config.data = config.pipeline.datamanager.data = scene_copy
    moved = tmp_path / "config.yml"
    moved.write_text(yaml.dump(config))
    (scene_copy / "transforms_test.json").unlink()
    output = tmp_path / "eval.json"
    result = subprocess.run(
        [command("ns-eval"), "--load-config", str(moved), "--output-path", str(output)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == f"error: missing transforms file: {scene_copy / 'transforms_test.json'}"
    assert "Traceback" not in result.stderr + result.stdout
    assert not output.exists()
