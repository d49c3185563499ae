"""The rs-sdf field's caches: what evaluation and the viewer render must follow the training."""

from __future__ import annotations

import torch

from rs_nerfstudio.field import RSSDFField
from rs_nerfstudio.smoothing import gaussian_blur_3d

BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def test_cached_smoothing_follows_fused_adam_steps() -> None:
    """torch's fused Adam changes parameters without bumping their version counter; the cache must still notice."""
    field = RSSDFField(aabb=BOX, resolution=16, sigma=0.15, appearance_resolution=8)
    optimizer = torch.optim.Adam([field.base_logits], lr=0.5, fused=True)
    with torch.no_grad():
        before = field.smoothed_occupancy_grid().clone()  # evaluation: computed once, then cached
    for _ in range(2):  # two training steps, each a forward with gradients and a fused optimizer step
        version = field.base_logits._version
        (field.smoothed_occupancy_grid() * torch.linspace(0, 1, 16)).sum().backward()
        optimizer.step()
        assert field.base_logits._version == version  # the trap itself: the counter did not move
        with torch.no_grad():
            cached = field.smoothed_occupancy_grid()
        expected = gaussian_blur_3d(torch.sigmoid(field.base_logits.detach()), field.sigma_voxels())
        torch.testing.assert_close(cached, expected)
    assert not torch.allclose(before, cached)
    with torch.no_grad():
        assert field.smoothed_occupancy_grid() is cached  # and no change, no recomputation


def test_cached_smoothing_follows_load_state_dict_and_sigma() -> None:
    field = RSSDFField(aabb=BOX, resolution=16, sigma=0.15, appearance_resolution=8)
    with torch.no_grad():
        first = field.smoothed_occupancy_grid().clone()
        state = field.state_dict()
        state["base_logits"] = torch.randn(field.grid_shape)
        field.load_state_dict(state)
        loaded = field.smoothed_occupancy_grid()
        torch.testing.assert_close(loaded, gaussian_blur_3d(torch.sigmoid(state["base_logits"]), field.sigma_voxels()))
        assert not torch.allclose(first, loaded)
        wider = field.smoothed_occupancy_grid(sigma=0.3)
        assert not torch.allclose(wider, loaded)
