"""Bad input to ``ns-train rs-sdf``: one clear line naming the culprit, exit status 1, nothing written."""

from __future__ import annotations

import json
import shutil
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


def error_of(config) -> str:
    """The one line that check_training_inputs stops ``config`` with."""
    with pytest.raises(InputError) as caught:
        check_training_inputs(config)
    message = str(caught.value.code)
    assert "\n" not in message
    return message


def check(data: Path, **model_overrides) -> str:
    return error_of(config_for(data, **model_overrides))


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


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("colour_heads", 0, "--pipeline.model.colour-heads must be at least 1, got 0"),
        ("num_samples", 0, "--pipeline.model.num-samples must be at least 1, got 0"),
        ("appearance_dim", 0, "--pipeline.model.appearance-dim must be at least 1"),
        ("hidden_dim", 0, "--pipeline.model.hidden-dim must be at least 1"),
        ("grid_resolution", 0, "--pipeline.model.grid-resolution must be at least 2"),
        ("mask_refresh_steps", 0, "--pipeline.model.mask-refresh-steps must be at least 1"),
        ("sigma", 0.0, "--pipeline.model.sigma must be a positive number, got 0.0"),
        ("sigma", float("nan"), "--pipeline.model.sigma must be a positive number, got nan"),
        ("steepness", -5.0, "--pipeline.model.steepness must be a positive number"),
        ("initial_steepness", 0.0, "--pipeline.model.initial-steepness must be a positive number"),
        ("density_eps", 0.0, "--pipeline.model.density-eps must be a positive number"),
        ("train_time_budget", -5.0, "--pipeline.model.train-time-budget must be a positive number, got -5.0"),
        ("train_time_budget", float("inf"), "--pipeline.model.train-time-budget must be a positive number, got inf"),
        ("freeze_geometry_at", 50.0, "--pipeline.model.freeze-geometry-at is a share of training, in [0, 1], got 50.0"),
        ("freeze_geometry_at", float("nan"), "--pipeline.model.freeze-geometry-at is a share of training"),
        ("initial_occupancy", 1.0, "--pipeline.model.initial-occupancy must be in (0, 1), got 1.0"),
    ],
)
def test_settings_that_would_fail_or_mean_nothing(scene_copy: Path, setting: str, value, message: str) -> None:
    assert message in check(scene_copy, **{setting: value})


@pytest.mark.parametrize(
    "owner, setting, flag",
    [
        ("datamanager", "train_num_rays_per_batch", "--pipeline.datamanager.train-num-rays-per-batch"),
        ("datamanager", "eval_num_rays_per_batch", "--pipeline.datamanager.eval-num-rays-per-batch"),
        ("model", "eval_num_rays_per_chunk", "--pipeline.model.eval-num-rays-per-chunk"),  # ns-eval: range() step 0
        ("viewer", "num_rays_per_chunk", "--viewer.num-rays-per-chunk"),
        ("trainer", "max_num_iterations", "--max-num-iterations"),  # 0: nerfstudio's writer raised KeyError 'step'
    ],
)
def test_counts_outside_the_model(scene_copy: Path, owner: str, setting: str, flag: str) -> None:
    config = config_for(scene_copy)
    target = {"datamanager": config.pipeline.datamanager, "model": config.pipeline.model, "viewer": config.viewer}
    setattr(target.get(owner, config), setting, 0)
    assert error_of(config) == f"error: {flag} must be at least 1, got 0"


@pytest.mark.parametrize(
    "params, fill_rule, message",
    [
        ({"near_plane": 0.1}, "sealed", "--pipeline.model.collider-params needs near_plane and far_plane numbers"),
        ({"near_plane": 3.0, "far_plane": 2.0}, "sealed", "near_plane must be at least 0 and below far_plane, got 3.0"),
        ({"near_plane": -1.0, "far_plane": 2.0}, "sealed", "near_plane must be at least 0 and below far_plane"),
        ({"near_plane": 0.1, "far_plane": 6.0}, "hidden", "--pipeline.model.fill-rule hidden needs whole rays"),
    ],
)
def test_a_collider_needs_planes_in_order_and_whole_rays_for_the_hidden_rule(scene_copy, params, fill_rule, message):
    """The collider now cuts the rays (a KeyError traceback without far_plane; near >= far trained nothing)."""
    assert message in check(scene_copy, enable_collider=True, collider_params=params, fill_rule=fill_rule)
    config = config_for(scene_copy, enable_collider=True, collider_params={"near_plane": 0.1, "far_plane": 6.0})
    check_training_inputs(config)  # sound planes and the default fill rule pass


def test_resume_from_a_folder_without_the_checkpoint(scene_copy: Path, tmp_path: Path) -> None:
    config = config_for(scene_copy)
    config.load_dir = tmp_path / "nowhere"
    with pytest.raises(InputError, match="--load-dir .*nowhere: no such folder"):
        check_training_inputs(config)
    config.load_dir = tmp_path / "models"
    config.load_dir.mkdir()
    with pytest.raises(InputError, match="holds no checkpoint"):
        check_training_inputs(config)
    (config.load_dir / "step-000000005.ckpt").write_bytes(b"")
    with pytest.raises(InputError, match="unreadable checkpoint .*step-000000005.ckpt"):
        check_training_inputs(config)
    config.load_step = 7
    with pytest.raises(InputError, match="--load-step 7: no step-000000007.ckpt in"):
        check_training_inputs(config)
    config.load_dir, config.load_step, config.load_checkpoint = None, None, tmp_path / "step-9.ckpt"  # absent
    with pytest.raises(InputError, match="--load-checkpoint .*step-9.ckpt: no such file"):
        check_training_inputs(config)


TINY_RUN_GRIDS = dict(grid_resolution=48, appearance_resolution=32)  # conftest.TINY_TRAINING's


def test_resume_from_a_run_with_its_settings(trained_run: Path, scene_copy: Path) -> None:
    config = config_for(scene_copy, **TINY_RUN_GRIDS)
    config.load_dir = trained_run.parent / "nerfstudio_models"
    check_training_inputs(config)
    config.load_dir, config.load_checkpoint = None, max(config.load_dir.glob("step-*.ckpt"))
    check_training_inputs(config)


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("colour_heads", 3, "--pipeline.model.colour-heads 2 (this run: 3)"),
        ("appearance_dim", 8, "--pipeline.model.appearance-dim 12 (this run: 8)"),
        ("hidden_dim", 32, "--pipeline.model.hidden-dim 64 (this run: 32)"),
        ("sh_levels", 2, "--pipeline.model.sh-levels 3 (this run: 2)"),
        ("stagger_colour", True, "--pipeline.model.stagger-colour False (this run: True)"),
        ("grid_resolution", 96, "--pipeline.model.grid-resolution 48 (this run: 96)"),
        ("appearance_resolution", 64, "--pipeline.model.appearance-resolution 32 (this run: 64)"),
    ],
)
def test_resume_with_other_shapes_names_the_setting(
    trained_run: Path, scene_copy: Path, setting: str, value, message: str
) -> None:
    """Loading takes a checkpoint's shapes: resuming with another shape would drop the user's flag unsaid."""
    checkpoints = trained_run.parent / "nerfstudio_models"
    config = config_for(scene_copy, **{**TINY_RUN_GRIDS, setting: value})
    config.load_dir = checkpoints
    error = error_of(config)
    assert error.startswith("error: --load-dir: ") and message in error and "without --load-dir" in error


def test_resume_from_a_folder_with_other_files(trained_run: Path, scene_copy: Path, tmp_path: Path) -> None:
    """nerfstudio reads a step from every file name in --load-dir, and fails on any other file."""
    import shutil

    checkpoints = Path(shutil.copytree(trained_run.parent / "nerfstudio_models", tmp_path / "models"))
    (checkpoints / "notes.txt").write_text("keep", encoding="utf8")
    config = config_for(scene_copy, **TINY_RUN_GRIDS)
    config.load_dir = checkpoints
    assert "holds notes.txt, which is no step-N.ckpt" in error_of(config)
    config.load_dir = trained_run.parent  # the run's folder, not its checkpoints' folder in it
    assert error_of(config) == (
        f"error: --load-dir {trained_run.parent} is a run's folder: its checkpoints are in "
        f"{trained_run.parent / 'nerfstudio_models'}"
    )


def test_a_nerfstudio_capture_given_without_nerfstudio_data_is_named(tmp_path: Path) -> None:
    """ns-process-data writes transforms.json; rs-sdf's default parser reads Blender scenes (transforms_train.json)."""
    (tmp_path / "transforms.json").write_text("{}", encoding="utf8")
    message = error_of(config_for(tmp_path))
    assert message == (
        f"error: missing transforms file: {tmp_path / 'transforms_train.json'}; {tmp_path} holds a nerfstudio capture "
        "(transforms.json), which ns-train reads as nerfstudio-data"
    )


def test_resume_from_another_methods_checkpoint(scene_copy: Path, tmp_path: Path) -> None:
    import torch

    torch.save({"step": 3, "pipeline": {"_model.field.mlp_base.params": torch.zeros(4)}}, tmp_path / "step-3.ckpt")
    config = config_for(scene_copy)
    config.load_checkpoint = tmp_path / "step-3.ckpt"
    assert "step-3.ckpt holds no rs-sdf field" in error_of(config)


def edit_frames(scene: Path, split: str, edit) -> None:
    transforms = scene / f"transforms_{split}.json"
    meta = json.loads(transforms.read_text(encoding="utf8"))
    edit(meta)
    transforms.write_text(json.dumps(meta), encoding="utf8")


@pytest.mark.parametrize(
    "split, edit, message",
    [
        ("train", lambda meta: meta["frames"][1].pop("file_path"), "frame 1 of {} has no file_path"),
        ("train", lambda meta: meta.update(frames="abc"), "frames of {} must be a list of frames"),
        ("val", lambda meta: meta.update(camera_angle_x=0.0), "camera_angle_x of {} must be a field of view"),
    ],
)
def test_frames_without_a_file_path_or_a_field_of_view(scene_copy: Path, split: str, edit, message: str) -> None:
    edit_frames(scene_copy, split, edit)
    assert message.format(scene_copy / f"transforms_{split}.json") in check(scene_copy)


def test_images_of_another_size_or_mode(scene_copy: Path) -> None:
    from PIL import Image

    odd = scene_copy / "train" / "r_3.png"
    with Image.open(odd) as image:
        image.convert("LA").save(odd)
    assert f"image {odd} is LA" in check(scene_copy)
    with Image.open(scene_copy / "train" / "r_0.png") as image:
        image.resize((48, 48)).save(odd)
    assert f"image {odd} is 48x48 pixels, but" in check(scene_copy)


def test_singular_pose(scene_copy: Path) -> None:
    edit_frames(scene_copy, "val", lambda meta: meta["frames"][0].update(transform_matrix=[[0.0] * 4] * 4))
    assert "frame 0 of" in check(scene_copy) and "singular rotation" in check(scene_copy)


def test_a_pose_row_of_the_wrong_length(scene_copy: Path) -> None:
    edit_frames(scene_copy, "val", lambda meta: meta["frames"][1]["transform_matrix"][2].pop())
    assert "frame 1 of" in check(scene_copy) and "must be 4x4, got rows of 4/4/3/4 values" in check(scene_copy)


def test_pose_matrices_of_mixed_shapes(scene_copy: Path) -> None:
    edit_frames(scene_copy, "train", lambda meta: meta["frames"][2].update(
        transform_matrix=meta["frames"][2]["transform_matrix"][:3]))
    assert "frame 2 of" in check(scene_copy) and "earlier frames another" in check(scene_copy)


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
    assert "method_name" not in result.stdout  # refused before nerfstudio prints the config
    assert not output.exists()


def nerfstudio_capture(scene: Path, folder: Path) -> Path:
    """The generated scene's training views as a nerfstudio-data capture (one transforms.json, intrinsics in pixels)."""
    import math

    meta = json.loads((scene / "transforms_train.json").read_text(encoding="utf8"))
    (folder / "images").mkdir(parents=True)
    frames = []
    for index, frame in enumerate(meta["frames"]):
        shutil.copy(scene / f"{frame['file_path']}.png", folder / "images" / f"{index}.png")
        frames.append({"file_path": f"images/{index}.png", "transform_matrix": frame["transform_matrix"]})
    from PIL import Image

    width, height = Image.open(folder / "images" / "0.png").size
    focal = 0.5 * width / math.tan(0.5 * meta["camera_angle_x"])
    capture = {"fl_x": focal, "fl_y": focal, "cx": width / 2, "cy": height / 2, "w": width, "h": height,
               "camera_model": "OPENCV", "frames": frames}  # fmt: skip
    (folder / "transforms.json").write_text(json.dumps(capture), encoding="utf8")
    return folder


def test_a_nerfstudio_capture_is_checked_by_its_own_dataparser(scene_copy: Path, tmp_path: Path, capsys) -> None:
    """Other dataparsers than Blender's: nerfstudio parses the capture, then its images and poses are checked."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    capture = nerfstudio_capture(scene_copy, tmp_path / "capture")
    config = config_for(capture)
    config.pipeline.datamanager.dataparser = NerfstudioDataParserConfig()
    check_training_inputs(config)  # a good capture passes

    assert "has masks" not in capsys.readouterr().out

    (capture / "images" / "3.png").write_bytes(b"not a png")
    assert error_of(config).startswith(f"error: unreadable image {capture / 'images' / '3.png'}")
    (capture / "images" / "3.png").unlink()
    assert error_of(config) == f"error: image named in the transforms is missing: {capture / 'images' / '3.png'}"
    shutil.copy(capture / "images" / "2.png", capture / "images" / "3.png")
    meta = json.loads((capture / "transforms.json").read_text(encoding="utf8"))
    meta["frames"][1]["transform_matrix"][0][3] = float("nan")
    (capture / "transforms.json").write_text(json.dumps(meta), encoding="utf8")
    assert error_of(config) == f"error: camera poses in {capture} have NaN or infinite values"
    (capture / "transforms.json").write_text("{", encoding="utf8")
    assert error_of(config).startswith(f"error: cannot read the dataset at {capture}: JSONDecodeError")


def test_a_capture_with_masks_gets_a_note_once(scene_copy: Path, tmp_path: Path, capsys) -> None:
    """nerfstudio samples only the pixels that masks keep: around a masked object rs-sdf never sees empty space and
    fills its box (a review's run: accumulation 0.99 on the background). Such a capture trains, with a note."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    from PIL import Image

    capture = nerfstudio_capture(scene_copy, tmp_path / "capture")
    meta = json.loads((capture / "transforms.json").read_text(encoding="utf8"))
    (capture / "masks").mkdir()
    for index, frame in enumerate(meta["frames"]):
        alpha = Image.open(capture / frame["file_path"]).getchannel("A")
        alpha.point(lambda a: 255 if a > 127 else 0).save(capture / "masks" / f"{index}.png")
        frame["mask_path"] = f"masks/{index}.png"
    (capture / "transforms.json").write_text(json.dumps(meta), encoding="utf8")
    config = config_for(capture)
    config.pipeline.datamanager.dataparser = NerfstudioDataParserConfig()
    check_training_inputs(config)
    check_training_inputs(config)  # as ns-train does: before printing the config, then before saving it
    out = " ".join(capsys.readouterr().out.split())
    assert out.count("has masks") == 1
    assert f"{capture} has masks" in out and "alpha channel" in out
