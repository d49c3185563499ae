"""Checks of a training run's inputs, made before anything is written or allocated.

Each failure is one :class:`InputError` whose message names the file or flag at fault. It is a ``SystemExit``, so a
command line prints that one line and exits with status 1, with no traceback; Python callers can catch it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List

if TYPE_CHECKING:
    from nerfstudio.engine.trainer import TrainerConfig
    from torch import Tensor


class InputError(SystemExit):
    """A user's input is unusable; the message says which and why, on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")
        self.message = message


BLENDER_SPLITS_FOR_TRAINING = ("train", "val")
BLENDER_SCENE_BOX = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))  # nerfstudio's Blender parser's fixed box


def check_blender_folder(data: Path, splits: Iterable[str] = BLENDER_SPLITS_FOR_TRAINING) -> None:
    """A Blender-format folder: transforms files that parse, images that exist and open, finite poses."""
    if not data.exists():
        where = "" if data.is_absolute() else f" (relative to {Path.cwd()})"  # config.yml keeps --data as typed
        raise InputError(f"data folder not found: {data}{where}")
    if not data.is_dir():
        raise InputError(f"--data must be a folder of a Blender-format scene, got the file {data}")
    for split in splits:
        transforms = data / f"transforms_{split}.json"
        if not transforms.is_file():
            hint = ""
            if (data / "transforms.json").is_file():  # what ns-process-data writes
                hint = f"; {data} holds a nerfstudio capture (transforms.json), which ns-train reads as nerfstudio-data"
            raise InputError(f"missing transforms file: {transforms}{hint}")
        try:
            meta = json.loads(transforms.read_text(encoding="utf8"))
            frames = meta["frames"]
            angle = float(meta["camera_angle_x"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise InputError(f"unreadable transforms file {transforms}: {type(error).__name__}: {error}") from None
        if not 0.0 < angle < math.pi:
            raise InputError(f"camera_angle_x of {transforms} must be a field of view in (0, pi) radians, got {angle}")
        if not isinstance(frames, list):
            raise InputError(f"frames of {transforms} must be a list of frames")
        if not frames:
            raise InputError(f"no frames in {transforms}")
        for index, frame in enumerate(frames):
            if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
                raise InputError(f"frame {index} of {transforms} has no file_path")
        check_images(data / f"{frame['file_path']}.png" for frame in frames)
        check_poses(transforms, [frame.get("transform_matrix") for frame in frames])


def check_images(paths: Iterable[Path]) -> None:
    """Every image exists and decodes, in a mode nerfstudio loads, and all are the size of the first."""
    from PIL import Image, UnidentifiedImageError

    first = None
    for path in paths:
        if not path.is_file():
            raise InputError(f"image named in the transforms is missing: {path}")
        try:
            with Image.open(path) as image:
                image.verify()
                size, mode = image.size, image.mode
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise InputError(f"unreadable image {path}: {error}") from None
        if mode in ("LA", "PA"):  # two channels, which nerfstudio's loader rejects
            raise InputError(f"image {path} is {mode} (grey or palette with alpha); save it as RGBA")
        if first is None:
            first = (path, size)
        elif size != first[1]:
            raise InputError(
                f"image {path} is {size[0]}x{size[1]} pixels, but {first[0]} is {first[1][0]}x{first[1][1]}: "
                "the images of a split must share one size"
            )


def check_poses(source: Path, matrices: List) -> None:
    """Every camera-to-world matrix is 4x4 (or 3x4, all alike) and finite."""
    shapes = set()
    for index, matrix in enumerate(matrices):
        try:
            rows = [[float(value) for value in row] for row in matrix]
        except (TypeError, ValueError):
            raise InputError(f"frame {index} of {source} has no numeric transform_matrix") from None
        if len(rows) not in (3, 4) or any(len(row) != 4 for row in rows):
            lengths = "/".join(str(len(row)) for row in rows)
            raise InputError(f"frame {index} of {source}: transform_matrix must be 4x4, got rows of {lengths} values")
        if not all(math.isfinite(value) for row in rows for value in row):
            raise InputError(f"frame {index} of {source}: transform_matrix has NaN or infinite values")
        if abs(determinant_3x3([row[:3] for row in rows[:3]])) < 1e-12:  # e.g. all zeros: the rays go nowhere
            raise InputError(f"frame {index} of {source}: transform_matrix has a singular rotation")
        shapes.add(len(rows))
        if len(shapes) > 1:
            raise InputError(f"frame {index} of {source}: transform_matrix has {len(rows)} rows, earlier frames another")


def determinant_3x3(m: List[List[float]]) -> float:
    """det(m) of a 3x3 list of rows (the transforms file gives plain lists)."""
    return (
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    )


def check_generic_dataparser(config: "TrainerConfig") -> "Tensor":
    """Any other dataparser: parse the training split and check its images and poses. Returns its scene box."""
    import torch

    datamanager = config.pipeline.datamanager
    data = datamanager.data or datamanager.dataparser.data
    if data is not None and not Path(data).exists():
        raise InputError(f"data not found: {data}")
    try:
        outputs = datamanager.dataparser.setup().get_dataparser_outputs(split="train")
    except (FileNotFoundError, AssertionError, ValueError, KeyError, IndexError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read the dataset at {data}: {type(error).__name__}: {error}") from None
    check_images(Path(name) for name in outputs.image_filenames)
    if not torch.isfinite(outputs.cameras.camera_to_worlds).all():
        raise InputError(f"camera poses in {data} have NaN or infinite values")
    if outputs.mask_filenames and str(data) not in _NOTED_MASKS:
        from nerfstudio.utils.rich_utils import CONSOLE

        _NOTED_MASKS.add(str(data))  # the checks run twice, before the config is printed and before it is saved
        CONSOLE.print(MASKED_CAPTURE_NOTE.format(data=data), markup=False, highlight=False)
    return outputs.scene_box.aabb


MASKED_CAPTURE_NOTE = (
    "rs-sdf: {data} has masks. nerfstudio trains on the pixels they keep only, so no ray tells rs-sdf that the "
    "space around them is empty, and it fills the box there. To model an object alone, give its images an alpha "
    "channel instead (transparent around it): rs-sdf composites them on its background colour and learns that space "
    "empty."
)
"""Printed by ``ns-train rs-sdf`` for a capture with masks (README, "Real captures")."""
_NOTED_MASKS: set = set()


def check_grid_fits(config: "TrainerConfig") -> None:
    """Refuse a grid resolution whose training memory would not fit on the device, before allocating it."""
    import torch
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    from rs_nerfstudio import grid as grids

    model = config.pipeline.model
    datamanager = config.pipeline.datamanager
    if isinstance(datamanager.dataparser, BlenderDataParserConfig):
        aabb = torch.tensor(BLENDER_SCENE_BOX)
    else:
        aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])  # cubic boxes are the worst case
    geometry = math.prod(grids.grid_shape_for_box(aabb, model.grid_resolution))
    appearance_voxels = math.prod(grids.grid_shape_for_box(aabb, model.appearance_resolution))
    appearance = appearance_voxels * model.appearance_dim * model.colour_heads
    needed = grids.training_memory_bytes(geometry) + grids.training_memory_bytes(appearance)
    available = grids.available_memory_bytes(config.machine.device_type)
    if needed > available:
        raise InputError(
            f"--pipeline.model.grid-resolution {model.grid_resolution} with --pipeline.model.appearance-resolution "
            f"{model.appearance_resolution}, --pipeline.model.appearance-dim {model.appearance_dim} and "
            f"--pipeline.model.colour-heads {model.colour_heads} needs ~{needed / 2**30:.1f} GiB to train, but only "
            f"{available / 2**30:.1f} GiB is free on {config.machine.device_type}; lower them"
        )


def check_empty_space_threshold(config: "TrainerConfig") -> None:
    """Refuse an empty-space threshold at or above the starting fog's occupancy: the march would skip every voxel from
    the first step on, no sample would reach the grids, and training would learn nothing (a blank model, no error)."""
    import torch

    from rs_nerfstudio.sdf import occupancy

    model = config.pipeline.model
    threshold = model.empty_space_threshold
    fog = float(occupancy(torch.tensor(model.initial_occupancy, dtype=torch.float64), model.initial_steepness))
    if not threshold < fog < 1.0 - threshold:
        raise InputError(
            f"--pipeline.model.empty-space-threshold {threshold:g} leaves nothing to march: the starting fog's "
            f"occupancy G is {fog:.4g} (--pipeline.model.initial-occupancy {model.initial_occupancy:g}, "
            f"--pipeline.model.initial-steepness {model.initial_steepness:g}), and only voxels with G between the "
            f"threshold and 1 minus it are marched; use a threshold below {min(fog, 1.0 - fog):.4g}"
        )


def check_settings(config: "TrainerConfig") -> None:
    """Counts and scales that must be positive, and shares in [0, 1], each named by its flag: others would fail in the
    first step (a division by zero, an empty tensor) or train something meaningless (sigma 0: a weak SDF of 0)."""
    model, prefix = config.pipeline.model, "--pipeline.model."
    counts = {
        f"{prefix}grid-resolution": (model.grid_resolution, 2),
        f"{prefix}appearance-resolution": (model.appearance_resolution, 2),
        f"{prefix}appearance-dim": (model.appearance_dim, 1),
        f"{prefix}colour-heads": (model.colour_heads, 1),
        f"{prefix}hidden-dim": (model.hidden_dim, 1),
        f"{prefix}num-samples": (model.num_samples, 1),
        f"{prefix}mask-refresh-steps": (model.mask_refresh_steps, 1),
        f"{prefix}eval-num-rays-per-chunk": (model.eval_num_rays_per_chunk, 1),
        "--pipeline.datamanager.train-num-rays-per-batch": (config.pipeline.datamanager.train_num_rays_per_batch, 1),
        "--pipeline.datamanager.eval-num-rays-per-batch": (config.pipeline.datamanager.eval_num_rays_per_batch, 1),
        "--viewer.num-rays-per-chunk": (config.viewer.num_rays_per_chunk, 1),
    }
    if config.max_num_iterations is not None:  # None: rs-sdf's default, settled later (RSSDFTrainerConfig)
        counts["--max-num-iterations"] = (config.max_num_iterations, 1)
    for flag, (value, least) in counts.items():
        if value < least:
            raise InputError(f"{flag} must be at least {least}, got {value}")
    scales = {
        f"{prefix}sigma": model.sigma,
        f"{prefix}steepness": model.steepness,
        f"{prefix}initial-steepness": model.initial_steepness,
        f"{prefix}coarse-step": model.coarse_step,
        f"{prefix}density-eps": model.density_eps,
    }
    if model.train_time_budget is not None:
        scales[f"{prefix}train-time-budget"] = model.train_time_budget
    for flag, value in scales.items():
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{flag} must be a positive number, got {value}")
    if not 0.0 <= model.freeze_geometry_at <= 1.0:
        raise InputError(f"{prefix}freeze-geometry-at is a share of training, in [0, 1], got {model.freeze_geometry_at}")
    if not 0.0 < model.initial_occupancy < 1.0:  # a probability whose logit starts the grid
        raise InputError(f"{prefix}initial-occupancy must be in (0, 1), got {model.initial_occupancy}")
    if model.enable_collider:
        check_collider(model.collider_params or {}, model.fill_rule)


def check_collider(params: dict, fill_rule: str) -> None:
    """nerfstudio's near/far collider needs both planes (it raised a KeyError), and near < far (else every ray is
    cut away and nothing trains). The `hidden` fill rule needs the rays' whole chords through the box: cut short,
    space seen beyond the far plane would count as unseen and be filled."""
    flag = "--pipeline.model.collider-params"
    try:
        near, far = float(params["near_plane"]), float(params["far_plane"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{flag} needs near_plane and far_plane numbers, got {params}") from None
    if not (math.isfinite(near) and near >= 0.0 and far > near):
        raise InputError(f"{flag}: near_plane must be at least 0 and below far_plane, got {near} and {far}")
    if fill_rule == "hidden":
        raise InputError(
            "--pipeline.model.fill-rule hidden needs whole rays: it cannot go with --pipeline.model.enable-collider"
        )


def check_resume(config: "TrainerConfig", scene_aabb: "Tensor") -> None:
    """--load-dir holds a checkpoint (the one --load-step names, if given) and nothing nerfstudio would misread as
    one; --load-checkpoint is a file; the checkpoint is rs-sdf's, with the shapes this run's settings ask for."""
    checkpoint, flag = None, "--load-dir"
    if config.load_dir is not None:
        load_dir = Path(config.load_dir)
        if not load_dir.is_dir():
            raise InputError(f"--load-dir {load_dir}: no such folder")
        if config.load_step is not None:
            checkpoint = load_dir / f"step-{config.load_step:09d}.ckpt"
            if not checkpoint.is_file():
                raise InputError(f"--load-step {config.load_step}: no {checkpoint.name} in {load_dir}")
        else:
            steps = [checkpoint_step(entry, load_dir) for entry in load_dir.iterdir()]
            checkpoint = load_dir / f"step-{max(steps, default=0):09d}.ckpt"
            if not checkpoint.is_file():
                raise InputError(f"--load-dir {load_dir} holds no checkpoint (step-*.ckpt)")
    elif config.load_checkpoint is not None:
        checkpoint, flag = Path(config.load_checkpoint), "--load-checkpoint"
        if not checkpoint.is_file():
            raise InputError(f"--load-checkpoint {checkpoint}: no such file")
    if checkpoint is not None:
        check_checkpoint_settings(config, checkpoint, flag, scene_aabb)


def checkpoint_step(entry: Path, load_dir: Path) -> int:
    """The step nerfstudio reads from a file name in --load-dir: it takes every file there for a checkpoint."""
    name = entry.name
    try:
        return int(name[name.find("-") + 1 : name.find(".")])
    except ValueError:
        if (load_dir / "nerfstudio_models").is_dir():  # a run folder, given for the checkpoints' folder in it
            raise InputError(
                f"--load-dir {load_dir} is a run's folder: its checkpoints are in {load_dir / 'nerfstudio_models'}"
            ) from None
        raise InputError(f"--load-dir {load_dir} holds {name}, which is no step-N.ckpt: move it out") from None


def check_checkpoint_settings(config: "TrainerConfig", checkpoint: Path, flag: str, scene_aabb: "Tensor") -> None:
    """The checkpoint's grids and colour heads have the shapes this run's settings give them. Loading takes the
    checkpoint's shapes (ns-viewer and ns-eval rely on it), so a changed setting would otherwise be dropped unsaid.
    A grid still on the scene box is exempt from the resolutions: fitting the box applies the run's."""
    import torch

    from rs_nerfstudio.runs import read_model_state

    model = config.pipeline.model
    state, _ = read_model_state(checkpoint)
    mismatches: List[str] = []

    def compare(setting: str, trained, wanted) -> None:
        if trained != wanted:
            mismatches.append(f"--pipeline.model.{setting} {trained} (this run: {wanted})")

    logits, features = state.get("field.base_logits"), state.get("field.features")
    weights = state.get("field.colour_mlp.weights.0")
    fitted = not torch.allclose(state["field.aabb"].float(), scene_aabb.float().cpu())
    if logits is not None and features is not None and (fitted or model.fit_box_at_step <= 0):
        compare("grid-resolution", max(logits.shape), model.grid_resolution)
        compare("appearance-resolution", max(features.shape[:3]), model.appearance_resolution)
    if weights is not None and features is not None:
        heads, inputs, hidden = weights.shape
        feature_dim = features.shape[-1] // heads
        compare("colour-heads", heads, model.colour_heads)
        compare("appearance-dim", feature_dim, model.appearance_dim)
        compare("hidden-dim", hidden, model.hidden_dim)
        compare("sh-levels", math.isqrt(max(0, inputs - feature_dim)), model.sh_levels)
        stagger = state.get("field.colour_stagger")
        if stagger is not None and heads > 1:
            compare("stagger-colour", bool(stagger), model.stagger_colour)
    if mismatches:
        raise InputError(
            f"{flag}: {checkpoint} was trained with {'; '.join(mismatches)}: pass the checkpoint's settings to resume "
            "it, or train anew without " + flag
        )


def check_training_inputs(config: "TrainerConfig") -> None:
    """All checks for ``ns-train rs-sdf``: the data, the settings, the checkpoint to resume from, the memory the
    grids will take, the empty-space threshold."""
    import torch
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    datamanager = config.pipeline.datamanager
    if datamanager.data is not None:
        datamanager.dataparser.data = datamanager.data
    if isinstance(datamanager.dataparser, BlenderDataParserConfig):
        check_blender_folder(Path(datamanager.dataparser.data))
        scene_aabb = torch.tensor(BLENDER_SCENE_BOX)
    else:
        scene_aabb = check_generic_dataparser(config)
    check_settings(config)
    check_resume(config, scene_aabb)
    check_grid_fits(config)
    check_empty_space_threshold(config)
