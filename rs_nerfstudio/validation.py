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


class InputError(SystemExit):
    """A user's input is unusable; the message says which and why, on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")
        self.message = message


BLENDER_SPLITS_FOR_TRAINING = ("train", "val")


def check_blender_folder(data: Path, splits: Iterable[str] = BLENDER_SPLITS_FOR_TRAINING) -> None:
    """A Blender-format folder: transforms files that parse, images that exist and open, finite poses."""
    if not data.exists():
        raise InputError(f"data folder not found: {data}")
    if not data.is_dir():
        raise InputError(f"--data must be a folder of a Blender-format scene, got the file {data}")
    for split in splits:
        transforms = data / f"transforms_{split}.json"
        if not transforms.is_file():
            raise InputError(f"missing transforms file: {transforms}")
        try:
            meta = json.loads(transforms.read_text(encoding="utf8"))
            frames = meta["frames"]
            float(meta["camera_angle_x"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise InputError(f"unreadable transforms file {transforms}: {type(error).__name__}: {error}") from None
        if not frames:
            raise InputError(f"no frames in {transforms}")
        check_images(data / f"{frame['file_path']}.png" for frame in frames)
        check_poses(transforms, [frame.get("transform_matrix") for frame in frames])


def check_images(paths: Iterable[Path]) -> None:
    """Every image exists and decodes."""
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        if not path.is_file():
            raise InputError(f"image named in the transforms is missing: {path}")
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise InputError(f"unreadable image {path}: {error}") from None


def check_poses(source: Path, matrices: List) -> None:
    """Every camera-to-world matrix is 4x4 (or 3x4) and finite."""
    for index, matrix in enumerate(matrices):
        try:
            rows = [[float(value) for value in row] for row in matrix]
        except (TypeError, ValueError):
            raise InputError(f"frame {index} of {source} has no numeric transform_matrix") from None
        if len(rows) not in (3, 4) or any(len(row) != 4 for row in rows):
            raise InputError(f"frame {index} of {source}: transform_matrix must be 4x4, got {len(rows)} rows")
        if not all(math.isfinite(value) for row in rows for value in row):
            raise InputError(f"frame {index} of {source}: transform_matrix has NaN or infinite values")


def check_generic_dataparser(config: "TrainerConfig") -> None:
    """Any other dataparser: parse the training split and check its images and poses."""
    import torch

    datamanager = config.pipeline.datamanager
    data = datamanager.data or datamanager.dataparser.data
    if data is not None and not Path(data).exists():
        raise InputError(f"data not found: {data}")
    try:
        outputs = datamanager.dataparser.setup().get_dataparser_outputs(split="train")
    except (FileNotFoundError, AssertionError, ValueError, KeyError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read the dataset at {data}: {type(error).__name__}: {error}") from None
    check_images(Path(name) for name in outputs.image_filenames)
    if not torch.isfinite(outputs.cameras.camera_to_worlds).all():
        raise InputError(f"camera poses in {data} have NaN or infinite values")


def check_grid_fits(config: "TrainerConfig") -> None:
    """Refuse a grid resolution whose training memory would not fit on the device, before allocating it."""
    import torch
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    from rs_nerfstudio import grid as grids

    model = config.pipeline.model
    datamanager = config.pipeline.datamanager
    if isinstance(datamanager.dataparser, BlenderDataParserConfig):
        aabb = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]])  # the Blender parser's fixed box
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
            f"{model.appearance_resolution} needs ~{needed / 2**30:.1f} GiB to train, but only "
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


def check_colour_heads(config: "TrainerConfig") -> None:
    """At least one colour decoder."""
    heads = config.pipeline.model.colour_heads
    if heads < 1:
        raise InputError(f"--pipeline.model.colour-heads must be at least 1, got {heads}")


def check_training_inputs(config: "TrainerConfig") -> None:
    """All checks for ``ns-train rs-sdf``: the data, the colour heads, the memory the grids will take, the
    empty-space threshold."""
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    datamanager = config.pipeline.datamanager
    if datamanager.data is not None:
        datamanager.dataparser.data = datamanager.data
    if isinstance(datamanager.dataparser, BlenderDataParserConfig):
        check_blender_folder(Path(datamanager.dataparser.data))
    else:
        check_generic_dataparser(config)
    check_colour_heads(config)
    check_grid_fits(config)
    check_empty_space_threshold(config)
