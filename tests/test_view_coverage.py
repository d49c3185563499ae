"""benchmarks/view_coverage.py: angles from each test camera to the nearest training cameras."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from view_coverage import camera_directions, nearest_angles  # noqa: E402


def pose(azimuth_deg: float, elevation_deg: float, radius: float = 4.0) -> list:
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    matrix = np.eye(4)
    matrix[:3, 3] = radius * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    return matrix.tolist()


def test_nearest_angles_are_the_angles_between_camera_directions_sorted() -> None:
    train = {"frames": [{"file_path": f"r_{k}", "transform_matrix": pose(az, 30)} for k, az in enumerate((0, 90, 40))]}
    test = {"frames": [{"file_path": "t_0", "transform_matrix": pose(10, 30, radius=2.5)}]}
    names, test_directions = camera_directions(test)
    angles = nearest_angles(test_directions, camera_directions(train)[1], count=3)
    assert names == ["t_0"]
    # On the 30-degree circle, 10 degrees of azimuth apart is cos(30) * 10 degrees or so; exactly, by the dot product.
    expected = [math.degrees(math.acos(math.cos(math.radians(30)) ** 2 * math.cos(math.radians(d)) + 0.25))
                for d in (10, 30, 80)]
    np.testing.assert_allclose(angles[0], expected, atol=1e-6)
