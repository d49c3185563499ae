"""The benchmark harness (benchmarks/compare_methods.py) end to end on a tiny scene, and its probes' views."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from compare_methods import stop_child_processes, train_split_views, with_ns_train_flags  # noqa: E402


class _Cameras:
    def __init__(self, count: int) -> None:
        self.index = torch.arange(count)

    def __getitem__(self, item: slice) -> "_Cameras":
        sliced = _Cameras(0)
        sliced.index = self.index[item]
        return sliced

    def to(self, device: str) -> "_Cameras":
        return self


class _Dataset:
    def __init__(self, count: int) -> None:
        self.cameras = _Cameras(count)
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        return {"image_idx": index}


class _DataManager:
    def __init__(self, count: int) -> None:
        self.train_dataset = _Dataset(count)
        self.device = "cpu"


def test_train_split_views_spread_over_the_split() -> None:
    views = train_split_views(_DataManager(79), count=8)
    indices = [batch["image_idx"] for _, batch in views]
    assert indices == [0, 10, 20, 30, 40, 49, 59, 69]
    assert [camera.index.tolist() for camera, _ in views] == [[i] for i in indices]  # each its own camera
    assert [batch["image_idx"] for _, batch in train_split_views(_DataManager(3), count=8)] == [0, 1, 2]


def test_harness_records_both_probes(tiny_scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    flags = (
        "--pipeline.model.grid-resolution 32 --pipeline.model.appearance-resolution 32 --pipeline.model.sigma 0.09 "
        "--pipeline.model.fit-box-at-step 10 --pipeline.model.fill-every 0"
    )
    process = subprocess.run(
        [
            sys.executable, str(BENCHMARKS / "compare_methods.py"), "--data", str(tiny_scene), "--methods", "rs-sdf",
            "--budget", "3", "--marks", "1", "2", "--rays-per-batch", "256", "--curve-pixels", "128",
            "--train-curve-pixels", "128", "--score-views", "1", "--device", "cpu", "--output-dir", str(out),
            f"--rs-sdf-args={flags}",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-2000:]
    result = json.loads((out / "results.json").read_text())["results"][0]
    assert "failed" not in result, result
    assert result["steps"] > 0 and result["test"]["num_views"] == 1
    assert len(result["curve"]) >= 2
    for point in result["curve"]:
        assert math.isfinite(point["psnr"]) and math.isfinite(point["train_psnr"])
    last = result["curve"][-1]
    table = (out / "results.md").read_text()
    assert f"rs-sdf {last['train_psnr']:.2f} / {last['psnr']:.2f} dB" in table
    assert (out / "psnr_vs_time.png").stat().st_size > 0


def test_stop_child_processes_ends_what_the_worker_started() -> None:
    # One child ends on SIGTERM; the other ignores it, as a busy data loader may, and must be killed after the grace.
    ignores_term = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
    )
    stubborn = subprocess.Popen([sys.executable, "-c", ignores_term], stdout=subprocess.PIPE)
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn.stdout.readline()  # its handler is set
    started = time.perf_counter()
    stop_child_processes(timeout=1.0)
    for child in (stubborn, polite):
        child.wait(timeout=5)  # raises if it still runs (psutil may have reaped it already: then it returns at once)
    assert time.perf_counter() - started < 10


def test_rs_sdf_flags_parse_as_ns_train_parses_them() -> None:
    """ns-train wants a value after a boolean flag (nerfstudio turns tyro's flag conversion off); so does the harness,
    so that a flag copied from one works in the other."""
    from rs_nerfstudio.config import rs_sdf_trainer_config

    flags = "--pipeline.model.stagger-colour True --pipeline.model.sigma 0.02"
    config = with_ns_train_flags(rs_sdf_trainer_config(), flags)
    assert config.pipeline.model.stagger_colour is True and config.pipeline.model.sigma == 0.02
    with pytest.raises(SystemExit):
        with_ns_train_flags(rs_sdf_trainer_config(), "--pipeline.model.no-stagger-colour")
