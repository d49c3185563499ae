"""rs-sdf against nerfstudio's own methods: same scene, same wall-clock budget, same machine, one command.

    python benchmarks/compare_methods.py --data ../shared/data/lego_200 --budget 600

Each method trains in a fresh process of its own (so peak memory is its own), one after the other, through
nerfstudio's public API: the method's config from ``all_methods``, ``TrainerConfig.setup``, ``Trainer.setup`` and
``Trainer.train``. A training callback appended to the trainer keeps the clock:

- the clock starts when the first training iteration ends (data loading, model set-up, a data-loader process's
  start-up and other one-time costs of the first step are not counted) and stops the run once ``--budget`` seconds
  of training have passed;
- at each ``--marks`` time it pauses, renders a fixed random set of ``--curve-pixels`` test pixels, as many from
  each test view, records their PSNR (the mean of the views' PSNRs, as the final scoring averages whole views; the
  PSNR of their pooled squared error beside it), the same for ``--train-curve-pixels`` pixels of 8 training views
  (how well the model fits its images: a gap to the test probe is over-fitting), and resumes; the time to 20/25/30 dB
  is the first mark at or above the test probe's PSNR, so it is exact to the spacing of the marks;
- after training, every test view is rendered whole and scored: PSNR and SSIM (averaged over views, as ``ns-eval``
  does) and LPIPS only when torchvision's AlexNet weights are already on disk.

What the harness sets on every method (and only this): the data and its Blender dataparser (images composited on
white); a white background where the model has that option; the same rays per batch (``--rays-per-batch``); the
device; no evaluation, checkpoint or viewer during the budget (nerfstudio would otherwise spend the budget on them);
no step limit (a fast device could otherwise end a run before the budget: rs-sdf's default is 5000 steps);
and, for rs-sdf, its own ``train_time_budget`` option, which a user of rs-sdf sets to train for a fixed time.
Everything else is the method's nerfstudio default, except what ``--rs-sdf-args`` gives rs-sdf (ns-train flags,
written ``--rs-sdf-args="--pipeline.model.grid-resolution 256"``; a GPU affords larger grids than the CPU defaults),
which the results record. Two exceptions to "unmodified", as the issue allows:

- LPIPS: nerfstudio's models build torchmetrics' LPIPS in ``populate_modules``, which downloads AlexNet when its
  weights are not cached and crashes offline. Unless the weights are on disk, the harness replaces that class by a
  stand-in that returns NaN before any model is built; no method trains differently for it.
- nerfstudio's own checkpoints hold numpy scalars that torch >= 2.6 refuses to load by default (nerfstudio issue
  #3683). The harness never reloads a checkpoint (it scores the trained model in memory); if it did, it would load
  them with ``weights_only=False`` as the trusted local files they are.

Outputs in ``--output-dir``: ``results.json`` (everything), ``results.md`` (the table) and ``psnr_vs_time.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence

CPU_METHODS = ["rs-sdf", "nerfacto", "tensorf", "neus-facto"]
CUDA_ONLY_METHODS = ["instant-ngp", "splatfacto"]
THRESHOLDS_DB = (20.0, 25.0, 30.0)
DEFAULT_MARKS = (30, 60, 90, 120, 180, 240, 300, 420, 600)


# ----- one method, in its own process --------------------------------------------------------------------------
def install_lpips_stand_in() -> bool:
    """Replace torchmetrics' LPIPS by a NaN stand-in unless AlexNet's weights are on disk; True if replaced."""
    from rs_nerfstudio.metrics import alexnet_weights_path

    if alexnet_weights_path().is_file():
        return False
    import torch
    import torchmetrics.image
    import torchmetrics.image.lpip

    class LPIPSUnavailable(torch.nn.Module):
        """Stands in for LPIPS when its AlexNet weights are not on disk (they would be downloaded)."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__()

        def forward(self, *args, **kwargs):
            return torch.tensor(float("nan"))

    torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity = LPIPSUnavailable  # type: ignore[misc]
    torchmetrics.image.LearnedPerceptualImagePatchSimilarity = LPIPSUnavailable  # type: ignore[attr-defined]
    return True


def configure(config, method: str, data: Path, output_dir: Path, rays_per_batch: int, device: str, budget: float):
    """The harness's settings on a method's nerfstudio config (see the module docstring); returns notes."""
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    notes = []
    datamanager = config.pipeline.datamanager
    if not isinstance(datamanager.dataparser, BlenderDataParserConfig):
        notes.append(f"dataparser {type(datamanager.dataparser).__name__} -> BlenderDataParserConfig")
        datamanager.dataparser = BlenderDataParserConfig()
    datamanager.data = data
    dataset_type = getattr(datamanager._target, "__args__", (None,))[0]
    if dataset_type is not None and dataset_type.__name__ == "SDFDataset":  # needs SDFStudio's depth/normal files
        from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager

        notes.append("dataset SDFDataset -> InputDataset (images only)")
        datamanager._target = VanillaDataManager
    if hasattr(datamanager, "train_num_rays_per_batch"):
        if datamanager.train_num_rays_per_batch != rays_per_batch:
            notes.append(f"rays per batch {datamanager.train_num_rays_per_batch} -> {rays_per_batch}")
        datamanager.train_num_rays_per_batch = rays_per_batch
    model = config.pipeline.model
    if getattr(model, "background_color", "white") != "white":
        notes.append(f"background {model.background_color} -> white")
        model.background_color = "white"
    if hasattr(model, "train_time_budget"):
        model.train_time_budget = budget
        notes.append(f"train_time_budget {budget:g} s (rs-sdf's own option)")
    config.machine.device_type = device
    config.output_dir = output_dir
    config.experiment_name = method
    config.timestamp = "run"
    config.vis = "tensorboard"
    never = 1 << 30
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = never
    config.steps_per_save = never
    if config.max_num_iterations is not None and config.max_num_iterations < never:  # the budget ends every run
        notes.append(f"max_num_iterations {config.max_num_iterations} -> no limit")
        config.max_num_iterations = never
    return notes


@dataclass
class CurveProbe:
    """A fixed random set of test pixels, the same number from each test view, rendered at each mark: a cheap
    estimate of the test split's PSNR.

    Its PSNR is the mean over views of each view's PSNR on its pixels, as ``ns-eval`` and the final scoring average
    whole views, so the curve and the times to a PSNR measure what the test-PSNR column measures. The PSNR of all
    pixels' pooled squared error is recorded beside it: it weighs the hardest views most. On a Lego 200 px model
    whose 8 whole test views scored 30.15 dB, four probes of 32,768 pixels (seeds 0-3) read 29.66-30.20 dB as the
    mean over views and 29.33-29.99 pooled; probes of 8192 pixels read 29.78-30.66 and 29.09-30.50: the error
    lies on few pixels (edges), so a small probe is a noisy one.
    """

    cameras: list
    coords: list
    targets: list

    @classmethod
    def build(cls, views: list, num_pixels: int, seed: int = 0) -> "CurveProbe":
        """From ``(camera, batch)`` pairs, as nerfstudio's eval loaders yield them: see :func:`eval_split_views`."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        per_view = max(1, num_pixels // len(views))
        cameras, coords, targets = [], [], []
        for camera, batch in views:
            image = batch["image"][..., :3].float()
            height, width = image.shape[:2]
            flat = torch.randperm(height * width, generator=generator)[:per_view]
            rows, cols = flat // width, flat % width
            cameras.append(camera)
            coords.append(torch.stack([rows, cols], dim=-1).float() + 0.5)
            targets.append(image[rows, cols])
        return cls(cameras, coords, targets)

    def scores(self, model) -> Dict[str, float]:
        """``psnr``: the mean of the views' PSNRs; ``psnr_pooled``: the PSNR of all pixels' squared error."""
        import torch

        view_mse = []
        with torch.no_grad():
            for camera, coords, target in zip(self.cameras, self.coords, self.targets):
                bundle = camera.generate_rays(camera_indices=0, coords=coords[:, None, :].to(camera.device))
                rgb = model.get_outputs_for_camera_ray_bundle(bundle)["rgb"].reshape(-1, 3).cpu()
                view_mse.append((rgb.clamp(0, 1) - target).pow(2).mean().item())
        return {
            "psnr": sum(psnr_from_mse(mse) for mse in view_mse) / len(view_mse),
            "psnr_pooled": psnr_from_mse(sum(view_mse) / len(view_mse)),
        }


def eval_split_views(datamanager) -> list:
    """Every test view, as ``(camera, batch)``."""
    return list(datamanager.fixed_indices_eval_dataloader)


def train_split_views(datamanager, count: int = 8) -> list:
    """``count`` training views spread evenly over the split, as ``(camera, batch)``: the images the model fits, for
    the training-pixel probe. A gap between it and the test probe is over-fitting; no gap and a low PSNR, a model
    that cannot fit the images at all."""
    from nerfstudio.data.utils.dataloaders import FixedIndicesEvalDataloader

    dataset = datamanager.train_dataset
    total = len(dataset)
    count = min(count, total)
    indices = [round(k * total / count) for k in range(count)]
    return list(FixedIndicesEvalDataloader(dataset, image_indices=indices, device=datamanager.device))


def psnr_from_mse(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-12))


@dataclass
class BudgetClock:
    """Training callbacks: count training time, pause it for the PSNR probe at each mark, stop at the budget."""

    trainer: object
    budget: float
    marks: Sequence[float]
    probe: Optional[CurveProbe]
    train_probe: Optional[CurveProbe] = None
    """The same kind of probe on training views: the fit to the images, beside the test probe's generalisation."""
    start: Optional[float] = None
    paused: float = 0.0
    steps: int = 0
    curve: List[Dict[str, float]] = field(default_factory=list)
    next_mark: int = 0

    def elapsed(self) -> float:
        return 0.0 if self.start is None else time.perf_counter() - self.start - self.paused

    def after_step(self, step: int) -> None:
        if self.start is None:  # the first iteration carries one-time costs: the clock starts after it
            self.start = time.perf_counter()
            return
        self.steps += 1
        elapsed = self.elapsed()
        out_of_time = elapsed >= self.budget
        if self.probe is not None and self.next_mark < len(self.marks) and (
            elapsed >= self.marks[self.next_mark] or out_of_time
        ):
            while self.next_mark < len(self.marks) and self.marks[self.next_mark] <= elapsed:
                self.next_mark += 1
            self.record(step, elapsed)
        if out_of_time:
            self.trainer.stop_training = True  # type: ignore[attr-defined]

    def record(self, step: int, elapsed: float) -> None:
        paused_at = time.perf_counter()
        pipeline = self.trainer.pipeline  # type: ignore[attr-defined]
        pipeline.eval()
        scores = self.probe.scores(pipeline.model)  # type: ignore[union-attr]
        train_note = ""
        if self.train_probe is not None:
            scores["train_psnr"] = self.train_probe.scores(pipeline.model)["psnr"]
            train_note = f", training pixels {scores['train_psnr']:6.2f}"
        pipeline.train()
        probe_seconds = time.perf_counter() - paused_at
        self.paused += probe_seconds
        self.curve.append({"seconds": elapsed, "steps": self.steps, **scores, "probe_seconds": probe_seconds})
        print(
            f"[harness] {elapsed:7.1f} s  step {self.steps:6d}  probe PSNR {scores['psnr']:6.2f} dB "
            f"(pooled {scores['psnr_pooled']:6.2f}{train_note})",
            flush=True,
        )


def score_test_split(pipeline, max_views: Optional[int] = None) -> Dict[str, float]:
    """Every test view rendered whole: mean PSNR, SSIM, and LPIPS when its weights are local."""
    import torch
    from torchmetrics.functional import structural_similarity_index_measure

    from rs_nerfstudio.metrics import lpips_if_available

    lpips = lpips_if_available()
    scores: Dict[str, List[float]] = {"psnr": [], "ssim": []}
    if lpips is not None:
        scores["lpips"] = []
    pipeline.eval()
    started = time.perf_counter()
    with torch.no_grad():
        for index, (camera, batch) in enumerate(pipeline.datamanager.fixed_indices_eval_dataloader):
            if max_views is not None and index >= max_views:
                break
            rgb = pipeline.model.get_outputs_for_camera(camera)["rgb"].cpu().clamp(0, 1)
            target = batch["image"][..., :3].float().cpu()
            scores["psnr"].append(psnr_from_mse((rgb - target).pow(2).mean().item()))
            pred, gt = (torch.moveaxis(x, -1, 0)[None] for x in (rgb, target))
            scores["ssim"].append(float(structural_similarity_index_measure(pred, gt, data_range=1.0)))
            if lpips is not None:
                scores["lpips"].append(float(lpips(gt, pred)))
    result = {name: sum(values) / len(values) for name, values in scores.items()}
    result["num_views"] = len(scores["psnr"])
    result["render_seconds"] = time.perf_counter() - started
    return result


def with_ns_train_flags(config, flags: str):
    """``config`` with ns-train flags (one string, as a shell splits it) applied, parsed as ns-train parses them:
    a boolean takes a value, ``--pipeline.model.clip-march False``, as nerfstudio turns tyro's flag conversion off."""
    import shlex

    import tyro

    return tyro.cli(tyro.conf.FlagConversionOff[type(config)], default=config, args=shlex.split(flags))


def run_method(args: argparse.Namespace) -> Dict:
    """Train one method for the budget and score it; runs in its own process."""
    import random

    import numpy as np
    import torch
    from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

    replaced_lpips = install_lpips_stand_in()
    from nerfstudio.configs.method_configs import all_methods

    config = copy.deepcopy(all_methods[args.method])
    extra_notes = []
    if args.method == "rs-sdf" and args.rs_sdf_args:
        config = with_ns_train_flags(config, args.rs_sdf_args)
        extra_notes.append(f"rs-sdf flags: {args.rs_sdf_args}")
    notes = extra_notes + configure(
        config, args.method, args.data, args.output_dir / "runs", args.rays_per_batch, args.device, args.budget
    )
    if replaced_lpips:
        notes.append("LPIPS replaced by a NaN stand-in (AlexNet weights not on disk; never downloaded)")
    config.save_config()
    random.seed(config.machine.seed)
    np.random.seed(config.machine.seed)
    torch.manual_seed(config.machine.seed)
    trainer = config.setup(local_rank=0, world_size=1)
    try:
        trainer.setup(test_mode="test")
    except AttributeError as error:  # nerfstudio's stand-in for a missing tinycudann fails with a cryptic message
        import traceback

        if "tcnn" in "".join(traceback.format_exception(error)):
            raise SystemExit(
                f"{args.method} needs tiny-cuda-nn (tcnn), which needs CUDA and is not installed: "
                "nerfstudio builds tcnn modules for it with no torch fallback"
            ) from error
        raise
    datamanager = trainer.pipeline.datamanager
    probe = CurveProbe.build(eval_split_views(datamanager), args.curve_pixels)
    train_probe = None
    if args.train_curve_pixels > 0:
        train_probe = CurveProbe.build(train_split_views(datamanager), args.train_curve_pixels, seed=1)
    marks = [m for m in args.marks if m <= args.budget]
    clock = BudgetClock(trainer, args.budget, marks, probe, train_probe)
    trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], clock.after_step))
    trainer.train()
    train_seconds = clock.elapsed()
    if clock.probe is not None and (not clock.curve or clock.curve[-1]["steps"] < clock.steps):
        clock.record(clock.steps, train_seconds)  # the method stopped on its own clock: probe where it ended
    rays_per_batch = trainer.pipeline.datamanager.get_train_rays_per_batch()
    test = score_test_split(trainer.pipeline, args.score_views)
    usage_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    usage_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "method": args.method,
        "device": args.device,
        "budget_s": args.budget,
        "train_seconds": train_seconds,
        "steps": clock.steps,
        "rays_per_batch": rays_per_batch,
        "train_rays_per_s": clock.steps * rays_per_batch / max(train_seconds, 1e-9),
        "peak_rss_mb": usage_self / 1024.0,
        "peak_rss_children_mb": usage_children / 1024.0,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "test": test,
        "curve": clock.curve,
        "time_to_db": time_to_thresholds(clock.curve),
        "harness_settings": notes,
        "run_dir": str(config.get_base_dir()),
    }


def time_to_thresholds(curve: List[Dict[str, float]]) -> Dict[str, Optional[float]]:
    """Training seconds at the first mark whose probe PSNR reaches each threshold (None: never, in the budget)."""
    return {
        f"{threshold:g}": next((point["seconds"] for point in curve if point["psnr"] >= threshold), None)
        for threshold in THRESHOLDS_DB
    }


# ----- the whole comparison ------------------------------------------------------------------------------------
def launch(method: str, args: argparse.Namespace, out: Path) -> Dict:
    """Run one method in a child process; its result, or its failure in one line."""
    method_dir = out / method
    method_dir.mkdir(parents=True, exist_ok=True)
    result_path = method_dir / "result.json"
    command = [
        sys.executable, __file__, "--worker", "--method", method, "--data", str(args.data),
        "--budget", str(args.budget), "--rays-per-batch", str(args.rays_per_batch), "--device", args.device,
        "--curve-pixels", str(args.curve_pixels), "--train-curve-pixels", str(args.train_curve_pixels),
        "--output-dir", str(method_dir),
        *([f"--rs-sdf-args={args.rs_sdf_args}"] if args.rs_sdf_args else []),
        *(["--score-views", str(args.score_views)] if args.score_views else []),
        "--marks", *[str(m) for m in args.marks],
    ]  # fmt: skip
    print(f"== {method}: training for {args.budget:g} s on {args.device}", flush=True)
    started = time.perf_counter()
    with open(method_dir / "log.txt", "w", encoding="utf8") as log:
        process = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    if process.returncode != 0 or not result_path.is_file():
        tail = (method_dir / "log.txt").read_text(encoding="utf8", errors="replace").strip().splitlines()[-1:]
        reason = tail[0][:300] if tail else f"exit code {process.returncode}"
        print(f"   failed: {reason} (log: {method_dir / 'log.txt'})", flush=True)
        return {"method": method, "failed": reason, "log": str(method_dir / "log.txt")}
    result = json.loads(result_path.read_text(encoding="utf8"))
    result["wall_seconds"] = time.perf_counter() - started
    print(
        f"   {result['steps']} steps, {result['train_rays_per_s']:.0f} rays/s, "
        f"test PSNR {result['test']['psnr']:.2f} dB, peak RSS {result['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    return result


def format_seconds(value: Optional[float]) -> str:
    return "never" if value is None else f"{value:.0f} s"


def markdown_table(results: List[Dict], args: argparse.Namespace) -> str:
    lines = [
        f"Scene `{args.data}`, {args.budget:g} s of training per method on {args.device}, "
        f"{args.rays_per_batch} rays per batch, scored on the test split.",
        "",
        "| method | steps | train rays/s | test PSNR | SSIM | LPIPS | peak RSS | to 20 dB | to 25 dB | to 30 dB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        if "failed" in r:
            lines.append(f"| {r['method']} | failed: {r['failed']} | | | | | | | | |")
            continue
        test, to = r["test"], r["time_to_db"]
        lpips = f"{test['lpips']:.3f}" if "lpips" in test else "n/a"
        lines.append(
            f"| {r['method']} | {r['steps']} | {r['train_rays_per_s']:,.0f} | {test['psnr']:.2f} | {test['ssim']:.3f} "
            f"| {lpips} | {r['peak_rss_mb'] / 1024:.2f} GB | {format_seconds(to['20'])} | {format_seconds(to['25'])} "
            f"| {format_seconds(to['30'])} |"
        )
    ok = {r["method"]: r for r in results if "failed" not in r}
    if "rs-sdf" in ok:
        ours = ok["rs-sdf"]
        lines.append("")
        for peer in (m for m in ok if m != "rs-sdf"):
            ratio = ours["train_rays_per_s"] / max(ok[peer]["train_rays_per_s"], 1e-9)
            lines.append(f"- rs-sdf trains {ratio:.1f}x as many rays per second as {peer}.")
        ours_25 = ours["time_to_db"]["25"]
        peers_25 = [ok[m]["time_to_db"]["25"] for m in ok if m != "rs-sdf" and ok[m]["time_to_db"]["25"] is not None]
        if ours_25 is not None and peers_25:
            lines.append(f"- Time to 25 dB: rs-sdf {ours_25:.0f} s, fastest peer {min(peers_25):.0f} s "
                         f"({min(peers_25) / ours_25:.1f}x).")  # fmt: skip
        elif ours_25 is not None and len(ok) > 1:
            lines.append(f"- Time to 25 dB: rs-sdf {ours_25:.0f} s; no peer reached 25 dB in {args.budget:g} s.")
        elif ours_25 is not None:
            lines.append(f"- Time to 25 dB: rs-sdf {ours_25:.0f} s (no other method finished in this run).")
    fits = [
        f"{method} {r['curve'][-1]['train_psnr']:.2f} / {r['curve'][-1]['psnr']:.2f} dB"
        for method, r in ok.items()
        if r["curve"] and "train_psnr" in r["curve"][-1]
    ]
    if fits:
        lines.append(f"- The probe at the end, training pixels / test pixels: {', '.join(fits)}.")
    lines += [
        "",
        "Times to a PSNR are the first probe mark at or above it (marks at "
        + ", ".join(f"{m:g}" for m in args.marks if m <= args.budget)
        + f" s; probe: {args.curve_pixels} random test pixels, as many from each test view, "
        + ("its PSNR the mean of the views' PSNRs, as the test-PSNR column's" if per_view_probe(results) else
           "its PSNR that of their pooled squared error (a record from before the harness took the mean over views)")
        + "). Peak RSS is the training "
        "process's own: the data-loader worker process of nerfacto and tensorf (nerfstudio's parallel datamanager) is "
        "not included.",
    ]
    return "\n".join(lines) + "\n"


def per_view_probe(results: List[Dict]) -> bool:
    """Whether the probe's curve is the mean of per-view PSNRs (records before that hold the pooled PSNR alone)."""
    return all("psnr_pooled" in point for r in results if "failed" not in r for point in r["curve"])


def plot(results: List[Dict], path: Path, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in results:
        if "failed" in r or not r["curve"]:
            continue
        axes.plot([p["seconds"] for p in r["curve"]], [p["psnr"] for p in r["curve"]], marker="o", label=r["method"])
    for threshold in THRESHOLDS_DB:
        axes.axhline(threshold, color="grey", linestyle=":", linewidth=0.8)
    axes.set_xlim(0, budget * 1.02)
    axes.set_xlabel("training time (s)")
    axes.set_ylabel(f"test PSNR (dB, probe, {'mean over views' if per_view_probe(results) else 'pooled'})")
    axes.set_title("PSNR against training time, same machine and budget")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lego_200"), help="Blender-format scene")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of training per method")
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"default: {' '.join(CPU_METHODS)} (+ {' '.join(CUDA_ONLY_METHODS)} with CUDA)")
    parser.add_argument("--rays-per-batch", type=int, default=None,
                        help="the same for every ray-based method (default: rs-sdf's own, 8192)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--marks", type=float, nargs="+", default=list(DEFAULT_MARKS), help="probe times (s)")
    parser.add_argument("--curve-pixels", type=int, default=32768, help="test pixels in the PSNR probe")
    parser.add_argument("--train-curve-pixels", type=int, default=8192,
                        help="training pixels (from 8 training views) probed beside the test pixels at each mark, "
                        "to tell over-fitting from under-fitting (0: none)")
    parser.add_argument("--score-views", type=int, default=None,
                        help="score only the first N test views (smoke tests; default: all)")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: outputs/benchmark/<time>")
    parser.add_argument("--rs-sdf-args", default="", metavar="FLAGS",
                        help="ns-train flags for rs-sdf alone, in one string (e.g. a larger grid on a GPU); "
                        "recorded in the results; the harness's own settings still win")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR",
                        help="only rewrite DIR/results.md and DIR/psnr_vs_time.png from DIR/results.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)  # for --worker
    return parser.parse_args(argv)


def stop_child_processes(timeout: float = 5.0) -> None:
    """Stop the processes this one started, and theirs: nerfstudio's parallel data manager leaves its data-loader
    process running, and ``os._exit`` would orphan it with its memory (tensorf's held 0.7 GB after a harness run)."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    args.marks = sorted(args.marks)
    if args.worker:
        result = run_method(args)
        (args.output_dir / "result.json").write_text(json.dumps(result, indent=2), encoding="utf8")
        sys.stdout.flush()
        stop_child_processes()
        os._exit(0)  # a data-loader process that ignored the stop must not keep the run alive

    if args.report is not None:
        write_report(args.report)
        return
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if not (args.data / "transforms_train.json").is_file():
        sys.exit(f"error: --data {args.data}: no transforms_train.json (a Blender-format scene is needed)")
    if args.methods is None:
        args.methods = CPU_METHODS + (CUDA_ONLY_METHODS if args.device == "cuda" else [])
    from nerfstudio.configs.method_configs import all_methods

    if args.rays_per_batch is None:  # rs-sdf's own default, given to every method
        from rs_nerfstudio.config import rs_sdf_trainer_config

        args.rays_per_batch = rs_sdf_trainer_config().pipeline.datamanager.train_num_rays_per_batch
    unknown = [m for m in args.methods if m not in all_methods]
    if unknown:
        sys.exit(f"error: --methods: unknown to nerfstudio: {', '.join(unknown)}")
    out = args.output_dir or Path("outputs/benchmark") / datetime.now().strftime("%Y-%m-%d_%H%M%S")
    if out.exists() and any(out.iterdir()):
        sys.exit(f"error: --output-dir {out} is not empty; choose another folder")
    out.mkdir(parents=True, exist_ok=True)

    results = [launch(method, args, out) for method in args.methods]
    summary = {
        "data": str(args.data),
        "budget_s": args.budget,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda_device": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "marks_s": args.marks,
        "curve_pixels": args.curve_pixels,
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf8")
    write_report(out)


def write_report(out: Path) -> None:
    """results.md and psnr_vs_time.png from results.json."""
    path = out / "results.json"
    if not path.is_file():
        sys.exit(f"error: --report {out}: no results.json there")
    summary = json.loads(path.read_text(encoding="utf8"))
    results = summary["results"]
    rays = next((r["rays_per_batch"] for r in results if "rays_per_batch" in r), "?")
    settings = argparse.Namespace(
        data=summary["data"], budget=summary["budget_s"], device=summary["device"], rays_per_batch=rays,
        marks=summary["marks_s"], curve_pixels=summary["curve_pixels"],
    )  # fmt: skip
    (out / "results.md").write_text(markdown_table(results, settings), encoding="utf8")
    plot(results, out / "psnr_vs_time.png", settings.budget)
    print()
    print((out / "results.md").read_text(encoding="utf8"))
    print(f"Written: {out / 'results.md'}, {out / 'results.json'}, {out / 'psnr_vs_time.png'}")


if __name__ == "__main__":
    main()
