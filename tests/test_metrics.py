"""LPIPS only from weights already on disk, and never inside a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rs_nerfstudio.metrics import alexnet_weights_path, lpips_if_available
from tests.test_model import small_model


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache: no AlexNet weights until a test writes them."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def cache_alexnet_weights() -> None:
    """Put weights where torchvision looks before it would download (random ones: LPIPS only needs a file)."""
    from torchvision.models import alexnet

    path = alexnet_weights_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(alexnet(weights=None).state_dict(), path)


def test_lpips_is_built_only_when_alexnets_weights_are_cached(torch_home: Path) -> None:
    assert lpips_if_available() is None
    cache_alexnet_weights()
    lpips = lpips_if_available()
    assert lpips is not None
    image = torch.rand(1, 3, 64, 64)
    assert float(lpips(image, image)) == pytest.approx(0.0, abs=1e-6)
    assert float(lpips(image, 1.0 - image)) > 0.0


def test_a_checkpoint_opens_whether_or_not_lpips_is_cached_where_it_was_trained_or_opened(torch_home: Path) -> None:
    without = small_model()
    cache_alexnet_weights()
    with_lpips = small_model()
    assert without.lpips is None and with_lpips.lpips is not None
    state = with_lpips.state_dict()
    assert not [key for key in state if key.startswith("lpips.")]
    without.load_state_dict(state)  # strict, as rs-export loads a run
    stray = {f"lpips.net.{key}": value for key, value in torch.nn.Linear(2, 2).state_dict().items()}
    older = {**without.state_dict(), **stray}
    with_lpips.load_state_dict(older)  # a checkpoint made before LPIPS was kept out of them
