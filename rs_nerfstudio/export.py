"""``rs-export``: meshes, weak-SDF grids and SDF slices from a trained rs-sdf run, on the CPU or CUDA.

nerfstudio's marching-cubes exporter is CUDA-only and evaluates the whole lattice at once. Here the weak SDF is
evaluated block by block on one global lattice and each block is meshed with scikit-image; blocks share their
boundary nodes, so the vertices on a shared face are computed identically by both and welded: no seams, no duplicate
vertices, and the same mesh as one marching-cubes call over the whole lattice.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Literal, Optional, Tuple, Union

import numpy as np
import tyro
from typing_extensions import Annotated

from rs_nerfstudio.outputs import check_outputs, write_atomically
from rs_nerfstudio.validation import InputError

if TYPE_CHECKING:  # torch is imported where it is used: `rs-export --help` and a bad flag answer without it (~1.4 s)
    import torch

SDFFunction = Callable[["torch.Tensor"], "torch.Tensor"]
"""World points ``[N, 3]`` to signed distances ``[N]`` (positive outside)."""
BYTES_PER_TRIANGLE = 400
"""Peak bytes per output triangle while meshing, welding and writing (measured with trimesh; generous)."""
MAX_RESOLUTION = 1024
MAX_SLICE_PIXELS = 8192
"""Longest side of a slice image (a 8192² slice holds 67 M pixels)."""


@dataclass(frozen=True)
class Lattice:
    """Nodes ``origin + index * spacing`` for index in ``[0, counts)`` along x, y, z."""

    origin: np.ndarray
    """xyz of node (0, 0, 0)."""
    spacing: float
    """Distance between neighbouring nodes, the same on every axis."""
    counts: Tuple[int, int, int]
    """Nodes along x, y, z."""

    @staticmethod
    def over_box(box_min, box_max, resolution: int) -> "Lattice":
        """About ``resolution`` nodes along the longest side, the same spacing on every axis."""
        box_min, box_max = np.asarray(box_min, dtype=np.float64), np.asarray(box_max, dtype=np.float64)
        spacing = float((box_max - box_min).max()) / (resolution - 1)
        counts = tuple(int(max(2, math.floor((hi - lo) / spacing + 1e-6) + 1)) for lo, hi in zip(box_min, box_max))
        return Lattice(box_min, spacing, counts)  # type: ignore[arg-type]

    def points(self, start: Tuple[int, int, int], stop: Tuple[int, int, int]) -> torch.Tensor:
        """World positions of nodes ``start <= index < stop``, ``[nx, ny, nz, 3]``, float32."""
        import torch

        axes = [torch.arange(a, b, dtype=torch.float64) * self.spacing + o for a, b, o in zip(start, stop, self.origin)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).float()


def evaluate_block(sdf_fn: SDFFunction, lattice: Lattice, start, stop, chunk: int = 1 << 20) -> np.ndarray:
    """The SDF on a block of lattice nodes, ``[nx, ny, nz]`` float32."""
    import torch

    points = lattice.points(start, stop)
    flat = points.reshape(-1, 3)
    with torch.no_grad():
        values = torch.cat([sdf_fn(part).float().cpu() for part in flat.split(chunk)])
    return values.reshape(points.shape[:3]).numpy()


SLAB_NODES = 1 << 22
"""Nodes per slab of :func:`evaluate_lattice`: ~160 MB of points and temporaries besides the result."""


def evaluate_lattice(sdf_fn: SDFFunction, lattice: Lattice, slab_nodes: int = SLAB_NODES) -> np.ndarray:
    """The SDF on every lattice node, ``[nx, ny, nz]`` float32, computed in slabs along x: memory is the result's 4
    bytes per node plus one slab's, not the ~40 bytes per node that evaluating the whole lattice at once takes."""
    values = np.empty(lattice.counts, dtype=np.float32)
    nx, ny, nz = lattice.counts
    slab = max(1, slab_nodes // (ny * nz))
    for start in range(0, nx, slab):
        stop = min(nx, start + slab)
        values[start:stop] = evaluate_block(sdf_fn, lattice, (start, 0, 0), (stop, ny, nz))
    return values


def block_starts(counts: Tuple[int, int, int], block: int) -> Iterator[Tuple[int, int, int]]:
    """Corners of blocks of ``block`` cells; neighbours share one layer of nodes."""
    ranges = [range(0, max(1, n - 1), block) for n in counts]
    for i in ranges[0]:
        for j in ranges[1]:
            for k in ranges[2]:
                yield (i, j, k)


def extract_mesh(
    sdf_fn: SDFFunction,
    lattice: Lattice,
    level: float = 0.0,
    block: int = 128,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Marching cubes of ``sdf = level`` on the lattice, block by block; welded vertices (world) and faces."""
    from skimage.measure import marching_cubes

    starts = list(block_starts(lattice.counts, block))
    vertices, faces, offset = [], [], 0
    crossed = False
    for index, start in enumerate(starts):
        stop = tuple(min(s + block + 1, n) for s, n in zip(start, lattice.counts))
        values = evaluate_block(sdf_fn, lattice, start, stop)
        # Nodes within rounding error of the level are moved just off it: they would make degenerate triangles, and
        # neighbouring blocks, which evaluate the shared nodes in other batches, could see opposite signs.
        snap = 1e-4 * lattice.spacing
        values = np.where(np.abs(values - level) < snap, level + snap, values)
        if min(values.shape) >= 2 and values.min() < level < values.max():
            crossed = True
            block_vertices, block_faces, _, _ = marching_cubes(
                values, level=level, gradient_direction="descent", allow_degenerate=False
            )
            vertices.append(block_vertices + np.asarray(start))
            faces.append(block_faces + offset)
            offset += len(block_vertices)
        if progress is not None:
            progress(index + 1, len(starts))
    if not crossed:
        raise InputError(
            f"the weak SDF has no {level} crossing in the box: the scene is empty or full there (try --level, or "
            "--bbox-min and --bbox-max)"
        )
    return weld(np.concatenate(vertices), np.concatenate(faces), lattice)


def weld(vertices: np.ndarray, faces: np.ndarray, lattice: Lattice) -> Tuple[np.ndarray, np.ndarray]:
    """Merge the vertices that neighbouring blocks both produced on their shared faces (lattice units in, world out).

    Every marching-cubes vertex lies on one lattice edge, so the edge (its lower node and its axis) identifies it
    exactly, even where two blocks computed its position a rounding error apart.
    """
    offset_from_node = np.abs(vertices - np.round(vertices))
    axis = offset_from_node.argmax(axis=1)
    nodes = np.round(vertices).astype(np.int64)
    rows = np.arange(len(vertices))
    nodes[rows, axis] = np.floor(vertices[rows, axis]).astype(np.int64)
    keys = np.concatenate([nodes, axis[:, None]], axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    welded = vertices[first] * lattice.spacing + lattice.origin
    return welded, inverse.reshape(-1)[faces]


def estimate_mesh_bytes(smoothed_sign_changes: int, grid_resolution: int, resolution: int) -> int:
    """Peak memory of meshing at ``resolution``, from the number of surface cells in the model's own grid."""
    triangles = 2 * smoothed_sign_changes * (resolution / grid_resolution) ** 2
    return int(triangles * BYTES_PER_TRIANGLE)


# ----- the run's weak SDF and colour ------------------------------------------------------------------------------
def run_sdf_function(model) -> SDFFunction:
    """The run's weak SDF at world points, on the model's device."""
    device = model.field.aabb.device
    return lambda points: model.field.weak_sdf(points.to(device))


def vertex_colours(model, vertices: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """RGB (uint8) of the field at each vertex, seen head-on (against the weak SDF's normal)."""
    import torch

    field = model.field
    device = field.aabb.device
    colours = []
    with torch.no_grad():
        for part in torch.from_numpy(vertices).float().split(chunk):
            part = part.to(device)
            normals = torch.nn.functional.normalize(field.sdf_gradient(part), dim=-1)
            colours.append(field.colour(part, -normals).cpu())
    return (torch.cat(colours).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


def surface_cells(model) -> int:
    """Cells of the model's smoothed grid that the zero level crosses."""
    f_hat = model.field.smoothed_occupancy_grid()
    inside = f_hat > 0.5
    crossings = 0
    for axis in range(3):
        crossings += int((inside.diff(dim=axis) != 0).sum())
    return crossings


def box_of(model, bbox_min, bbox_max) -> Tuple[np.ndarray, np.ndarray]:
    aabb = model.field.aabb.cpu().numpy().astype(np.float64)
    low = aabb[0] if bbox_min is None else np.asarray(bbox_min, dtype=np.float64)
    high = aabb[1] if bbox_max is None else np.asarray(bbox_max, dtype=np.float64)
    if not (high > low).all():
        raise InputError(f"--bbox-max {tuple(high)} must exceed --bbox-min {tuple(low)} on every axis")
    return low, high


# ----- commands ---------------------------------------------------------------------------------------------------
@dataclass
class _RunCommand:
    load_config: Path
    """config.yml of an rs-sdf run (ns-train writes it)."""
    output_dir: Path = Path("exports")
    """Folder for the output files."""
    overwrite: bool = False
    """Replace output files that already exist."""


@dataclass
class ExportMesh(_RunCommand):
    """Marching cubes on the weak SDF, with vertex colours from the field."""

    resolution: int = 256
    """Lattice nodes along the box's longest side (at most 1024)."""
    level: float = 0.0
    """Iso-level of the weak SDF, in scene units (0: the surface; > 0 inflates it, < 0 erodes it)."""
    bbox_min: Optional[Tuple[float, float, float]] = None
    """Lower corner of the meshed box (default: the grids' box, fitted to the matter while training)."""
    bbox_max: Optional[Tuple[float, float, float]] = None
    """Upper corner of the meshed box (default: the grids' box, fitted to the matter while training)."""
    block_size: int = 128
    """Cells per block side: memory per block ~ block_size^3 nodes."""
    format: Literal["ply", "obj"] = "ply"
    """Mesh file format."""
    keep_components: int = 0
    """Keep only this many largest connected components (0: keep all)."""
    target_faces: Optional[int] = None
    """Simplify to about this many faces with quadric edge collapse (pymeshlab)."""

    def main(self) -> Path:
        if not 8 <= self.resolution <= MAX_RESOLUTION:
            raise InputError(f"--resolution must be between 8 and {MAX_RESOLUTION}, got {self.resolution}")
        if self.block_size < 1:
            raise InputError(f"--block-size must be at least 1, got {self.block_size}")
        if self.keep_components < 0:
            raise InputError(f"--keep-components must be 0 (keep all) or more, got {self.keep_components}")
        if not math.isfinite(self.level):
            raise InputError(f"--level must be finite, got {self.level}")
        for flag, corner in (("--bbox-min", self.bbox_min), ("--bbox-max", self.bbox_max)):
            if corner is not None and not all(map(math.isfinite, corner)):
                raise InputError(f"{flag} {tuple(corner)} must be finite")
        if self.target_faces is not None and self.target_faces < 4:
            raise InputError(f"--target-faces must be at least 4, got {self.target_faces}")
        if self.target_faces is not None and importlib.util.find_spec("pymeshlab") is None:  # before the meshing
            raise InputError("--target-faces needs pymeshlab (pip install pymeshlab), which this environment lacks")
        path = self.output_dir / f"mesh.{self.format}"
        check_outputs([path], self.overwrite)
        from rs_nerfstudio.grid import available_memory_bytes
        from rs_nerfstudio.runs import load_model

        model, _ = load_model(self.load_config)
        model.field.render_level = 0.0
        needed = estimate_mesh_bytes(surface_cells(model), max(model.field.grid_shape), self.resolution)
        available = available_memory_bytes("cpu")
        if needed > available:
            raise InputError(
                f"--resolution {self.resolution} would need ~{needed / 2**30:.1f} GiB for the mesh, "
                f"{available / 2**30:.1f} GiB is free; lower it"
            )
        low, high = box_of(model, self.bbox_min, self.bbox_max)
        lattice = Lattice.over_box(low, high, self.resolution)
        vertices, faces = self._extract(model, lattice)
        mesh = self._postprocess(vertices, faces)
        mesh.visual.vertex_colors = vertex_colours(model, np.asarray(mesh.vertices))
        write_atomically(path, lambda tmp: mesh.export(tmp, file_type=self.format), self.overwrite)
        print(f"rs-export: wrote {len(mesh.vertices)} vertices, {len(mesh.faces)} faces to {path}")
        return path

    def _extract(self, model, lattice: Lattice):
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("marching cubes", total=None)
            vertices, faces = extract_mesh(
                run_sdf_function(model), lattice, self.level, self.block_size,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )  # fmt: skip
        return vertices, faces

    def _postprocess(self, vertices: np.ndarray, faces: np.ndarray):
        import trimesh

        mesh = trimesh.Trimesh(vertices, faces, process=False)
        if self.keep_components > 0:
            parts = sorted(mesh.split(only_watertight=False), key=lambda part: len(part.faces), reverse=True)
            mesh = trimesh.util.concatenate(parts[: self.keep_components])
        if self.target_faces is not None and len(mesh.faces) > self.target_faces:
            mesh = simplify(mesh, self.target_faces)
        return mesh


def simplify(mesh, target_faces: int):
    """Quadric edge-collapse decimation with pymeshlab."""
    import pymeshlab
    import trimesh

    meshset = pymeshlab.MeshSet()
    meshset.add_mesh(pymeshlab.Mesh(vertex_matrix=mesh.vertices, face_matrix=mesh.faces))
    meshset.meshing_decimation_quadric_edge_collapse(targetfacenum=target_faces, preservetopology=True)
    out = meshset.current_mesh()
    return trimesh.Trimesh(out.vertex_matrix(), out.face_matrix(), process=False)


@dataclass
class ExportSdf(_RunCommand):
    """The weak-SDF grid as .npz (numpy alone loads it)."""

    resolution: int = 256
    """Nodes along the box's longest side."""

    def main(self) -> Path:
        if self.resolution < 2:
            raise InputError(f"--resolution must be at least 2, got {self.resolution}")
        path = self.output_dir / "weak_sdf.npz"
        check_outputs([path], self.overwrite)
        from rs_nerfstudio.runs import load_model

        model, _ = load_model(self.load_config)
        low, high = box_of(model, None, None)
        lattice = Lattice.over_box(low, high, self.resolution)
        needed = 4 * math.prod(lattice.counts) + 40 * SLAB_NODES  # the result, and one slab's points and values
        from rs_nerfstudio.grid import available_memory_bytes

        if needed > available_memory_bytes("cpu"):
            raise InputError(f"--resolution {self.resolution} needs ~{needed / 2**30:.1f} GiB; lower it")
        values = evaluate_lattice(run_sdf_function(model), lattice)
        write_atomically(
            path,
            lambda tmp: np.savez_compressed(
                tmp, sdf=values, origin=lattice.origin, voxel_size=lattice.spacing, sigma=model.field.sigma,
                sign_convention="positive outside", layout="sdf[i, j, k] at origin + (i, j, k) * voxel_size",
            ),  # fmt: skip
            self.overwrite,
        )
        print(f"rs-export: wrote the weak SDF on {lattice.counts} nodes to {path}")
        return path


@dataclass
class ExportSlices(_RunCommand):
    """PNGs of the weak SDF on the three axis-aligned planes through the box centre, with the zero contour."""

    offset: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Shift of the planes from the box centre along x, y, z (scene units)."""
    resolution: int = 512
    """Pixels along each image's longer side."""

    def main(self) -> Path:
        if not 2 <= self.resolution <= MAX_SLICE_PIXELS:
            raise InputError(f"--resolution must be between 2 and {MAX_SLICE_PIXELS}, got {self.resolution}")
        planes = [(normal, name, self.output_dir / f"slice_{name}.png") for normal, name in PLANES]
        check_outputs([path for _, _, path in planes], self.overwrite)
        from rs_nerfstudio.runs import load_model

        model, _ = load_model(self.load_config)
        low, high = box_of(model, None, None)
        centre = (low + high) / 2 + np.asarray(self.offset)
        if not ((centre >= low) & (centre <= high)).all():
            raise InputError(f"--offset {self.offset} moves the planes outside the grids' box")
        sigma = model.field.sigma
        sdf_fn = run_sdf_function(model)
        for normal, name, path in planes:
            axes = [a for a in range(3) if a != normal]
            image = slice_values(sdf_fn, low, high, centre, axes, normal, self.resolution)
            write_atomically(path, lambda tmp: plot_slice(image, low, high, axes, sigma, name, tmp), self.overwrite)
        print(f"rs-export: wrote {', '.join(str(path) for _, _, path in planes)}")
        return self.output_dir


PLANES = ((2, "xy"), (1, "xz"), (0, "yz"))
"""The slices: the axis normal to each plane, and the plane's name."""


def slice_values(sdf_fn, low, high, centre, axes, normal, resolution) -> np.ndarray:
    """The SDF on a plane through ``centre`` spanned by ``axes``; rows follow the second axis."""
    import torch

    extent = high - low
    scale = resolution / max(extent[axes[0]], extent[axes[1]])
    counts = [max(2, int(round(extent[a] * scale))) for a in axes]
    u = torch.linspace(low[axes[0]], high[axes[0]], counts[0])
    v = torch.linspace(low[axes[1]], high[axes[1]], counts[1])
    grid_v, grid_u = torch.meshgrid(v, u, indexing="ij")
    points = torch.zeros(*grid_u.shape, 3)
    points[..., axes[0]], points[..., axes[1]], points[..., normal] = grid_u, grid_v, float(centre[normal])
    with torch.no_grad():
        return sdf_fn(points.reshape(-1, 3)).cpu().reshape(grid_u.shape).numpy()


def plot_slice(values: np.ndarray, low, high, axes, sigma: float, name: str, path: Path) -> None:
    """Diverging colour map centred on 0 (blue inside, red outside) with the zero contour, as in the paper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = "xyz"
    extent = (low[axes[0]], high[axes[0]], low[axes[1]], high[axes[1]])
    limit = float(np.abs(values).max()) or sigma
    figure, ax = plt.subplots(figsize=(6, 5), dpi=120)
    shown = ax.imshow(values, origin="lower", extent=extent, cmap="RdBu_r", vmin=-limit, vmax=limit)
    if values.min() < 0 < values.max():
        ax.contour(values, levels=[0.0], colors="black", linewidths=1.0, origin="lower", extent=extent)
    ax.set_xlabel(labels[axes[0]])
    ax.set_ylabel(labels[axes[1]])
    ax.set_title(f"weak SDF, {name} plane (sigma = {sigma:g}; saturates at ±2.5 sigma)")
    figure.colorbar(shown, ax=ax, label="scene units (positive outside)")
    figure.savefig(path, format="png", bbox_inches="tight")
    plt.close(figure)


Commands = Union[
    Annotated[ExportMesh, tyro.conf.subcommand(name="mesh")],
    Annotated[ExportSdf, tyro.conf.subcommand(name="sdf")],
    Annotated[ExportSlices, tyro.conf.subcommand(name="slices")],
]


def entrypoint() -> None:
    """Command-line entry point."""
    from rs_nerfstudio.cli import run_command

    run_command("rs-export", tyro.cli(Commands).main, "--resolution")  # type: ignore[union-attr]


if __name__ == "__main__":
    entrypoint()
