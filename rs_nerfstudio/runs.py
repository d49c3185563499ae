"""Opening a trained rs-sdf run for the ``rs-*`` tools, with one-line errors for runs that cannot be opened."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Tuple

from rs_nerfstudio.validation import InputError

if TYPE_CHECKING:
    from rs_nerfstudio.model import RSSDFModel


def load_model(config_path: Path) -> Tuple["RSSDFModel", int]:
    """The trained model of a run (CUDA if present, else CPU) and its step; no dataset images are loaded."""
    import yaml

    config_path = Path(config_path)
    if config_path.is_dir():
        config_path = config_path / "config.yml"
    if not config_path.is_file():
        raise InputError(f"no run config at {config_path} (pass the config.yml that ns-train wrote)")
    try:
        config = yaml.load(config_path.read_text(encoding="utf8"), Loader=yaml.Loader)
    except (yaml.YAMLError, ImportError, AttributeError) as error:
        raise InputError(f"unreadable run config {config_path}: {error}") from None
    if getattr(config, "method_name", None) != "rs-sdf":
        raise InputError(f"{config_path} is a '{getattr(config, 'method_name', '?')}' run, not an rs-sdf run")
    checkpoints = sorted(config.get_checkpoint_dir().glob("step-*.ckpt"))
    if not checkpoints:
        raise InputError(f"no checkpoint in {config.get_checkpoint_dir()}: the run has not saved one yet")

    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, step = eval_setup(config_path, test_mode="inference")
    return pipeline.model, step
