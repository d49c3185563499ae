"""benchmarks/pixel_filter_ceiling.py: the interpolation behind its sub-pixel table."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from pixel_filter_ceiling import interpolate, interpolation_kernels  # noqa: E402

KERNELS = interpolation_kernels()


@pytest.mark.parametrize("label", list(KERNELS))
def test_no_offset_reads_the_pixels_themselves(label: str) -> None:
    image = np.random.default_rng(0).random((9, 11, 3))
    assert np.allclose(interpolate(image, 0.0, 0.0, *KERNELS[label]), image)


def test_interpolation_follows_a_ramp_and_a_smooth_wave_between_pixels() -> None:
    rows, cols = np.meshgrid(np.arange(40.0), np.arange(48.0), indexing="ij")

    def picture(dy: float, dx: float) -> np.ndarray:  # a ramp, and a wave of period 8 pixels, in two channels
        y, x = rows + dy, cols + dx
        return np.stack([0.01 * y + 0.02 * x, 0.5 + 0.4 * np.sin(2 * np.pi * (x / 8 + y / 11)), 0 * x], axis=-1)

    dy, dx = 0.3, -0.4
    inside = (slice(4, -4), slice(4, -4))  # away from the repeated border
    truth = picture(dy, dx)[inside]
    ramp, wave = {}, {}  # each kernel's largest error on either channel
    for label, kernel in KERNELS.items():
        error = np.abs(interpolate(picture(0, 0), dy, dx, *kernel)[inside] - truth)
        ramp[label], wave[label], _ = error.max(axis=(0, 1))
    assert ramp["bilinear"] < 1e-12 and ramp["Keys' cubic"] < 1e-12  # both reproduce linear functions exactly
    assert ramp["nearest (the pixel's own value)"] == pytest.approx(abs(0.01 * dy + 0.02 * dx))
    # On the wave, each kernel of wider support errs less: nearest > bilinear > cubic > Lanczos-3.
    order = ["nearest (the pixel's own value)", "bilinear", "Keys' cubic", "Lanczos-3"]
    assert all(wave[a] > wave[b] for a, b in zip(order, order[1:]))
    assert wave["Lanczos-3"] < 0.01
