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
    with pytest.raises(InputError, match="--train-seconds must be a positive number of seconds, got inf"):
        run_demo(DemoConfig(output_dir=tmp_path, train_seconds=float("inf")))
    with pytest.raises(InputError, match="foo"):
        run_demo(DemoConfig(output_dir=tmp_path, shape="foo"))
    assert not (tmp_path / "scene").exists()


def test_a_file_or_a_foreign_scene_json_in_the_way_is_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(InputError, match="--output-dir .*a-file is a file, not a folder"):
        run_demo(DemoConfig(output_dir=tmp_path / "a-file"))
    (tmp_path / "demo" / "scene").mkdir(parents=True)
    (tmp_path / "demo" / "scene" / "scene.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="scene.json is not a scene's description from rs-scene"):
        run_demo(DemoConfig(output_dir=tmp_path / "demo"))


def test_a_folder_in_the_way_of_the_scene_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "scene").mkdir()
    (tmp_path / "scene" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds no scene made by rs-scene: choose another --output-dir"):
        run_demo(DemoConfig(output_dir=tmp_path))
    assert (tmp_path / "scene" / "notes.txt").read_text() == "mine"


def test_the_demo_trains_and_scores_and_ctrl_c_stops_it_before_scoring(tmp_path: Path, monkeypatch, capsys) -> None:
    """Ctrl+C in training ends the demo (nerfstudio's launcher would have scored the half-trained run); the demo
    otherwise trains through nerfstudio's trainer and scores the test views as ns-eval does."""
    import json

    from nerfstudio.engine.trainer import Trainer

    config = DemoConfig(output_dir=tmp_path, image_size=16, train_seconds=3.0)
    train = Trainer.train

    def interrupted(self) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", interrupted)
    with pytest.raises(SystemExit) as stopped:
        run_demo(config)
    assert stopped.value.code == 130 and "stopped by Ctrl+C" in capsys.readouterr().out
    assert not list(tmp_path.glob("runs/**/demo_eval.json"))
    monkeypatch.setattr(Trainer, "train", train)
    result = run_demo(config)  # reuses the scene; a few steps (training well is test_integration.py's)
    written = json.loads((Path(result["config"]).parent / "demo_eval.json").read_text())
    assert written["step"] == result["step"] > 0 and written["psnr"] == result["psnr"]
    assert f"rs-demo: test PSNR {result['psnr']:.2f} dB" in capsys.readouterr().out

    import torch
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(Path(result["config"]), test_mode="test")  # the PSNR is the test views' mean
    dataset, psnrs = pipeline.datamanager.eval_dataset, []
    for index in range(len(dataset)):
        with torch.no_grad():
            rendered = pipeline.model.get_outputs_for_camera(dataset.cameras[index : index + 1])["rgb"]
        target = pipeline.model.renderer_rgb.blend_background(dataset[index]["image"])
        psnrs.append(float(-10 * torch.log10(((rendered - target) ** 2).mean())))
    assert len(psnrs) == 5 and result["psnr"] == pytest.approx(sum(psnrs) / len(psnrs), abs=0.01)
