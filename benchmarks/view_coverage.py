"""How far each test view of a Blender scene is from the training cameras, as angles seen from the scene's centre.

    python benchmarks/view_coverage.py --data ../shared/data/lego_200

A test view close to a training camera mostly asks the model to reproduce what it was shown; one far from every
training camera asks it to interpolate. On Lego 200 px the test PSNR follows that distance (docs/experiments.md,
"Where the over-fitting is").
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import List, Tuple

import numpy as np

from rs_nerfstudio.validation import check_blender_folder


def camera_directions(transforms: dict) -> Tuple[List[str], np.ndarray]:
    """Each frame's file path and the unit vector from the origin to its camera."""
    names = [frame["file_path"] for frame in transforms["frames"]]
    centres = np.array([frame["transform_matrix"] for frame in transforms["frames"]], dtype=float)[:, :3, 3]
    return names, centres / np.linalg.norm(centres, axis=1, keepdims=True)


def nearest_angles(test: np.ndarray, train: np.ndarray, count: int = 3) -> np.ndarray:
    """``[T, count]`` angles, in degrees, from each test direction to its ``count`` nearest training directions."""
    cosines = np.clip(test @ train.T, -1.0, 1.0)
    return np.degrees(np.arccos(np.sort(cosines, axis=1)[:, ::-1][:, :count]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lego_200"))
    args = parser.parse_args()
    check_blender_folder(args.data, splits=("train", "test"))  # one line naming the file at fault, if any
    splits = {split: camera_directions(json.loads((args.data / f"transforms_{split}.json").read_text()))
              for split in ("train", "test")}
    names, test = splits["test"]
    angles = nearest_angles(test, splits["train"][1])
    print("| test view | elevation | nearest training cameras |\n| --- | ---: | --- |")
    for name, direction, row in zip(names, test, angles):
        elevation = math.degrees(math.asin(float(direction[2])))
        print(f"| {name} | {elevation:.0f}° | {', '.join(f'{angle:.1f}°' for angle in row)} |")


if __name__ == "__main__":
    main()
