"""Ray sampling from the explicit geometry, without CUDA.

nerfacc's occupancy-grid sampler is CUDA-only, and an MLP proposal network is slow on a CPU. The grid already says
where the surface is, so we march each ray through the scene box in steps of at most a voxel, skip voxels that an
empty-space mask rules out, read the smoothed occupancy where it does not (interpolated, or the voxel's own value),
and composite those coarse opacities into weights. A cheaper march over cells of 2 voxels first cuts each ray's march
to the stretch near matter (:func:`bins_near_matter`).
The final samples are drawn from that distribution by inverse-CDF sampling (plus a small uniform share, so that
geometry can still appear where there is none yet), and returned as nerfstudio ``RaySamples`` for its renderers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from jaxtyping import Bool, Float, Int
from nerfstudio.cameras.rays import RayBundle, RaySamples
from torch import Tensor

from rs_nerfstudio import grid as grids

SEEN_THROUGH_TRANSMITTANCE = 0.5
"""A voxel counts as seen through by a ray when more than this share of the ray's light is left after it. At 0.1, a
thin shell of soft matter let enough light into the space behind it to keep that space from being filled: the
sphere of benchmarks/scene_geometry.py kept pockets inside it, and inner surfaces (F@1% 0.76 against 0.999)."""


NOTHING_SEEN = 1e-8
"""A ray whose coarse march composites less opacity than this saw nothing: its samples are spread uniformly over
its bins (under `clip_march` it has one, of zero length, at its entry), and training does not read them."""
COARSE_ACCUMULATION = "coarse_accumulation"
"""Key of the samples' metadata that holds each ray's accumulated opacity in the coarse march, ``[..., 1, 1]``."""


@dataclass
class RayVisibility:
    """What training rays saw of each voxel: light passed through it, or rays reached it only behind matter.

    Hidden space, reached but never seen through, is what the images cannot tell apart from matter (a solid's inside,
    an underside no camera faces); space no ray reached at all (outside every view) is neither.
    """

    seen_through: Bool[Tensor, "D H W"]
    """Voxels some ray left with more than half of its light (SEEN_THROUGH_TRANSMITTANCE)."""
    behind_matter: Optional[Bool[Tensor, "D H W"]] = None
    """None when only what rays saw through is wanted (the "sealed" fill rule): one index write per batch less."""
    batches: int = 0
    """Ray batches recorded."""

    @classmethod
    def empty(cls, shape: Tuple[int, ...], device: torch.device, behind_matter: bool = True) -> "RayVisibility":
        grid = lambda: torch.zeros(shape, dtype=torch.bool, device=device)  # noqa: E731
        return cls(grid(), grid() if behind_matter else None)

    def record(self, flat_index: Tensor, inside: Tensor, light_left: Tensor) -> None:
        """One batch of marches: ``flat_index`` of each march point's voxel, whether it is in the box, and the
        share of its ray's light left after it."""
        through = light_left > SEEN_THROUGH_TRANSMITTANCE
        self.seen_through.view(-1)[flat_index[inside & through]] = True
        if self.behind_matter is not None:
            self.behind_matter.view(-1)[flat_index[inside & ~through]] = True
        self.batches += 1

    @property
    def hidden(self) -> Bool[Tensor, "D H W"]:
        if self.behind_matter is None:
            raise ValueError("this RayVisibility does not record what rays reached behind matter")
        return self.behind_matter & ~self.seen_through


def intersect_aabb(
    origins: Float[Tensor, "R 3"], directions: Float[Tensor, "R 3"], aabb: Float[Tensor, "2 3"]
) -> Tuple[Float[Tensor, "R"], Float[Tensor, "R"]]:
    """Entry and exit distances of each ray through the box (slab method), from the origin on for a camera inside
    it; t_far == t_near for rays that miss."""
    safe = torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t_low = (aabb[0] - origins) / safe
    t_high = (aabb[1] - origins) / safe
    t_near = torch.minimum(t_low, t_high).amax(dim=-1).clamp_min(0.0)
    t_far = torch.maximum(t_low, t_high).amin(dim=-1)
    return t_near, torch.maximum(t_far, t_near)


def within_near_far(
    t_near: Float[Tensor, "R"], t_far: Float[Tensor, "R"], ray_bundle: RayBundle
) -> Tuple[Float[Tensor, "R"], Float[Tensor, "R"]]:
    """The chords cut to the bundle's ``nears``/``fars`` where it has them: a near/far collider's
    (``--pipeline.model.enable-collider``), or the viewer's crop box, whose rays nerfstudio makes with the box's entry
    and exit as ``nears``/``fars``. A chord cut away entirely is empty (t_far == t_near)."""
    if ray_bundle.nears is not None:
        t_near = torch.maximum(t_near, ray_bundle.nears.reshape(-1).to(t_near))
    if ray_bundle.fars is not None:
        t_far = torch.minimum(t_far, ray_bundle.fars.reshape(-1).to(t_far))
    return t_near, torch.maximum(t_far, t_near)


def empty_space_mask(occupancy_grid: Float[Tensor, "D H W"], threshold: float) -> Bool[Tensor, "D H W"]:
    """Voxels that may hold matter: occupancy above ``threshold`` in the voxel or one of its 26 neighbours.

    The dilation keeps voxels whose trilinear neighbourhood touches matter, so skipping the rest loses nothing that
    interpolation would see. It is a 3x3x3 max-pool of the thresholded grid, done as one-byte ORs along each axis in
    turn: ``F.max_pool3d`` on the float grid took 164 ms for 128^3 on 2 CPU cores, several times longer.
    """
    return dilate(occupancy_grid > threshold)


def opaque_interior(occupancy_grid: Float[Tensor, "D H W"], threshold: float) -> Bool[Tensor, "D H W"]:
    """Voxels deep inside matter: occupancy above ``threshold`` in the voxel and all 26 neighbours, off the box's faces.

    A ray marched at one-voxel steps passes through the cell of one of the opaque neighbours before it gets there and
    stops in that layer, so the march can skip these as it skips empty space. Once hidden space is filled, they are
    most of a solid.
    """
    around_open = dilate(occupancy_grid <= threshold)
    for axis in range(3):  # a ray can enter from outside the box: its faces are next to open space
        around_open.narrow(axis, 0, 1).fill_(True)
        around_open.narrow(axis, around_open.shape[axis] - 1, 1).fill_(True)
    return ~around_open


def dilate(mask: Bool[Tensor, "D H W"]) -> Bool[Tensor, "D H W"]:
    """3x3x3 binary dilation (out of the grid counts as False), as one-byte ORs along each axis in turn."""
    for axis in range(3):
        size = mask.shape[axis]
        if size < 2:
            continue
        dilated = mask.clone()
        dilated.narrow(axis, 1, size - 1).logical_or_(mask.narrow(axis, 0, size - 1))
        dilated.narrow(axis, 0, size - 1).logical_or_(mask.narrow(axis, 1, size - 1))
        mask = dilated
    return mask


SKIP_BLOCK = 2
"""Side, in voxels, of the cells of the coarse grid that clips each ray's march to the stretch near matter."""


def block_mask(mask: Bool[Tensor, "D H W"], block: int = SKIP_BLOCK) -> Bool[Tensor, "d h w"]:
    """Cells of ``block``^3 voxels (the last ones cut short) that hold a voxel of ``mask`` or touch a cell that does.

    Any point within ``block`` voxels (in each axis) of a voxel of ``mask`` lies in one of them.
    """
    depth, height, width = mask.shape
    pad = [(-n) % block for n in (width, height, depth)]
    padded = torch.nn.functional.pad(mask, (0, pad[0], 0, pad[1], 0, pad[2]))
    d, h, w = (n // block for n in padded.shape)
    cells = padded.reshape(d, block, h, block, w, block).any(dim=5).any(dim=3).any(dim=1)
    return dilate(cells)


def bins_near_matter(
    origins: Float[Tensor, "R 3"],
    directions: Float[Tensor, "R 3"],
    t_near: Float[Tensor, "R"],
    t_far: Float[Tensor, "R"],
    step: float,
    mask: Bool[Tensor, "D H W"],
    cells: Bool[Tensor, "d h w"],
    aabb: Float[Tensor, "2 3"],
    block: int = SKIP_BLOCK,
) -> Tuple[Int[Tensor, "R"], Int[Tensor, "R"]]:
    """For each ray's march through the box (:meth:`PackedMarch.through_box` with ``step``), the range of its bins,
    ``[low, high)``, that may meet a voxel of ``mask``; ``low == high`` where none can. A cheaper march of ``cells``
    (:func:`block_mask`) at steps of two cells finds it.

    On Lego 200 px, 60% of a batch's rays meet no voxel that the empty-space mask keeps, and the stretch between the
    first and the last one a ray meets holds 27% of the bins of the whole chords. No bin whose midpoint lies in a voxel
    of ``mask`` is left out: that midpoint lies within one cell of a point of the cheaper march, in that point's cell
    or one next to it, which ``cells`` holds. The bins kept are the whole march's own, so what the march reads in them
    is unchanged.

    What the march records for the fills (:class:`RayVisibility`) loses the empty space far from matter. That space
    is joined to the box's faces, so it is never a sealed cavity: the "sealed" rule fills the same. The "hidden" rule
    needs it (space seen through beside an object is not hidden behind it), so its marches are not clipped.
    """
    voxel = grids.voxel_size(aabb, mask.shape)
    cell = voxel * block
    cells_box = torch.stack([aabb[0], aabb[0] + cell * torch.tensor(cells.shape[::-1], device=aabb.device)])
    cheap_step = 2.0 * block * float(voxel.min())
    march = PackedMarch.through_box(t_near, t_far, cheap_step)
    mids, points = march.midpoints(origins, directions)
    flat_index, inside = grids.nearest_voxel_index(points, cells_box, cells.shape)
    near_matter = inside & cells.reshape(-1)[flat_index]
    num_rays = t_near.shape[0]
    ray, t = march.ray[near_matter], mids[near_matter]
    start = torch.full((num_rays,), float("inf"), device=t.device).scatter_reduce(0, ray, t, "amin")
    end = torch.full((num_rays,), -float("inf"), device=t.device).scatter_reduce(0, ray, t, "amax")
    bins = PackedMarch.bins_per_ray(t_near, t_far, step)
    length = ((t_far - t_near) / bins).clamp_min(1e-12)
    half = 0.5 * cheap_step
    low = torch.floor((start - half - t_near) / length).clamp_(min=0).nan_to_num_(0, 0, 0).long()
    high = torch.ceil((end + half - t_near) / length).nan_to_num_(0, 0, 0).long()
    high = torch.minimum(high, bins).clamp_(min=0)
    return low.clamp_(max=high), high


@dataclass
class PackedMarch:
    """The coarse march of a batch of rays, packed: each ray's bins one after another, as many as its chord needs.

    A dense ``[R, B]`` march gives every ray as many bins as the longest chord in the batch needs. On Lego's fitted
    box that was 167 against a mean of 54 one-voxel steps, so most rays were read every third of a voxel, at three
    times the cost. Packing took Lego 200 px from 182 to 157 ms per training step, measured back to back with
    ``benchmarks/ablate.py --seconds 90``.
    """

    ray: Tensor
    """``[P]`` the ray each bin belongs to (sorted)."""
    starts: Tensor
    """``[P]`` distance along the ray where each bin starts."""
    ends: Tensor
    """``[P]`` where it ends; a ray's bins are of equal length, at most one coarse step."""
    first: Tensor
    """``[R]`` index of each ray's first bin."""
    counts: Tensor
    """``[R]`` bins per ray, at least one (of length 0 for a ray that misses the box)."""

    @staticmethod
    def bins_per_ray(t_near: Float[Tensor, "R"], t_far: Float[Tensor, "R"], step: float) -> Int[Tensor, "R"]:
        """How many equal bins of at most ``step`` each chord takes (at least one)."""
        return torch.ceil((t_far - t_near) / step).long().clamp_min(1)

    @classmethod
    def through_box(
        cls,
        t_near: Float[Tensor, "R"],
        t_far: Float[Tensor, "R"],
        step: float,
        span: Optional[Tuple[Int[Tensor, "R"], Int[Tensor, "R"]]] = None,
    ) -> "PackedMarch":
        """The march of each chord in equal bins of at most ``step``; with ``span``, only its bins ``[low, high)``
        (one bin of length 0 where ``low == high``)."""
        chord = t_far - t_near
        counts = cls.bins_per_ray(t_near, t_far, step)
        length = chord / counts
        low = torch.zeros_like(counts)
        if span is not None:
            low, high = span
            length = torch.where(high > low, length, torch.zeros_like(length))
            counts = (high - low).clamp_min(1)
        first = torch.cumsum(counts, dim=0) - counts
        ray = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
        index_in_ray = torch.arange(ray.shape[0], device=ray.device) - first[ray] + low[ray]
        bin_length = length[ray]
        starts = t_near[ray] + index_in_ray * bin_length
        return cls(ray, starts, starts + bin_length, first, counts)

    def midpoints(
        self, origins: Float[Tensor, "R 3"], directions: Float[Tensor, "R 3"]
    ) -> Tuple[Float[Tensor, "P"], Float[Tensor, "P 3"]]:
        """Each bin's middle: its distance along the ray and the world point there."""
        mids = 0.5 * (self.starts + self.ends)
        return mids, torch.addcmul(origins[self.ray], directions[self.ray], mids[:, None])

    @property
    def last(self) -> Tensor:
        """``[R]`` index of each ray's last bin."""
        return self.first + self.counts - 1

    def cumsum_in_rays(self, values: Float[Tensor, "P"]) -> Tuple[Float[Tensor, "P"], Float[Tensor, "P"]]:
        """Sums of ``values`` along each ray, inclusive and exclusive of each bin, in float64 (one pass over all)."""
        inclusive = torch.cumsum(values.double(), dim=0)
        exclusive = inclusive - values.double()
        ray_start = exclusive[self.first][self.ray]
        return inclusive - ray_start, exclusive - ray_start


def sample_packed_pdf(
    march: PackedMarch, weights: Float[Tensor, "P"], num_edges: int, stratified: bool
) -> Float[Tensor, "R num_edges"]:
    """Inverse-CDF sampling of ``num_edges`` sorted distances per ray from the weights of its packed bins.

    The quantiles are systematic: ``u_k = (k + r) / num_edges`` with one offset r per ray, at random when
    ``stratified``, else 1/2 (the strata's midpoints). Then how many of a ray's quantiles fall below a CDF value c is
    ``ceil(c num_edges - r)``, so each bin's share of the samples follows from its CDF without a search, and
    ``repeat_interleave`` hands every sample its bin. Each ray's weights must have a positive sum.
    """
    num_rays = march.first.shape[0]
    last = march.last
    cdf_end, cdf_start = march.cumsum_in_rays(weights)
    scale = (num_edges / cdf_end[last].clamp_min(1e-30))[march.ray]  # CDF values in units of one stratum
    if stratified:
        offsets = torch.rand(num_rays, dtype=torch.float64, device=weights.device)
    else:
        offsets = torch.full((num_rays,), 0.5, dtype=torch.float64, device=weights.device)
    below_end = torch.ceil(cdf_end * scale - offsets[march.ray]).clamp_(0, num_edges).long()
    below_end[last] = num_edges
    below_start = torch.cat([below_end.new_zeros(1), below_end[:-1]])
    below_start[march.first] = 0  # so that every ray gets exactly num_edges, whatever the rounding
    bin_of_sample = torch.repeat_interleave(torch.arange(weights.shape[0], device=weights.device),
                                            below_end - below_start)  # fmt: skip
    quantile = torch.arange(num_edges, device=weights.device, dtype=torch.float64).repeat(num_rays)
    quantile += offsets.repeat_interleave(num_edges)
    low, high = cdf_start[bin_of_sample] * scale[bin_of_sample], cdf_end[bin_of_sample] * scale[bin_of_sample]
    fraction = ((quantile - low) / (high - low).clamp_min(1e-12)).clamp_(0.0, 1.0).float()
    starts, ends = march.starts[bin_of_sample], march.ends[bin_of_sample]
    return (starts + fraction * (ends - starts)).reshape(num_rays, num_edges)


class OccupancyGuidedSampler:
    """Samples rays where the smoothed occupancy says the surface is.

    Args:
        num_samples: samples per ray handed to the field.
        coarse_step: longest coarse marching step, in voxels (each ray divides its chord into equal bins).
        uniform_fraction: share of the sampling distribution spread uniformly along the ray while training.
        interpolate: the march interpolates the smoothed occupancy at each point; False reads the voxel holding it.
        clip: march each ray only where it may meet a voxel of the empty-space mask (:func:`bins_near_matter`), but
            when the march records what rays reach behind matter.
    """

    def __init__(
        self,
        num_samples: int = 32,
        coarse_step: float = 1.0,
        uniform_fraction: float = 0.05,
        interpolate: bool = True,
        clip: bool = True,
    ) -> None:
        self.num_samples = num_samples
        self.coarse_step = coarse_step
        self.uniform_fraction = uniform_fraction
        self.interpolate = interpolate
        self.clip = clip
        self._cells: Optional[Tuple[Tensor, Tensor]] = None
        """The last mask seen and its :func:`block_mask`, made again when the mask changes."""

    def cells_of(self, mask: Bool[Tensor, "D H W"]) -> Bool[Tensor, "d h w"]:
        """:func:`block_mask` of ``mask``, kept while the same mask comes back (it is refreshed every few steps)."""
        if self._cells is None or self._cells[0] is not mask:
            self._cells = (mask, block_mask(mask))
        return self._cells[1]

    @torch.no_grad()
    def coarse_weights(
        self,
        ray_bundle: RayBundle,
        smoothed_grid: Float[Tensor, "D H W"],
        mask: Bool[Tensor, "D H W"],
        aabb: Float[Tensor, "2 3"],
        voxel_length: float,
        density_fn: Callable[[Tensor], Tensor],
        *,
        visibility: Optional[RayVisibility] = None,
    ) -> Tuple[PackedMarch, Float[Tensor, "P"], Float[Tensor, "R"]]:
        """The packed coarse march of each ray through the box, its bins' compositing weights and each ray's total
        opacity (the sum of its weights); the march is recorded in ``visibility`` when one is given."""
        origins = ray_bundle.origins.reshape(-1, 3)
        directions = ray_bundle.directions.reshape(-1, 3)
        t_near, t_far = within_near_far(*intersect_aabb(origins, directions, aabb), ray_bundle)
        step = self.coarse_step * voxel_length
        span = None
        if self.clip and (visibility is None or visibility.behind_matter is None):
            span = bins_near_matter(origins, directions, t_near, t_far, step, mask, self.cells_of(mask), aabb)
        march = PackedMarch.through_box(t_near, t_far, step, span)
        mids, points = march.midpoints(origins, directions)
        flat_index, inside = grids.nearest_voxel_index(points, aabb, mask.shape)
        keep = inside & mask.reshape(-1)[flat_index]
        optical_depth = torch.zeros_like(mids)
        if keep.any():
            if self.interpolate:
                # A surface lies anywhere between voxel centres; the voxel's own value is up to ~0.9 voxel off and can
                # put all of a ray's samples in front of the surface or behind it.
                smoothed = grids.interpolate(smoothed_grid[..., None], points[keep], aabb)[:, 0]
            else:
                smoothed = smoothed_grid.reshape(-1)[flat_index[keep]]
            optical_depth[keep] = density_fn(smoothed) * (march.ends - march.starts)[keep]
        depth_after, depth_before = march.cumsum_in_rays(optical_depth)
        light_left = torch.exp(-depth_after).float()
        if visibility is not None:
            visibility.record(flat_index, inside, light_left)
        weights = torch.exp(-depth_before).float() * -torch.expm1(-optical_depth)
        total = -torch.expm1(-depth_after[march.last]).float()  # the light the ray lost in all
        return march, weights, total

    @torch.no_grad()
    def __call__(
        self,
        ray_bundle: RayBundle,
        smoothed_grid: Float[Tensor, "D H W"],
        mask: Bool[Tensor, "D H W"],
        aabb: Float[Tensor, "2 3"],
        voxel_length: float,
        density_fn: Callable[[Tensor], Tensor],
        *,
        training: bool = True,
        visibility: Optional[RayVisibility] = None,
    ) -> RaySamples:
        """Samples for each ray; ``density_fn`` maps smoothed occupancy to volume density; the coarse march is recorded
        in ``visibility`` when one is given."""
        march, weights, total = self.coarse_weights(
            ray_bundle, smoothed_grid, mask, aabb, voxel_length, density_fn, visibility=visibility
        )
        uniform = self.uniform_fraction if training else 0.0
        # Rays that see nothing fall back to uniform samples over their chord (a ray's bins are of equal length).
        spread = (uniform + (total < NOTHING_SEEN).float()) / march.counts
        pdf = ((1.0 - uniform) / total.clamp_min(NOTHING_SEEN))[march.ray] * weights + spread[march.ray]
        edges = sample_packed_pdf(march, pdf, self.num_samples + 1, stratified=training)
        edges = edges.reshape(*ray_bundle.shape, self.num_samples + 1)
        samples = ray_bundle.get_ray_samples(bin_starts=edges[..., :-1, None], bin_ends=edges[..., 1:, None])
        samples.metadata = {**(samples.metadata or {}), COARSE_ACCUMULATION: total.reshape(*ray_bundle.shape, 1, 1)}
        return samples
