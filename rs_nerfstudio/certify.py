"""Certified distances two ways: the grid's exact Gaussian smoothing, and Cohen et al.'s Monte-Carlo CERTIFY.

What is certified is the *smoothed classifier of the base grid*: the base occupancy f_theta (the trained grid's
sigmoid, trilinearly interpolated between voxel centres, 0 outside the grids' box, which training fits to the matter)
convolved with N(0, sigma^2 I).

- Hard CERTIFY (Cohen, Rosenfeld and Kolter, ICML 2019): the base classifier votes inside/outside with
  h(x) = [f_theta(x) > 1/2]; n0 noisy votes pick a class, n more estimate its probability, whose one-sided
  Clopper-Pearson lower bound p_A at confidence 1 - alpha gives the radius sigma * Phi^-1(p_A), or an abstention
  when p_A <= 1/2.
- Soft variant: the Monte-Carlo mean of f_theta itself, with Hoeffding's lower bound. Its expectation is exactly
  what the grid computes, f_hat = f_theta * N(0, sigma^2 I), so it is the reference for the grid's value.
- Grid RS: the blur of the voxel values with integer-spaced Gaussian taps, interpolated trilinearly. It differs from
  the continuous convolution of the interpolated grid by a discretisation error, which ``benchmarks/
  certify_benchmark.py`` measures.

Signed radii follow nerfstudio's convention: positive outside, negative inside.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Literal, Optional, Tuple

import numpy as np
import tyro
from jaxtyping import Float

from rs_nerfstudio.outputs import check_outputs, metrics_json, write_atomically
from rs_nerfstudio.runs import one_line
from rs_nerfstudio.validation import InputError

if TYPE_CHECKING:  # torch is imported where it is used: `rs-certify --help` and a bad flag answer without it (~1.4 s)
    import torch
    from torch import Tensor

BaseOccupancy = Callable[["Tensor"], "Tensor"]
"""World points ``[N, 3]`` to base occupancy in [0, 1], ``[N]``."""


def clopper_pearson_lower(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """One-sided lower confidence bound at level 1 - alpha of a binomial proportion (scipy's beta quantile)."""
    from scipy.stats import beta

    successes = np.asarray(successes)
    bound = beta.ppf(alpha, successes, trials - successes + 1)
    return np.where(successes == 0, 0.0, np.nan_to_num(bound))


def hoeffding_lower(mean: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """Lower confidence bound at level 1 - alpha of the mean of [0, 1] variables."""
    return np.clip(np.asarray(mean) - math.sqrt(math.log(1 / alpha) / (2 * trials)), 0.0, 1.0)


def check_sample_sizes(n0: int, n: int, alpha: float, mode: str = "hard") -> None:
    """Refuse, before sampling, sample sizes that could never certify.

    Unanimous hard votes give p_A = alpha^(1/n) (Clopper-Pearson); a soft mean of 1 gives 1 - sqrt(log(1/alpha)/2n)
    (Hoeffding). Either must exceed 1/2.
    """
    if not 0 < alpha < 1:
        raise InputError(f"--alpha must be in (0, 1), got {alpha}")
    if n0 < 1:
        raise InputError(f"--n0 must be at least 1, got {n0}")
    if mode == "hard":
        needed = math.floor(math.log(alpha) / math.log(0.5)) + 1
    else:
        needed = math.floor(2 * math.log(1 / alpha)) + 1
    if n < needed:
        raise InputError(f"--n {n} can never certify at alpha = {alpha} ({mode} votes): it needs n >= {needed}")


def check_points(points: Tensor, aabb: Tensor, source: str) -> None:
    """Finite points inside the box, where the grid has data; otherwise say which and how many."""
    import torch

    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"{source}: query points must be an N x 3 array, got shape {tuple(points.shape)}")
    if len(points) == 0:
        raise InputError(f"{source}: holds no query points")
    bad = ~torch.isfinite(points).all(dim=1)
    if bad.any():
        first = int(bad.nonzero()[0])
        raise InputError(f"{source}: {int(bad.sum())} query points have NaN or infinite coordinates (first: row {first})")
    outside = ((points < aabb[0]) | (points > aabb[1])).any(dim=1)
    if outside.any():
        first = int(outside.nonzero()[0])
        raise InputError(
            f"{source}: {int(outside.sum())} of {len(points)} query points lie outside the grids' box "
            f"{aabb[0].tolist()}..{aabb[1].tolist()}, where the grid has no data (first: row {first}, "
            f"{points[first].tolist()})"
        )


@dataclass
class MonteCarloResult:
    """Per-point output of Monte-Carlo certification (numpy arrays)."""

    predicted_inside: np.ndarray
    """The class chosen by the n0 selection votes."""
    p_lower: np.ndarray
    """Lower confidence bound of the chosen class's probability."""
    p_estimate: np.ndarray
    """Plain Monte-Carlo estimate of the probability of being inside (hard votes or soft mean)."""
    radius: np.ndarray
    """Signed certified radius (positive outside); NaN where abstaining."""
    abstain: np.ndarray
    """True where the smoothed classifier abstains (its lower bound is not above 1/2)."""
    seconds: float
    """Wall-clock time of the certification."""


def certify_monte_carlo(
    base: BaseOccupancy,
    points: Float[Tensor, "N 3"],
    sigma: float,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    mode: Literal["hard", "soft"] = "hard",
    batch: int = 1 << 20,
    seed: int = 0,
) -> MonteCarloResult:
    """Cohen et al.'s CERTIFY for the two-class occupancy classifier, batched over points and noise samples."""
    import torch

    check_sample_sizes(n0, n, alpha, mode)
    generator = torch.Generator(device=points.device).manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        selection = _noisy_mean(base, points, sigma, n0, mode, batch, generator)
        predicted_inside = (selection > 0.5).cpu().numpy()
        estimate = _noisy_mean(base, points, sigma, n, mode, batch, generator).cpu().numpy().astype(np.float64)
    p_class = np.where(predicted_inside, estimate, 1.0 - estimate)
    if mode == "hard":
        p_lower = clopper_pearson_lower(np.round(p_class * n).astype(np.int64), n, alpha)
    else:
        p_lower = hoeffding_lower(p_class, n, alpha)
    abstain = p_lower <= 0.5
    from scipy.stats import norm

    magnitude = sigma * norm.ppf(np.clip(p_lower, 0.5, 1.0))
    radius = np.where(abstain, np.nan, np.where(predicted_inside, -magnitude, magnitude))
    return MonteCarloResult(predicted_inside, p_lower, estimate, radius, abstain, time.perf_counter() - start)


def _noisy_mean(base, points, sigma, count, mode, batch, generator) -> Tensor:
    """Mean over ``count`` Gaussian perturbations of the base occupancy (soft) or of its vote (hard)."""
    import torch

    total = torch.zeros(len(points), dtype=torch.float64, device=points.device)
    per_round = max(1, batch // max(1, len(points)))
    done = 0
    while done < count:
        repeats = min(per_round, count - done)
        noise = torch.randn(repeats, *points.shape, generator=generator, device=points.device) * sigma
        values = base((points[None] + noise).reshape(-1, 3)).reshape(repeats, len(points))
        if mode == "hard":
            values = (values > 0.5).to(values.dtype)
        total += values.sum(dim=0).double()
        done += repeats
    return total / count


def grid_radius(model, points: Tensor) -> Tensor:
    """The grid-RS weak SDF at the points (positive outside)."""
    import torch

    with torch.no_grad():
        return model.field.weak_sdf(points.to(model.field.aabb.device)).cpu()


def base_occupancy_function(model) -> BaseOccupancy:
    """The trained base classifier f_theta at world points: trilinear inside the box, 0 outside it."""
    field_ = model.field
    aabb = field_.aabb

    def base(points: Tensor) -> Tensor:
        inside = ((points >= aabb[0]) & (points <= aabb[1])).all(dim=1)
        return field_.base_occupancy(points) * inside

    return base


# ----- query points -----------------------------------------------------------------------------------------------
def load_points(path: Path) -> Tensor:
    """An N x 3 array from .npy, or from text: comma-separated in .csv, whitespace-separated in any other file, with
    an optional header row."""
    import warnings

    import torch

    path = Path(path)
    if path.is_dir():
        raise InputError(f"--points {path} is a folder; name a .npy file or a text file of x y z rows")
    if not path.is_file():
        raise InputError(f"query points not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path)
        elif suffix == ".npz":
            raise TypeError("an .npz archive; save the N x 3 array alone with numpy.save (.npy) or as text")
        else:
            with warnings.catch_warnings():  # numpy warns of an empty file; check_points names it
                warnings.simplefilter("ignore")
                array = np.atleast_2d(np.genfromtxt(path, delimiter="," if suffix == ".csv" else None))
            if array.size and np.isnan(array[0]).all():
                array = array[1:]  # a header row
        if np.iscomplexobj(array):
            raise TypeError("complex numbers are not coordinates")
        array = np.atleast_2d(np.asarray(array, dtype=np.float32))
    except (OSError, ValueError, TypeError, EOFError) as error:
        raise InputError(f"unreadable query points {path}: {one_line(error)}") from None
    return torch.from_numpy(array)


def generated_points(model, kind: Literal["band", "box"], count: int, seed: int) -> Tensor:
    """``box``: uniform in the grids' box. ``band``: uniform in the box, kept where |weak SDF| < 2 sigma."""
    import torch

    aabb = model.field.aabb.cpu()
    generator = torch.Generator().manual_seed(seed)
    if kind == "box":
        return aabb[0] + torch.rand(count, 3, generator=generator) * (aabb[1] - aabb[0])
    kept, tries = [], 0
    while sum(len(k) for k in kept) < count and tries < 200:
        candidates = aabb[0] + torch.rand(1 << 18, 3, generator=generator) * (aabb[1] - aabb[0])
        kept.append(candidates[grid_radius(model, candidates).abs() < 2 * model.field.sigma])
        tries += 1
    points = torch.cat(kept)[:count]
    if len(points) == 0:
        raise InputError("the run's weak SDF has no surface band in the box: nothing to certify")
    if len(points) < count:
        print(f"rs-certify: the surface band is thin; {len(points)} of the {count} points asked for were found")
    return points


# ----- the command ------------------------------------------------------------------------------------------------
@dataclass
class CertifyConfig:
    """Certified distances to a run's surface at query points: grid RS, and optionally Monte-Carlo CERTIFY."""

    load_config: Path
    """config.yml of an rs-sdf run."""
    points: Optional[Path] = None
    """Query points, N x 3: .npy, or text (comma-separated in .csv, else whitespace-separated). If not given,
    --generate makes them."""
    generate: Literal["band", "box"] = "band"
    """Without --points: 'band' = random points within 2 sigma of the surface, 'box' = random in the grids' box."""
    num_points: int = 1000
    """How many points --generate makes."""
    monte_carlo: bool = False
    """Also run Monte-Carlo CERTIFY at every point (slow: n noise samples per point)."""
    mode: Literal["hard", "soft"] = "hard"
    """Monte-Carlo votes of h = [f_theta > 1/2] with Clopper-Pearson (hard, Cohen et al.), or means of f_theta with
    Hoeffding (soft, the quantity the grid computes)."""
    n0: int = 100
    """Noise samples that select the class."""
    n: int = 100_000
    """Noise samples that estimate its probability."""
    alpha: float = 0.001
    """Failure probability: each radius holds with confidence 1 - alpha."""
    seed: int = 0
    """Seed of the generated points and the noise."""
    output: Path = Path("certify")
    """Report prefix: writes <output>.json (summary) and <output>.npz (per point)."""
    overwrite: bool = False
    """Replace the report's files if they exist."""

    def report_paths(self) -> Tuple[Path, Path]:
        """<output>.json and <output>.npz; an --output ending in .json or .npz names the pair too."""
        prefix = self.output.with_suffix("") if self.output.suffix in (".json", ".npz") else self.output
        return prefix.parent / f"{prefix.name}.json", prefix.parent / f"{prefix.name}.npz"

    def main(self) -> Dict[str, float]:
        from rs_nerfstudio.runs import load_model

        if self.points is None and self.num_points < 1:
            raise InputError(f"--num-points must be at least 1, got {self.num_points}")
        if not 0 <= self.seed < 2**63:
            raise InputError(f"--seed must be in [0, 2^63), got {self.seed}")
        if self.output.is_dir():
            example = self.output / "certify"
            raise InputError(f"--output {self.output} is a folder; give the report's name, e.g. {example}")
        check_sample_sizes(self.n0, self.n, self.alpha, self.mode)  # also without --monte-carlo: a typo is named
        json_path, npz_path = self.report_paths()
        check_outputs([json_path, npz_path], self.overwrite)
        given = load_points(self.points) if self.points is not None else None  # a bad file is named before the run
        model, _ = load_model(self.load_config)
        model.field.render_sigma, model.field.render_level = None, 0.0
        sigma = model.field.sigma
        if given is not None:
            points = given
            check_points(points, model.field.aabb.cpu(), str(self.points))
        else:
            points = generated_points(model, self.generate, self.num_points, self.seed)

        start = time.perf_counter()
        model.field.clear_smoothing_cache()  # time the blur too
        grid = grid_radius(model, points).numpy()
        grid_seconds = time.perf_counter() - start
        summary: Dict[str, float] = {
            "points": len(points), "sigma": sigma, "grid_seconds_per_point": grid_seconds / len(points),
        }  # fmt: skip
        arrays = {"points": points.numpy(), "grid_radius": grid}
        if self.monte_carlo:
            device = model.field.aabb.device
            result = certify_monte_carlo(
                base_occupancy_function(model), points.to(device), sigma, self.n0, self.n, self.alpha, self.mode,
                seed=self.seed,
            )  # fmt: skip
            summary.update(agreement(grid, result, sigma, self.n, self.alpha, self.mode))
            summary["speedup_grid_vs_monte_carlo"] = summary["mc_seconds_per_point"] / summary["grid_seconds_per_point"]
            arrays.update(
                mc_radius=result.radius, mc_abstain=result.abstain, mc_p_lower=result.p_lower,
                mc_p_estimate=result.p_estimate, mc_predicted_inside=result.predicted_inside,
            )  # fmt: skip
        write_atomically(npz_path, lambda path: np.savez_compressed(path, **arrays), self.overwrite)
        text = metrics_json(summary)
        write_atomically(json_path, lambda path: path.write_text(text, encoding="utf8"), self.overwrite)
        for key, value in summary.items():
            print(f"{key:40s} {value:.6g}")
        print(f"rs-certify: wrote {json_path} and {npz_path}")
        return summary


def agreement(grid: np.ndarray, result: MonteCarloResult, sigma: float, n: int, alpha: float, mode: str) -> Dict:
    """How the grid's radius compares with Monte Carlo's, in units of sigma, where Monte Carlo does not abstain."""
    from scipy.stats import norm

    kept = ~result.abstain
    estimate = sigma * norm.ppf(np.clip(1.0 - result.p_estimate, 1e-12, 1 - 1e-12))  # plain MC weak SDF
    difference = np.abs(grid - estimate)[kept] / sigma
    exceeds = (np.abs(grid) - np.abs(result.radius))[kept] / sigma
    return {
        "mc_n": n, "mc_alpha": alpha, "mc_soft": float(mode == "soft"),
        "mc_seconds_per_point": result.seconds / len(grid),
        "mc_abstention_rate": float(result.abstain.mean()),
        "mean_abs_difference_sigma": float(difference.mean()) if kept.any() else float("nan"),
        "p95_abs_difference_sigma": float(np.percentile(difference, 95)) if kept.any() else float("nan"),
        "grid_exceeds_certified_radius_share": float((exceeds > 0).mean()) if kept.any() else float("nan"),
        "grid_exceeds_certified_radius_by_0.05sigma_share": float((exceeds > 0.05).mean()) if kept.any() else float("nan"),
    }  # fmt: skip


def entrypoint() -> None:
    """Command-line entry point."""
    from rs_nerfstudio.cli import run_command

    run_command("rs-certify", tyro.cli(CertifyConfig).main, "--num-points or --n")


if __name__ == "__main__":
    entrypoint()
