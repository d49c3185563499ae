"""benchmarks/ablate.py's options for splitting the over-fitting: the oracle scene (the test views joined to the
training split, the data left untouched) and a saved geometry under colour of another shape."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import torch  # noqa: E402
from ablate import keep_geometry_only, with_test_views  # noqa: E402


def test_with_test_views_trains_on_both_splits_and_links_the_rest(tmp_path: Path) -> None:
    data = tmp_path / "scene"
    for split, names in {"train": ["r_0", "r_1"], "test": ["r_5"], "val": ["r_7"]}.items():
        (data / split).mkdir(parents=True)
        for name in names:
            (data / split / f"{name}.png").write_bytes(b"png")
        frames = [{"file_path": f"./{split}/{name}", "transform_matrix": [[1, 0, 0, 0]] * 4} for name in names]
        (data / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": frames}))
    before = {path: path.read_bytes() for path in data.rglob("*") if path.is_file()}
    oracle = tmp_path / "oracle"
    oracle.mkdir()

    assert with_test_views(data, oracle) == oracle
    transforms = json.loads((oracle / "transforms_train.json").read_text())
    assert [frame["file_path"] for frame in transforms["frames"]] == ["./train/r_0", "./train/r_1", "./test/r_5"]
    assert transforms["camera_angle_x"] == 0.69
    assert (oracle / "test" / "r_5.png").read_bytes() == b"png"  # the frames' paths resolve in the new scene
    assert (oracle / "transforms_test.json").resolve() == (data / "transforms_test.json").resolve()
    assert {path: path.read_bytes() for path in data.rglob("*") if path.is_file()} == before


def test_keep_geometry_only_keeps_the_saved_geometry_under_colour_of_the_models_shape() -> None:
    saved = {
        "field.aabb": torch.rand(2, 3),
        "field.base_logits": torch.rand(5, 6, 7),
        "field.features": torch.rand(3, 4, 4, 12),
        "field.colour_mlp.0.weight": torch.rand(64, 21),
    }
    model = {"field.aabb": torch.zeros(2, 3), "field.base_logits": torch.zeros(2, 2, 2),
             "field.features": torch.zeros(2, 2, 2, 6), "field.colour_mlp.0.weight": torch.zeros(64, 6)}
    state = keep_geometry_only(saved, model)
    assert state.keys() == saved.keys()
    assert state["field.base_logits"] is saved["field.base_logits"] and state["field.aabb"] is saved["field.aabb"]
    assert state["field.features"].shape == (3, 4, 4, 6)  # the saved box's voxels, the model's width
    assert state["field.colour_mlp.0.weight"] is model["field.colour_mlp.0.weight"]
