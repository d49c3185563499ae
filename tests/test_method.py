"""The entry point: nerfstudio discovers rs-sdf beside its own methods, and importing it is safe."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import command


def test_entry_point_gives_a_method_specification() -> None:
    from nerfstudio.plugins.registry import discover_methods
    from nerfstudio.plugins.types import MethodSpecification

    from rs_nerfstudio import method

    assert isinstance(method.rs_sdf, MethodSpecification)
    methods, descriptions = discover_methods()
    assert "rs-sdf" in methods and "rs-sdf" in descriptions
    config = methods["rs-sdf"]
    assert config.machine.device_type in ("cpu", "cuda")


def test_sdf_field_marks_the_model_for_ns_export_where_cuda_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ns-export marching-cubes`` checks ``hasattr(config, "sdf_field")``, then calls ``.cuda()``: with CUDA the
    mark is there; without, reading it ends the command with one line that names the CPU path."""
    from rs_nerfstudio.model import MARCHING_CUBES_NEEDS_CUDA, RSSDFModelConfig

    config = RSSDFModelConfig()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hasattr(config, "sdf_field") and config.sdf_field == "weak_sdf"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exited:
        hasattr(config, "sdf_field")
    assert exited.value.code == MARCHING_CUBES_NEEDS_CUDA


def test_ns_train_help_lists_builtin_methods_and_ours() -> None:
    result = subprocess.run([command("ns-train"), "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("rs-sdf", "nerfacto", "splatfacto", "instant-ngp", "tensorf"):
        assert name in result.stdout, name


def test_default_device_is_cpu_without_cuda() -> None:
    from rs_nerfstudio.config import rs_sdf_trainer_config

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert rs_sdf_trainer_config().machine.device_type == expected


def test_entry_point_adds_no_heavy_imports_to_nerfstudio_commands() -> None:
    """Every ns-* command imports the entry point. Beside what nerfstudio itself has imported by then, it must not
    pull in torchmetrics (and through it scipy and matplotlib), which took ~0.9 s on this machine."""
    script = (
        "import sys, nerfstudio.engine.trainer, nerfstudio.models.nerfacto\n"
        "before = set(sys.modules)\n"
        "import rs_nerfstudio.method\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    added = result.stdout.split()
    assert any(name.startswith("rs_nerfstudio.") for name in added)
    heavy = [name for name in added if name.split(".")[0] in ("torchmetrics", "matplotlib", "scipy", "trimesh")]
    assert not heavy, heavy
