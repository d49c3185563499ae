"""The rs-sdf field: a smoothed occupancy grid for geometry, a feature grid and a tiny MLP for colour.

Geometry is one learnable dense grid of logits; its sigmoid is the base occupancy classifier f_theta. Randomized
smoothing blurs it into f_hat, from which everything else follows per sample (:mod:`rs_nerfstudio.sdf`): the weak
SDF, the occupancy G and the density. Colour comes from a feature grid and small MLPs that also
see the view direction (an ensemble of a few, :mod:`rs_nerfstudio.colour`): cheap on a CPU.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from jaxtyping import Float
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.base_field import Field
from nerfstudio.utils.math import components_from_spherical_harmonics
from torch import Tensor, nn

from rs_nerfstudio import grid as grids
from rs_nerfstudio.colour import ColourHeads
from rs_nerfstudio.sdf import DEFAULT_CLAMP, density_from_occupancy, level_threshold, occupancy, weak_sdf
from rs_nerfstudio.smoothing import gaussian_blur_3d

BOX_SIGMA_VOXELS = 0.5
"""Least sigma, in voxels, at which the box is fitted: at 0.5 one voxel of matter alone blurs to a peak of 0.487."""
FEATURE_STD = 0.1
"""Spread of the colour features at the start. Lego 200 px trained from zeros read the same (benchmarks/ablate.py,
300 s: 31.39 dB on its probe, against 31.53 and 31.22 for two runs of the defaults)."""


class RSSDFField(Field):
    """Randomized-smoothing SDF field over an axis-aligned scene box.

    Args:
        aabb: scene box, ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]``.
        resolution: geometry voxels along the box's longest side.
        sigma: smoothing noise level, in scene units.
        steepness: alpha of G = sigmoid(alpha (f_hat - 1/2)).
        density_eps: epsilon of the density activation.
        initial_occupancy: base occupancy everywhere at the start (a faint fog that gradients can shape).
        appearance_resolution: colour-feature voxels along the longest side.
        initial_scale: both grids start at this fraction of their resolutions, until :meth:`resample_to_box`.
        appearance_dim: colour features per voxel for each colour head.
        hidden_dim: width of the colour MLPs.
        sh_levels: spherical-harmonic levels of the view-direction encoding (0 = view-independent colour).
        colour_heads: colour decoders, each with its own features and MLP; the rendered colour is their mean.
        stagger_colour: shift head k's feature grid by k / colour_heads of a colour voxel along every axis.
    """

    def __init__(
        self,
        aabb: Float[Tensor, "2 3"],
        resolution: int = 128,
        sigma: float = 0.019,
        steepness: float = 30.0,
        density_eps: float = 1e-3,
        initial_occupancy: float = 0.3,
        appearance_resolution: int = 128,
        appearance_dim: int = 12,
        hidden_dim: int = 64,
        sh_levels: int = 3,
        initial_scale: float = 1.0,
        colour_heads: int = 2,
        stagger_colour: bool = False,
    ) -> None:
        super().__init__()
        self.register_buffer("aabb", aabb.detach().clone().float())
        self.resolution = resolution
        self.appearance_resolution = appearance_resolution
        self.grid_shape = grids.grid_shape_for_box(self.aabb, max(2, round(resolution * initial_scale)))
        self.register_buffer("voxel", grids.voxel_size(self.aabb, self.grid_shape))
        self.sigma = float(sigma)
        self.render_sigma: Optional[float] = None
        """A sigma for rendering only (the viewer's slider); training always uses `sigma`."""
        self.render_level = 0.0
        """The weak-SDF level rendered as the surface outside training (the viewer's slider)."""
        self.steepness = float(steepness)
        self.density_eps = float(density_eps)
        init_logit = math.log(initial_occupancy / (1.0 - initial_occupancy))
        self.base_logits = nn.Parameter(torch.full(self.grid_shape, init_logit))

        self.appearance_shape = grids.grid_shape_for_box(self.aabb, max(2, round(appearance_resolution * initial_scale)))
        features = FEATURE_STD * torch.randn(*self.appearance_shape, appearance_dim * colour_heads)
        self.features = nn.Parameter(features)
        self.sh_levels = sh_levels
        self.colour_mlp = ColourHeads(colour_heads, appearance_dim, sh_levels**2, hidden_dim)
        self.stagger_colour = bool(stagger_colour)
        self.register_buffer("colour_stagger", torch.tensor(float(stagger_colour)))
        """`stagger_colour` in the state dict, because a checkpoint renders as it was trained."""
        self._smoothed_cache: Optional[Tuple[Tuple, Tensor]] = None
        self.generation = 0
        """Training forwards so far (see :meth:`parameters_key`)."""

    # ----- the box the grids cover ---------------------------------------------------------------------------------
    @torch.no_grad()
    def occupied_box(self, margin: float) -> Optional[Float[Tensor, "2 3"]]:
        """The box around every voxel inside the surface (f_hat > 1/2), grown by ``margin`` scene units and clipped
        to the current box; None while nothing is inside.

        f_hat is taken at a sigma of at least half a voxel, where one voxel of matter alone is not inside (the peak of
        its blur is below 1/2): at a sigma far below the voxel, the blur is the identity and every speck of fog that
        crossed 1/2 would stretch the box to the scene's edges.
        """
        sigma = max(self.sigma, BOX_SIGMA_VOXELS * self.voxel_length)
        inside = self.smoothed_occupancy_grid(sigma) > 0.5
        if not inside.any():
            return None
        cells = inside.nonzero().flip(-1).to(self.aabb.dtype)  # (x, y, z) voxel indices
        low = self.aabb[0] + cells.amin(dim=0) * self.voxel - margin
        high = self.aabb[0] + (cells.amax(dim=0) + 1.0) * self.voxel + margin
        return torch.stack([torch.maximum(low, self.aabb[0]), torch.minimum(high, self.aabb[1])])

    @torch.no_grad()
    def resample_to_box(self, aabb: Float[Tensor, "2 3"]) -> None:
        """Move both grids onto ``aabb`` at their full resolutions along its longest side, interpolating their values.

        The grids become new parameters (autograd keeps the old ones' shapes): an optimizer must be handed the new
        ones (see :meth:`RSSDFModel.fit_box`).
        """
        aabb = aabb.to(self.aabb)
        shape = grids.grid_shape_for_box(aabb, self.resolution)
        centres = grids.grid_coords_of_nodes(aabb, shape).reshape(-1, 3)
        logits = grids.interpolate(self.base_logits[..., None], centres, self.aabb).reshape(shape)
        appearance_shape = grids.grid_shape_for_box(aabb, self.appearance_resolution)
        centres = grids.grid_coords_of_nodes(aabb, appearance_shape).reshape(-1, 3)
        offsets = None
        if self.staggered:  # head k's new voxel v holds the old head k at v's centre minus its new offset
            offsets = self.colour_offsets - self._offsets(grids.voxel_size(aabb, appearance_shape))
        features = grids.interpolate(self.features, centres, self.aabb, offsets)
        self._set_grids(aabb, logits, features.reshape(*appearance_shape, -1), new_parameters=True)

    def _set_grids(self, aabb: Tensor, logits: Tensor, features: Tensor, new_parameters: bool) -> None:
        self.aabb.copy_(aabb)
        self.grid_shape = tuple(logits.shape)  # type: ignore[assignment]
        self.appearance_shape = tuple(features.shape[:3])  # type: ignore[assignment]
        self.voxel.copy_(grids.voxel_size(self.aabb, self.grid_shape))
        if new_parameters:
            self.base_logits = nn.Parameter(logits.contiguous())
            self.features = nn.Parameter(features.contiguous())
        else:  # same objects, so that optimizers made before a checkpoint is loaded keep holding them
            for parameter, value in ((self.base_logits, logits), (self.features, features)):
                parameter.data = value.contiguous()
                parameter.grad = None
        self._smoothed_cache = None
        self.generation += 1

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        """A checkpoint whose box was fitted holds grids of other shapes than a new field's: take its shapes first.
        One from before staggered colour grids was trained with aligned ones. A state without the field's grids is
        left alone: nerfstudio's Pipeline.load_state_dict loads the model, then passes every module its non-model
        keys, none of the field's."""
        if prefix + "aabb" in state_dict:
            stagger = state_dict.setdefault(prefix + "colour_stagger", torch.tensor(0.0))
            self.stagger_colour = bool(stagger)
        names = [prefix + name for name in ("aabb", "base_logits", "features")]
        if all(name in state_dict for name in names):
            aabb, logits, features = (state_dict[name] for name in names)
            if logits.shape != self.base_logits.shape or features.shape != self.features.shape:
                with torch.no_grad():
                    self._set_grids(
                        aabb.to(self.aabb),
                        torch.empty(logits.shape, device=self.aabb.device),
                        torch.empty(features.shape, device=self.aabb.device),
                        new_parameters=False,
                    )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----- geometry -------------------------------------------------------------------------------------------
    @property
    def voxel_length(self) -> float:
        """The smallest voxel side, in scene units."""
        return float(self.voxel.min())

    @property
    def density_scale(self) -> float:
        """Density per unit length: 1 / voxel, so a voxel-long segment has opacity ~ G."""
        return 1.0 / self.voxel_length

    @property
    def active_sigma(self) -> float:
        """sigma in use: the render-only one outside training when set, else the trained one."""
        return self.render_sigma if (self.render_sigma is not None and not self.training) else self.sigma

    @property
    def active_threshold(self) -> float:
        """The f_hat rendered as the surface: 1/2 (the zero level) in training, the viewer's level otherwise."""
        if self.training or self.render_level == 0.0:
            return 0.5
        return level_threshold(self.render_level, self.active_sigma)

    @property
    def active_steepness(self) -> float:
        """alpha, scaled for the viewer's iso-level so that G leaves empty space (f_hat = 0) and solid matter (f_hat =
        1) as empty and as solid as at the zero level: at the level +1.5 sigma (f_hat = 0.067) alpha itself would
        give empty space G = sigmoid(-30 * 0.067) = 0.12, a fog. Levels past the weak SDF's saturation (2.5 sigma)
        are held there: their threshold rounds to 0 or 1."""
        threshold = self.active_threshold
        return self.steepness * 0.5 / max(min(threshold, 1.0 - threshold), DEFAULT_CLAMP)

    def sigma_voxels(self, sigma: Optional[float] = None) -> Tuple[float, float, float]:
        """sigma in voxels along (D, H, W) = (z, y, x)."""
        sigma = self.active_sigma if sigma is None else sigma
        return tuple(float(sigma / v) for v in self.voxel.flip(0))  # type: ignore[return-value]

    def base_occupancy_grid(self) -> Float[Tensor, "D H W"]:
        """f_theta on the voxel centres, in [0, 1]."""
        return torch.sigmoid(self.base_logits)

    def smoothed_occupancy_grid(self, sigma: Optional[float] = None) -> Float[Tensor, "D H W"]:
        """f_hat = f_theta * N(0, sigma^2 I) on the voxel centres.

        Recomputed whenever gradients flow (training); otherwise cached until the parameters or sigma change (see
        :meth:`parameters_key`), so the viewer and evaluation blur once per training step at most.
        """
        sigma = self.active_sigma if sigma is None else float(sigma)
        if torch.is_grad_enabled() and self.base_logits.requires_grad:
            self.generation += 1  # an optimizer step follows: whatever was cached is about to be stale
            return gaussian_blur_3d(self.base_occupancy_grid(), self.sigma_voxels(sigma))
        key = self.parameters_key() + (sigma,)
        if self._smoothed_cache is None or self._smoothed_cache[0] != key:
            with torch.no_grad():
                smoothed = gaussian_blur_3d(self.base_occupancy_grid(), self.sigma_voxels(sigma))
            self._smoothed_cache = (key, smoothed)
        return self._smoothed_cache[1]

    def parameters_key(self) -> Tuple:
        """Changes whenever the base grid may have changed: a cache key for what is computed from it.

        The version counter alone is not enough: torch's fused Adam updates parameters in place without bumping it.
        ``generation`` counts the training forwards (each is followed by an optimizer step); the version counter and
        the storage catch ``load_state_dict`` and other in-place edits.
        """
        logits = self.base_logits
        return (self.generation, logits._version, logits.data_ptr(), logits.device)

    def clear_smoothing_cache(self) -> None:
        """Forget the cached smoothed grid (to time a fresh blur, say)."""
        self._smoothed_cache = None

    @torch.no_grad()
    def make_solid(self, region: Tensor, occupancy: float = 0.99) -> int:
        """Voxels of ``region`` whose base occupancy is below ``occupancy`` get ``occupancy``; returns how many.

        For space the images leave free (see ``RSSDFModelConfig.fill_rule``): no ray reaches it with light left, so
        it keeps its initial fog or drifts, which makes inner shells and a soft inside. Filling it makes the
        classifier, its weak SDF and the mesh those of a solid object.
        """
        logit = math.log(occupancy / (1.0 - occupancy))
        region = region & (self.base_logits < logit)
        count = int(region.sum())
        if count:
            self.base_logits[region] = logit
            self.generation += 1
        return count

    def base_occupancy(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N"]:
        """The base classifier f_theta at world points (trilinear; outside the box, the border voxels' value:
        callers mask what lies outside)."""
        return grids.interpolate(self.base_occupancy_grid()[..., None], points, self.aabb)[:, 0]

    def smoothed_occupancy(
        self, points: Float[Tensor, "N 3"], smoothed_grid: Optional[Tensor] = None
    ) -> Float[Tensor, "N"]:
        """f_hat at world points, interpolated from the smoothed grid."""
        grid = self.smoothed_occupancy_grid() if smoothed_grid is None else smoothed_grid
        return grids.interpolate(grid[..., None], points, self.aabb)[:, 0]

    def weak_sdf(self, points: Float[Tensor, "N 3"], smoothed_grid: Optional[Tensor] = None) -> Float[Tensor, "N"]:
        """sigma * Phi^-1(1 - f_hat): the certified distance to the surface, positive outside."""
        return weak_sdf(self.smoothed_occupancy(points, smoothed_grid), self.active_sigma)

    def occupancy_from_smoothed(self, smoothed: Tensor) -> Tensor:
        """G = sigmoid(alpha (f_hat - threshold)), threshold 1/2 but for the viewer's iso-level."""
        return occupancy(smoothed, self.active_steepness, self.active_threshold)

    def density_from_smoothed(self, smoothed: Tensor) -> Tensor:
        """Volume density from f_hat, through G."""
        return density_from_occupancy(self.occupancy_from_smoothed(smoothed), self.density_scale, self.density_eps)

    def forward_geonetwork(self, points: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 1"]:
        """The weak SDF in column 0, as nerfstudio's SDF tools (``ns-export marching-cubes``) expect."""
        flat = points.reshape(-1, 3).to(self.aabb.device, torch.float32)
        return self.weak_sdf(flat).reshape(*points.shape[:-1], 1)

    def sdf_gradient(self, points: Float[Tensor, "N 3"], smoothed_grid: Optional[Tensor] = None) -> Tensor:
        """Gradient of the weak SDF by central differences of half a voxel (no autograd graph needed)."""
        grid = self.smoothed_occupancy_grid() if smoothed_grid is None else smoothed_grid
        offsets = torch.diag(self.voxel) * 0.5
        probes = torch.cat([points + offsets[i] for i in range(3)] + [points - offsets[i] for i in range(3)])
        values = weak_sdf(grids.interpolate(grid[..., None], probes, self.aabb)[:, 0], self.active_sigma)
        values = values.reshape(6, -1)
        return ((values[:3] - values[3:]) / self.voxel[:, None]).T

    # ----- appearance -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_appearance(self) -> None:
        """Colour as at the start: small random features and a freshly initialised MLP; geometry is left alone.

        To train colour alone on a given geometry (``benchmarks/ablate.py --reset-colour``)."""
        self.features.normal_(0.0, FEATURE_STD)
        self.colour_mlp.reset_parameters()

    @property
    def staggered(self) -> bool:
        """Whether the colour heads read feature grids offset from one another (:attr:`colour_offsets`)."""
        return self.stagger_colour and self.colour_mlp.heads > 1

    def _offsets(self, colour_voxel: Float[Tensor, "3"]) -> Float[Tensor, "K 3"]:
        heads = self.colour_mlp.heads
        steps = torch.arange(heads, dtype=colour_voxel.dtype, device=colour_voxel.device) / heads
        return steps[:, None] * colour_voxel

    @property
    def colour_offsets(self) -> Optional[Float[Tensor, "K 3"]]:
        """Where head k reads its feature grid: at a point shifted by k / heads of a colour voxel along x, y and z;
        None while the heads are aligned. The heads' trilinear interpolation then errs in different places, and their
        mean is smoother than any one (docs/experiments.md, "Staggered colour grids")."""
        if not self.staggered:
            return None
        return self._offsets(grids.voxel_size(self.aabb, self.appearance_shape))

    def appearance_features(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N C"]:
        """Colour features at world points, interpolated from the feature grid (each head's, when staggered)."""
        return grids.interpolate(self.features, points, self.aabb, self.colour_offsets)

    def composite_appearance(
        self, points: Float[Tensor, "N 3"], shares: Float[Tensor, "N"], ray: Tensor, num_rays: int
    ) -> Float[Tensor, "R C"]:
        """Per ray, the colour features at its points weighted by ``shares`` and summed (``points`` sorted by ray)."""
        return grids.composite(self.features, points, shares, ray, num_rays, self.aabb, self.colour_offsets)

    def decode_colour_heads(
        self, features: Float[Tensor, "N C"], directions: Float[Tensor, "N 3"]
    ) -> Float[Tensor, "heads N 3"]:
        """Each colour head's RGB in [0, 1], from colour features and unit view directions."""
        encoding = None
        if self.sh_levels > 0:
            encoding = components_from_spherical_harmonics(self.sh_levels, directions)
        return self.colour_mlp(features, encoding)

    def decode_colour(self, features: Float[Tensor, "N C"], directions: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """RGB in [0, 1]: the mean of the colour heads'."""
        return self.decode_colour_heads(features, directions).mean(dim=0)

    def head_colours(
        self, points: Float[Tensor, "N 3"], directions: Float[Tensor, "N 3"]
    ) -> Float[Tensor, "heads N 3"]:
        """Each colour head's RGB in [0, 1] at world points seen from the given directions."""
        return self.decode_colour_heads(self.appearance_features(points), directions)

    def colour(self, points: Float[Tensor, "N 3"], directions: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        """RGB in [0, 1] at world points seen from the given directions (the heads' mean)."""
        return self.decode_colour(self.appearance_features(points), directions)

    # ----- nerfstudio's Field interface ------------------------------------------------------------------------
    def get_density(self, ray_samples: RaySamples) -> Tuple[Tensor, Tensor]:
        positions = ray_samples.frustums.get_positions()
        smoothed = self.smoothed_occupancy(positions.reshape(-1, 3)).reshape(*positions.shape[:-1], 1)
        return self.density_from_smoothed(smoothed), smoothed

    def get_outputs(
        self, ray_samples: RaySamples, density_embedding: Optional[Tensor] = None
    ) -> Dict[FieldHeadNames, Tensor]:
        positions = ray_samples.frustums.get_positions().reshape(-1, 3)
        directions = ray_samples.frustums.directions.reshape(-1, 3)
        rgb = self.colour(positions, directions).reshape(*ray_samples.frustums.shape, 3)
        outputs = {FieldHeadNames.RGB: rgb}
        if density_embedding is not None:
            outputs[FieldHeadNames.SDF] = weak_sdf(density_embedding, self.active_sigma)
        return outputs
