"""Block-wise marching cubes: the same mesh as one call, no seams; exports from a real run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from rs_nerfstudio.export import (
    ExportMesh,
    ExportSdf,
    ExportSlices,
    Lattice,
    evaluate_block,
    evaluate_lattice,
    extract_mesh,
    weld,
)
from rs_nerfstudio.scenes import get_shape
from rs_nerfstudio.validation import InputError
from tests.conftest import command


def same_triangles(first, second, tolerance: float = 1e-5) -> bool:
    """Every triangle of each mesh has a twin in the other whose corners are within ``tolerance`` (any order)."""
    def signature(vertices, faces):
        corners = np.sort(vertices[faces].view("f8,f8,f8").reshape(len(faces), 3), axis=1)
        return corners.view(np.float64).reshape(len(faces), 9)

    a, b = signature(*first), signature(*second)
    return len(a) == len(b) and bool((cKDTree(b).query(a)[0] < tolerance).all() and (cKDTree(a).query(b)[0] < tolerance).all())


@pytest.mark.parametrize("shape", ["sphere", "torus", "union"])
def test_blockwise_equals_one_shot(shape: str) -> None:
    sdf = get_shape(shape).sdf
    lattice = Lattice.over_box((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5), 64)
    whole = extract_mesh(sdf, lattice, block=1000)
    blocks = extract_mesh(sdf, lattice, block=10)  # 63 cells in blocks of 10: an uneven last block on purpose
    assert len(blocks[0]) == len(whole[0]) and len(blocks[1]) == len(whole[1])  # no duplicated vertices
    assert cKDTree(whole[0]).query(blocks[0])[0].max() < 1e-5  # the same vertices
    mesh, reference = trimesh.Trimesh(*blocks, process=False), trimesh.Trimesh(*whole, process=False)
    assert mesh.is_watertight and mesh.volume > 0  # no seams, outward-facing
    assert mesh.area == pytest.approx(reference.area, rel=1e-6)
    assert mesh.volume == pytest.approx(reference.volume, rel=1e-6)
    if shape != "union":
        # The same triangles too. (The union's box has faces in lattice planes, whose flat quads marching cubes may
        # split along either diagonal at a block border: the same surface, triangulated differently.)
        assert same_triangles(blocks, whole)


def test_mesh_is_on_the_surface() -> None:
    sdf = get_shape("sphere").sdf
    lattice = Lattice.over_box((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5), 33)
    vertices, _ = extract_mesh(sdf, lattice, block=9)
    residual = sdf(torch.from_numpy(vertices).float()).abs()
    assert float(residual.max()) < 0.1 * lattice.spacing


def test_weld_merges_shared_vertices_only() -> None:
    lattice = Lattice(np.zeros(3), 0.5, (3, 3, 3))
    vertices = np.array([[0.0, 0.0, 0.25], [1.0, 0.0, 0.25], [0.0, 0.0, 0.25], [0.0, 1.0, 0.25]])
    welded, faces = weld(vertices, np.array([[0, 1, 3], [2, 3, 1]]), lattice)
    assert len(welded) == 3 and faces[0, 0] == faces[1, 0]
    np.testing.assert_allclose(welded[faces[0, 1]], [0.5, 0.0, 0.125])


def test_no_zero_crossing_is_refused() -> None:
    lattice = Lattice.over_box((-1, -1, -1), (1, 1, 1), 9)
    with pytest.raises(InputError, match="no 0.0 crossing"):
        extract_mesh(lambda p: p.norm(dim=-1) + 1.0, lattice)


def test_keep_components_keeps_the_largest(tmp_path: Path) -> None:
    """A big sphere, a small one and a speck: --keep-components 2 keeps the two spheres, 0 keeps all three."""
    parts = [trimesh.creation.icosphere(subdivisions=s, radius=r) for s, r in ((3, 1.0), (2, 0.3), (1, 0.05))]
    for part, x in zip(parts, (0.0, 2.0, -2.0)):
        part.apply_translation((x, 0.0, 0.0))
    whole = trimesh.util.concatenate(parts)
    absent = tmp_path / "no-run" / "config.yml"
    kept = ExportMesh(absent, keep_components=2)._postprocess(whole.vertices, whole.faces)
    assert len(kept.faces) == len(parts[0].faces) + len(parts[1].faces)
    assert kept.bounds[0][0] == pytest.approx(-1.0, abs=1e-6)  # the speck at x = -2 is gone
    everything = ExportMesh(absent, keep_components=0)._postprocess(whole.vertices, whole.faces)
    assert len(everything.faces) == len(whole.faces)


def test_the_lattice_evaluated_in_slabs_equals_one_block() -> None:
    sdf = get_shape("torus").sdf
    lattice = Lattice.over_box((-1.5, -1.0, -0.5), (1.5, 1.0, 0.5), 40)
    whole = evaluate_block(sdf, lattice, (0, 0, 0), lattice.counts)
    nodes_per_x = lattice.counts[1] * lattice.counts[2]
    slabs = evaluate_lattice(sdf, lattice, slab_nodes=7 * nodes_per_x)  # 40 layers in slabs of 7: a short last one
    assert slabs.dtype == np.float32 and slabs.shape == whole.shape == lattice.counts
    np.testing.assert_array_equal(slabs, whole)


def test_rs_export_from_a_run(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for args in (["mesh", "--resolution", "48", "--keep-components", "1"], ["sdf", "--resolution", "24"],
                 ["slices", "--resolution", "64"]):  # fmt: skip
        result = subprocess.run(
            [command("rs-export"), *args, "--load-config", str(trained_run), "--output-dir", str(out)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
    from rs_nerfstudio.runs import load_model

    model, _ = load_model(trained_run)
    mesh = trimesh.load(out / "mesh.ply", process=False)
    assert len(mesh.faces) > 100 and mesh.visual.vertex_colors.shape[0] == len(mesh.vertices)
    with torch.no_grad():  # the vertices lie on the weak SDF's zero level, to within a fraction of the lattice step
        on_surface = model.field.weak_sdf(torch.from_numpy(np.asarray(mesh.vertices)).float()).abs()
    assert float(on_surface.max()) < 0.3 * float((model.field.aabb[1] - model.field.aabb[0]).max()) / 47
    from rs_nerfstudio.export import BYTES_PER_TRIANGLE, estimate_mesh_bytes, surface_cells

    estimate = estimate_mesh_bytes(surface_cells(model), max(model.field.grid_shape), 48)
    assert estimate / BYTES_PER_TRIANGLE >= len(mesh.faces)  # the memory check counts at least the triangles made
    data = np.load(out / "weak_sdf.npz")
    # 24 nodes along the longest side of the grids' box (fitted to the matter, so no longer a cube)
    assert max(data["sdf"].shape) == 24 and min(data["sdf"].shape) > 8
    assert str(data["sign_convention"]) == "positive outside"
    assert float(data["sigma"]) == pytest.approx(0.0625)
    # The layout it states: sdf[i, j, k] at origin + (i, j, k) * voxel_size, checked at every node.
    shape = data["sdf"].shape
    nodes = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).reshape(-1, 3)
    points = torch.from_numpy(data["origin"] + nodes * data["voxel_size"]).float()
    with torch.no_grad():
        expected = model.field.weak_sdf(points).reshape(shape).numpy()
    np.testing.assert_allclose(data["sdf"], expected, atol=1e-5)
    assert (data["sdf"] < 0).any() and (data["sdf"] > 0).any()
    assert {p.name for p in out.glob("slice_*.png")} == {"slice_xy.png", "slice_xz.png", "slice_yz.png"}
    # An existing file is not overwritten without --overwrite, and nothing partial is left.
    result = subprocess.run(
        [command("rs-export"), "sdf", "--load-config", str(trained_run), "--output-dir", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1 and "--overwrite" in result.stderr.strip().splitlines()[-1]
    assert not list(out.glob(".*"))


def test_run_without_checkpoint_is_refused(trained_run: Path, tmp_path: Path) -> None:
    import yaml

    from rs_nerfstudio.runs import load_model

    config = yaml.load(trained_run.read_text(), Loader=yaml.Loader)
    config.output_dir = tmp_path / "elsewhere"  # the same run, moved without its checkpoints
    moved = tmp_path / "config.yml"
    moved.write_text(yaml.dump(config))
    with pytest.raises(InputError, match="no checkpoint in"):
        load_model(moved)
    with pytest.raises(InputError, match="no run config"):
        load_model(tmp_path / "missing.yml")


def test_a_mesh_that_would_not_fit_in_memory_is_refused_before_meshing(trained_run: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    import rs_nerfstudio.grid

    monkeypatch.setattr(rs_nerfstudio.grid, "available_memory_bytes", lambda device: 1000)
    with pytest.raises(InputError, match="--resolution 64 would need ~.* GiB for the mesh, 0.0 GiB is free; lower it"):
        ExportMesh(trained_run, output_dir=tmp_path, resolution=64).main()
    assert list(tmp_path.iterdir()) == []


def test_a_copied_run_reads_its_own_checkpoint(trained_run: Path, tmp_path: Path, monkeypatch) -> None:
    """Checkpoints are looked for beside config.yml, not where the config's output_dir pointed when ns-train ran."""
    from rs_nerfstudio.runs import load_model

    copy = Path(shutil.copytree(trained_run.parent, tmp_path / "copy"))
    monkeypatch.chdir(tmp_path)
    _, step = load_model(copy / "config.yml")
    assert step == 59
    checkpoints = sorted((copy / "nerfstudio_models").glob("step-*.ckpt"))
    checkpoints[-1].write_bytes(checkpoints[-1].read_bytes()[:5000])  # cut short
    with pytest.raises(InputError, match=f"unreadable checkpoint .*{checkpoints[-1].name}: not a torch checkpoint"):
        load_model(copy / "config.yml")
    config_text = (copy / "config.yml").read_text()
    (copy / "config.yml").write_text(config_text.replace("sigma: 0.0625", "sigma: .nan"))  # a hand-edited run
    with pytest.raises(InputError, match="config.yml: --pipeline.model.sigma must be a positive number, got nan"):
        load_model(copy / "config.yml")
    (copy / "config.yml").write_text("[1, 2]")
    with pytest.raises(InputError, match="is not a run config that ns-train wrote"):
        load_model(copy / "config.yml")
    (copy / "config.yml").write_text(config_text)
    for checkpoint in checkpoints:
        checkpoint.unlink()
    with pytest.raises(InputError, match="no checkpoint in .*copy"):  # the original run's are not read instead
        load_model(copy / "config.yml")
    (copy / "config.yml").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(InputError, match="unreadable run config"):
        load_model(copy / "config.yml")


def test_bad_numbers_and_existing_outputs_are_refused_before_the_run_is_read(tmp_path: Path) -> None:
    absent = tmp_path / "no-run" / "config.yml"  # never opened: each check comes first
    for command_, flag in (
        (ExportMesh(absent, block_size=0), "--block-size"),
        (ExportMesh(absent, keep_components=-1), "--keep-components"),
        (ExportMesh(absent, target_faces=0), "--target-faces"),
        (ExportSdf(absent, resolution=1), "--resolution"),
        (ExportSlices(absent, resolution=0), "--resolution"),
        (ExportSlices(absent, resolution=100_000), "--resolution must be between 2 and 8192"),
        (ExportMesh(absent, level=float("nan")), "--level must be finite"),
        (ExportMesh(absent, bbox_max=(float("inf"),) * 3), "--bbox-max .* must be finite"),
    ):
        with pytest.raises(InputError, match=flag):
            command_.main()
    out = tmp_path / "out"
    out.mkdir()
    (out / "slice_xz.png").write_bytes(b"mine")
    with pytest.raises(InputError, match="slice_xz.png exists"):
        ExportSlices(absent, output_dir=out).main()
    assert sorted(p.name for p in out.iterdir()) == ["slice_xz.png"]  # no slice written before the refusal
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(InputError, match="a-file is a file, not a folder"):
        ExportSdf(absent, output_dir=tmp_path / "a-file" / "sub").main()


def test_simplifying_without_pymeshlab_is_refused_before_the_run_is_read(tmp_path: Path, monkeypatch) -> None:
    """nerfstudio leaves pymeshlab out on some platforms (aarch64): say so before the meshing, not after it."""
    import importlib.util

    find_spec = importlib.util.find_spec

    def without_pymeshlab(name: str, *args):
        return None if name == "pymeshlab" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_pymeshlab)
    with pytest.raises(InputError, match="--target-faces needs pymeshlab"):
        ExportMesh(tmp_path / "no-run" / "config.yml", target_faces=1000).main()


def test_mesh_options_level_box_and_obj(trained_run: Path, tmp_path: Path) -> None:
    """--level inflates the surface, --bbox-min/max bounds what is meshed, --format obj writes the same mesh."""

    def export(name: str, **options) -> trimesh.Trimesh:
        path = ExportMesh(trained_run, output_dir=tmp_path / name, resolution=48, **options).main()
        return trimesh.load(path, process=False)

    surface = export("surface")
    inflated = export("inflated", level=0.05)
    assert (inflated.extents > surface.extents + 0.05).all()  # ~0.05 further out on each side
    low, high = surface.bounds
    middle = (low + high) / 2
    half = export("half", bbox_min=tuple(low - 0.1), bbox_max=(float(middle[0]), *(high + 0.1)[1:]))
    assert half.vertices[:, 0].max() <= middle[0] + 1e-5 and len(half.faces) < len(surface.faces)
    as_obj = export("obj", format="obj")
    assert (tmp_path / "obj" / "mesh.obj").is_file() and len(as_obj.faces) == len(surface.faces)
