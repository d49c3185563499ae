"""Monte-Carlo CERTIFY against closed forms and scipy, and the grid's radius against it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import beta, norm

from rs_nerfstudio.certify import (
    certify_monte_carlo,
    check_points,
    check_sample_sizes,
    clopper_pearson_lower,
    hoeffding_lower,
    load_points,
)
from rs_nerfstudio.validation import InputError


def test_clopper_pearson_against_reference_values() -> None:
    # Exact one-sided bounds: all-successes is alpha^(1/n); others are scipy's beta quantile.
    assert clopper_pearson_lower(np.array([100]), 100, 0.001)[0] == pytest.approx(0.001 ** (1 / 100))
    assert clopper_pearson_lower(np.array([0]), 100, 0.05)[0] == 0.0
    assert clopper_pearson_lower(np.array([50]), 100, 0.05)[0] == pytest.approx(beta.ppf(0.05, 50, 51))
    assert clopper_pearson_lower(np.array([50]), 100, 0.05)[0] == pytest.approx(0.4136, abs=1e-4)  # tabulated
    assert clopper_pearson_lower(np.array([9]), 10, 0.05)[0] == pytest.approx(0.6058, abs=1e-4)


def test_hoeffding_bound() -> None:
    assert hoeffding_lower(np.array([0.9]), 1000, 0.01)[0] == pytest.approx(0.9 - math.sqrt(math.log(100) / 2000))


def test_sample_sizes_that_can_never_certify_are_refused() -> None:
    with pytest.raises(InputError, match="needs n >= 10"):
        check_sample_sizes(100, 9, 0.001)  # 0.001^(1/9) = 0.46 <= 1/2
    check_sample_sizes(100, 10, 0.001)  # 0.001^(1/10) = 0.501
    with pytest.raises(InputError, match="n0"):
        check_sample_sizes(0, 1000, 0.001)
    with pytest.raises(InputError, match="soft"):
        check_sample_sizes(100, 13, 0.001, mode="soft")


def half_space(points: torch.Tensor) -> torch.Tensor:
    """Inside where x < 0.1."""
    return (points[:, 0] < 0.1).float()


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_half_space_radius_is_the_signed_distance(mode: str) -> None:
    sigma = 0.2
    points = torch.tensor([[x, 0.3, -0.2] for x in (-0.25, -0.1, 0.0, 0.2, 0.35)])
    result = certify_monte_carlo(half_space, points, sigma, n0=100, n=100_000, alpha=0.001, mode=mode)
    distance = points[:, 0].numpy() - 0.1
    assert not result.abstain.any()
    # The lower confidence bound makes the radius slightly smaller than the distance, never larger (w.p. 1 - alpha).
    assert (np.abs(result.radius) <= np.abs(distance) + 1e-9).all()
    assert np.abs(result.radius - distance).max() < 0.06 * sigma
    assert (np.sign(result.radius) == np.sign(distance)).all()


def test_the_grid_radius_of_a_half_space_field_is_its_distance() -> None:
    """rs-certify's grid radius, on a field whose base grid holds each voxel's volume fraction of the half-space:
    the exact signed distance within 2 sigma of the plane, up to discretisation (sigma is two voxels)."""
    from types import SimpleNamespace

    from rs_nerfstudio import grid as grids
    from rs_nerfstudio.certify import grid_radius
    from rs_nerfstudio.field import RSSDFField

    field = RSSDFField(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=40, sigma=0.1, appearance_resolution=4)
    voxel = field.voxel_length
    centres = grids.grid_coords_of_nodes(field.aabb, field.grid_shape)[..., 0]
    fraction = ((0.1 - centres) / voxel + 0.5).clamp(1e-6, 1 - 1e-6)  # of each voxel with x < 0.1
    with torch.no_grad():
        field.base_logits.copy_(torch.log(fraction / (1 - fraction)))
    x = torch.linspace(-0.5, 0.7, 193)
    points = torch.stack([x, torch.full_like(x, 0.13), torch.full_like(x, -0.21)], dim=-1)
    radius = grid_radius(SimpleNamespace(field=field), points)
    band = (x - 0.1).abs() < 2 * field.sigma
    assert band.sum() > 60
    assert float((radius - (x - 0.1))[band].abs().max()) < 0.04 * field.sigma  # 0.032 sigma measured


def test_the_base_classifier_is_empty_outside_the_box_and_points_come_from_inside_it() -> None:
    """Monte Carlo's noisy points leave the box: the base classifier reads 0 there (empty space), not the border
    voxels' value. Generated query points lie in the box, and those of the band within 2 sigma of the surface."""
    from types import SimpleNamespace

    from rs_nerfstudio import grid as grids
    from rs_nerfstudio.certify import base_occupancy_function, generated_points
    from rs_nerfstudio.field import RSSDFField

    box = torch.tensor([[-1.0, -0.5, 0.0], [1.0, 0.5, 2.0]])
    field = RSSDFField(aabb=box, resolution=32, sigma=0.1, appearance_resolution=4)
    with torch.no_grad():  # matter everywhere but a ball of empty space around the box's centre
        radius = (grids.grid_coords_of_nodes(box, field.grid_shape) - box.mean(0)).norm(dim=-1)
        field.base_logits.copy_(torch.where(radius < 0.3, -9.0, 9.0))
    model = SimpleNamespace(field=field)
    base = base_occupancy_function(model)
    inside = torch.tensor([[0.9, 0.4, 1.9], [-0.9, -0.4, 0.1]])
    outside = torch.tensor([[1.1, 0.0, 1.0], [0.0, -0.6, 1.0], [0.0, 0.0, -0.1], [0.0, 0.0, 2.2]])
    assert (base(inside) > 0.999).all() and (base(outside) == 0).all()
    for kind in ("box", "band"):
        points = generated_points(model, kind, 500, seed=0)
        assert points.shape == (500, 3) and ((points >= box[0]) & (points <= box[1])).all()
    # The band's lie near a surface: the ball's, or the box's faces (f_theta is 0 beyond them).
    to_ball = ((points - box.mean(0)).norm(dim=-1) - 0.3).abs()
    to_faces = torch.minimum(points - box[0], box[1] - points).amin(dim=-1)
    assert torch.minimum(to_ball, to_faces).max() < 2 * field.sigma + field.voxel_length
    assert (to_ball < 2 * field.sigma).sum() > 20


def test_abstains_on_the_surface() -> None:
    result = certify_monte_carlo(half_space, torch.tensor([[0.1, 0.0, 0.0]]), 0.2, n0=100, n=1000, alpha=0.001)
    assert result.abstain.all() and np.isnan(result.radius).all()


def test_bad_points(tmp_path) -> None:
    box = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    with pytest.raises(InputError, match="NaN"):
        check_points(torch.tensor([[0.0, 0.0, 0.0], [float("nan"), 0.0, 0.0]]), box, "q.npy")
    with pytest.raises(InputError, match="1 of 2 query points lie outside"):
        check_points(torch.tensor([[0.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), box, "q.npy")
    csv = tmp_path / "q.csv"
    csv.write_text("x,y,z\n0.1,0.2,0.3\n-0.5,0,0.25\n")
    torch.testing.assert_close(load_points(csv), torch.tensor([[0.1, 0.2, 0.3], [-0.5, 0.0, 0.25]]))
    with pytest.raises(InputError, match="not found"):
        load_points(tmp_path / "absent.npy")
    words = tmp_path / "words.npy"
    np.save(words, np.array([["a", "b", "c"]]))
    with pytest.raises(InputError, match="unreadable query points .*words.npy"):
        load_points(words)
    with pytest.raises(InputError, match="no query points"):
        check_points(torch.zeros(0, 3), box, "empty.npy")
    with pytest.raises(InputError, match="is a folder; name a .npy file or a text file"):
        load_points(tmp_path)
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(InputError, match="unreadable query points .*empty.npy"):
        load_points(tmp_path / "empty.npy")
    np.savez(tmp_path / "points.npz", points=np.zeros((2, 3)))
    with pytest.raises(InputError, match="points.npz: an .npz archive"):
        load_points(tmp_path / "points.npz")
    (tmp_path / "points.XYZ").write_text("0.1 0.2 0.3\n0.4 0.5 0.6\n")  # any other name: whitespace-separated text
    assert load_points(tmp_path / "points.XYZ").shape == (2, 3)
    (tmp_path / "header.csv").write_text("x,y,z\n")
    assert load_points(tmp_path / "header.csv").shape == (0, 3)  # check_points: "no query points"
    np.save(tmp_path / "complex.npy", np.ones((2, 3), dtype=np.complex64))
    with pytest.raises(InputError, match="complex numbers are not coordinates"):
        load_points(tmp_path / "complex.npy")


def test_report_files_are_named_and_never_replaced_unasked(tmp_path: Path) -> None:
    from rs_nerfstudio.certify import CertifyConfig

    absent = tmp_path / "no-run" / "config.yml"
    for output in ("lego_sigma0.5", "lego_sigma0.5.json", "lego_sigma0.5.npz"):
        paths = CertifyConfig(absent, output=tmp_path / output).report_paths()
        assert [p.name for p in paths] == ["lego_sigma0.5.json", "lego_sigma0.5.npz"]
    (tmp_path / "lego_sigma0.5.npz").write_bytes(b"earlier results")
    with pytest.raises(InputError, match="lego_sigma0.5.npz exists; pass --overwrite"):
        CertifyConfig(absent, output=tmp_path / "lego_sigma0.5").main()
    with pytest.raises(InputError, match="--num-points"):
        CertifyConfig(absent, output=tmp_path / "other", num_points=0).main()
    with pytest.raises(InputError, match=r"--seed must be in \[0, 2\^63\)"):
        CertifyConfig(absent, output=tmp_path / "other", seed=2**64).main()
    with pytest.raises(InputError, match="is a folder; give the report's name"):
        CertifyConfig(absent, output=tmp_path).main()
    with pytest.raises(InputError, match="--alpha must be in"):
        CertifyConfig(absent, output=tmp_path / "other", alpha=5.0).main()  # even without --monte-carlo


def test_rs_certify_on_a_trained_run(trained_run: Path, tmp_path: Path) -> None:
    """The command end to end: points in the surface band, the grid's radius at each, and soft Monte Carlo (the
    quantity the grid computes) agreeing with it to a small share of sigma."""
    import json
    import subprocess

    from tests.conftest import command

    output = tmp_path / "report"
    result = subprocess.run(
        [command("rs-certify"), "--load-config", str(trained_run), "--num-points", "200", "--monte-carlo",
         "--mode", "soft", "--n", "20000", "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    arrays, summary = np.load(f"{output}.npz"), json.loads(Path(f"{output}.json").read_text())
    assert arrays["points"].shape == (200, 3) and summary["points"] == 200
    from rs_nerfstudio.runs import load_model

    model, _ = load_model(trained_run)
    with torch.no_grad():  # each point's radius is the run's weak SDF there
        expected = model.field.weak_sdf(torch.from_numpy(arrays["points"]).float()).numpy()
    np.testing.assert_allclose(arrays["grid_radius"], expected, atol=1e-5)
    assert (arrays["grid_radius"] < 0).any() and (arrays["grid_radius"] > 0).any()  # both sides of the surface
    assert summary["mc_abstention_rate"] < 0.5 and summary["mean_abs_difference_sigma"] < 0.1
    certified = ~arrays["mc_abstain"]
    assert (np.sign(arrays["mc_radius"][certified]) == np.sign(arrays["grid_radius"][certified])).mean() > 0.95
