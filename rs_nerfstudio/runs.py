"""Opening a trained rs-sdf run for the ``rs-*`` tools, with one-line errors for runs that cannot be opened."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, Tuple

from rs_nerfstudio.validation import InputError

if TYPE_CHECKING:
    from torch import Tensor

    from rs_nerfstudio.model import RSSDFModel


def load_model(config_path: Path) -> Tuple["RSSDFModel", int]:
    """The trained model of a run (CUDA if present, else CPU) and its step. The dataset is not needed."""
    import yaml

    config_path = Path(config_path)
    if config_path.is_dir():
        config_path = config_path / "config.yml"
    if not config_path.is_file():
        raise InputError(f"no run config at {config_path} (pass the config.yml that ns-train wrote)")
    try:
        config = yaml.load(config_path.read_text(encoding="utf8"), Loader=yaml.Loader)
    except (yaml.YAMLError, ImportError, AttributeError, ValueError) as error:  # ValueError: not UTF-8 text
        raise InputError(f"unreadable run config {config_path}: {one_line(error)}") from None
    if not hasattr(config, "method_name"):
        raise InputError(f"{config_path} is not a run config that ns-train wrote")
    if config.method_name != "rs-sdf":
        raise InputError(f"{config_path} is a '{config.method_name}' run, not an rs-sdf run")
    from rs_nerfstudio.validation import check_settings

    try:
        check_settings(config)  # a hand-edited config (sigma 0 would export a weak SDF of 0 everywhere)
    except InputError as error:
        raise InputError(f"{config_path}: {error.message}") from None
    # Beside the config, where ns-train put them: the config's own output_dir is relative to where ns-train ran.
    checkpoint_dir = config_path.parent / config.relative_model_dir
    checkpoints = sorted(checkpoint_dir.glob("step-*.ckpt"))
    if not checkpoints:
        raise InputError(f"no checkpoint in {checkpoint_dir}: the run has not saved one yet")

    return model_from_checkpoint(config, checkpoints[-1])


def one_line(error: BaseException) -> str:
    """An exception's message with its line breaks folded, for a one-line error."""
    return " ".join(str(error).split()) or type(error).__name__


def read_model_state(checkpoint: Path) -> Tuple[Dict[str, "Tensor"], int]:
    """An rs-sdf checkpoint's model state (keys as the model names them) and step; one line for anything else."""
    import zipfile

    import torch

    if not zipfile.is_zipfile(checkpoint):  # torch's own errors for these speak of mmap and serialization flags
        raise InputError(f"unreadable checkpoint {checkpoint}: not a torch checkpoint (empty, truncated or damaged)")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        pipeline_state, step = state["pipeline"], int(state["step"])
    except Exception as error:  # torch raises a different error for each way a file can be damaged
        raise InputError(f"unreadable checkpoint {checkpoint}: {type(error).__name__}: {one_line(error)}") from None
    if not isinstance(pipeline_state, dict):
        raise InputError(f"{checkpoint} holds no rs-sdf field")
    prefix = "_model."
    model_state = {
        key.removeprefix("module.")[len(prefix) :]: value
        for key, value in pipeline_state.items()
        if key.removeprefix("module.").startswith(prefix)
    }
    if "field.aabb" not in model_state:
        raise InputError(f"{checkpoint} holds no rs-sdf field")
    return model_state, step


def model_from_checkpoint(config, checkpoint: Path) -> Tuple["RSSDFModel", int]:
    """Rebuild the model from its config and checkpoint alone: the scene box is in the checkpoint, so the dataset
    need not be where training found it (nerfstudio's eval_setup would parse it again)."""
    import torch
    from nerfstudio.data.scene_box import SceneBox

    model_state, step = read_model_state(checkpoint)
    model = config.pipeline.model.setup(scene_box=SceneBox(aabb=model_state["field.aabb"]), num_train_data=0)
    model.update_to_step(step)
    model.load_state_dict(model_state)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), step
