"""The rs-sdf model: volume rendering of a randomized-smoothing SDF field with nerfstudio's renderers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps
from nerfstudio.viewer.viewer_elements import ViewerSlider
from torch import Tensor, nn

from rs_nerfstudio import grid as grids
from rs_nerfstudio.cpu import keep_freed_memory_for_reuse
from rs_nerfstudio.field import RSSDFField
from rs_nerfstudio.metrics import lpips_if_available
from rs_nerfstudio.optim import decay_by_progress
from rs_nerfstudio.sampler import (
    COARSE_ACCUMULATION,
    NOTHING_SEEN,
    OccupancyGuidedSampler,
    RayVisibility,
    dilate,
    empty_space_mask,
    opaque_interior,
)
from rs_nerfstudio.sdf import weak_sdf

MARCHING_CUBES_NEEDS_CUDA = (
    "error: ns-export marching-cubes needs CUDA (nerfstudio's exporter puts its lattice on the GPU), and this machine "
    "has none; `rs-export mesh --load-config RUN/config.yml --output-dir DIR` meshes the weak SDF on the CPU"
)
"""What ``ns-export marching-cubes`` says on a machine without CUDA (see ``RSSDFModelConfig.sdf_field``)."""


@dataclass
class RSSDFModelConfig(ModelConfig):
    """rs-sdf: a voxel occupancy classifier, randomized smoothing as its SDF, volume-rendered."""

    _target: Type = field(default_factory=lambda: RSSDFModel)
    """The model class this config builds."""
    enable_collider: bool = False
    """Off: rays are clipped to the grids' box, where the grid lives. On, nerfstudio's near/far collider
    (`--pipeline.model.collider-params near_plane N far_plane F`) cuts them to [N, F] as well."""
    grid_resolution: int = 128
    """Geometry voxels along the longest side of the grids' box (the fitted box, see `fit_box_at_step`)."""
    sigma: float = 0.019
    """Randomized-smoothing noise level sigma, in scene units (~1 voxel of the 128-voxel grid on Lego's fitted box).
    It is the weak SDF's scale: |sdf| saturates at 2.5 sigma (`sdf.SATURATION`), and details thinner than ~1.4 sigma
    vanish."""
    steepness: float = 30.0
    """Final alpha of the occupancy G = sigmoid(alpha (f_hat - 1/2)). Higher is a sharper rendered surface (the weak
    SDF's zero level does not depend on it). On Lego 200 px with the interpolated `coarse_read`, raising it from 30 to
    60 over 1000 steps rendered worse: 26.2 / 27.9 dB on 4096 test pixels after 60 / 120 s, against 27.0 / 28.6."""
    initial_steepness: float = 30.0
    """alpha at step 0; it rises geometrically to `steepness` over `steepness_warmup_steps`. Below ~25, empty space
    cannot be empty: G >= sigmoid(-alpha / 2) in every voxel, and that fog adds up along a ray."""
    steepness_warmup_steps: int = 1000
    """Steps over which alpha rises from `initial_steepness` to `steepness`."""
    density_eps: float = 1e-3
    """epsilon of the density -log(1 - (1 - eps) G) / voxel. It caps the density at -log(eps) per voxel (a voxel of
    solid matter lets through eps of the light) and keeps the logarithm finite at G = 1."""
    initial_occupancy: float = 0.3
    """Base occupancy f_theta everywhere at step 0: below 1/2, so space starts as a faint fog (G ~ 0.0025 per voxel
    at alpha = 30) that the gradients can shape."""
    appearance_resolution: int = 128
    """Colour-feature voxels along the longest side of the grids' box."""
    appearance_dim: int = 12
    """Colour features per voxel, for each of the `colour_heads`."""
    hidden_dim: int = 64
    """Width of the colour MLPs."""
    colour_heads: int = 2
    """Colour decoders, each with its own `appearance_dim` features per voxel and its own MLP, trained side by side on
    the same rays, each to fit the pixels alone; the rendered colour is their mean, an ensemble. Colour is what
    over-fits, and independent decoders err differently on unseen views. Lego 200 px, 300 s (benchmarks/ablate.py,
    8 whole test views): two heads 31.04 dB in 3302 steps, one 30.64 in 4206 (docs/experiments.md, "An ensemble of
    colour heads"). A loss on the heads' mean colour alone, as one joint model, scored alike (31.11 dB), and so did
    one head of 24 features (31.02 and 31.03 on two seeds): most of the gain is the features ("How independent the
    heads are")."""
    stagger_colour: bool = False
    """Offset each colour head's feature grid by 1/`colour_heads` of a colour voxel along every axis from the one
    before, so that the heads' interpolation errs in different places and their mean is smoother. Lego 200 px
    (docs/experiments.md, "Staggered colour grids"): +0.14-0.18 dB on the whole test views after 300 s
    (benchmarks/ablate.py, two seeds), a tie after 10 minutes (the harness: 31.57 and 31.62 dB against 31.57); each
    step takes ~20% longer on a CPU."""
    sh_levels: int = 3
    """Spherical-harmonic levels of the view direction fed to the colour MLP (0: view-independent colour)."""
    num_samples: int = 32
    """Samples per ray, drawn where the smoothed occupancy says the surface is."""
    coarse_step: float = 1.0
    """Longest step, in voxels, of the cheap march that places the samples. Above 1 it can step over a thin sheet of
    matter with the voxel read (`coarse_read`), and it leaves voxels out of what the rays saw, which the fills of
    unseen space rely on (`fill_every`): at 1.5 the "hidden" rule filled voxels in front of a shell. With the
    interpolated read, Lego 200 px trained 2383 steps in 300 s at 1.5 against 2124 at 1.0 and rendered as well (30.70
    against 30.59 dB on `benchmarks/ablate.py`'s probe)."""
    coarse_read: Literal["voxel", "interpolated"] = "interpolated"
    """How the march reads the smoothed occupancy at its points. "interpolated" places samples at the surface to a
    fraction of a voxel. "voxel", the voxel holding each point, is up to ~0.9 voxel off, so many rays' samples miss
    the surface: Lego 200 px after 600 s rendered 25.70 dB with it, against 30.10 interpolated (benchmarks/
    compare_methods.py)."""
    clip_march: bool = True
    """March each ray only over the stretch where it may meet a voxel that the empty-space mask keeps, found by a
    cheaper march of 2-voxel cells: the same samples outside training, a step ~13% cheaper on Lego, where most of a
    ray's chord through the fitted box is empty space. Training marches under the "hidden" `fill_rule` are not clipped:
    that rule needs what rays saw along their whole chords."""
    uniform_sample_fraction: float = 0.05
    """Share of each ray's training samples spread uniformly, so geometry can appear where there is none yet."""
    empty_space_threshold: float = 1e-3
    """Voxels whose occupancy G and that of all 26 neighbours is below this (empty space), or above 1 minus this (the
    inside of opaque matter), are skipped while marching."""
    mask_refresh_steps: int = 16
    """Training steps between refreshes of the empty-space mask."""
    fit_box_at_step: int = 100
    """At this training step the grids leave the scene box for the box around the matter found so far (f_hat > 1/2,
    grown by `fit_box_margin`), resampled at full resolution (see `coarse_scale`): smaller voxels than the full
    resolution over the scene box, fewer of them, shorter marches (coarse-to-fine, as DirectVoxGO finds its box).
    Retried every `mask_refresh_steps` while there is no matter yet; done once per run. 0: the grids keep the scene
    box."""
    coarse_scale: float = 0.5
    """Until the box is fitted, both grids run at this fraction of their resolutions over the whole scene box: a
    cheap coarse stage that finds where the matter is."""
    fit_box_margin: float = 0.15
    """Margin, in scene units, around the matter when the box is fitted: room for what has not formed yet."""
    fill_every: int = 100
    """Training steps between fills of unseen space (see `fill_rule`): it becomes solid, so the classifier and its
    meshes are those of solid objects, without inner shells. 0: never."""
    fill_rule: Literal["sealed", "hidden"] = "sealed"
    """Which unseen space outside the surface is matter. "sealed": space that no face-to-face path joins to the box's
    faces or to a voxel some ray saw through (more than half of its light left after it): a cavity. "hidden": every
    voxel rays reached only behind matter and never saw through, as space carving's visual hull has it: it also
    closes undersides no camera faces, and fills pockets no camera sees into (the union of benchmarks/scene_geometry.py
    has one under its ball and box, which made its F-score at 1% 0.82). Under either rule the unseen inside of the
    surface becomes solid too, but for a one-voxel layer under it (see `fill_unseen_space`)."""
    colour_weight_threshold: float = 1e-3
    """Colour is computed only for samples whose compositing weight exceeds this."""
    deferred_colour: bool = True
    """Composite the colour features along each ray and decode them with the MLP once per ray (deferred shading, as
    SNeRG does), instead of once per sample: the same for opaque surfaces, and the MLP's cost drops ~10x on a CPU."""
    tv_weight: float = 0.0
    """Weight of a total-variation penalty on the base occupancy (0: off)."""
    confidence_weight: float = 0.0
    """Weight of a term that pushes the base classifier f_theta towards 0 or 1 everywhere: mean f (1 - f). Images
    only ask that the surface be opaque, which f_hat just above 1/2 already is; the weak SDF needs f_theta near 1
    inside and near 0 outside. At geometry lr 0.03 with the "hidden" fill rule, 0.01 took the F-score at 0.5% of
    benchmarks/scene_geometry.py's sphere from 0.62 to 0.80 and its Chamfer distance from 0.47% to 0.39% of the
    diagonal. The default geometry lr (0.1) makes a confident classifier by itself."""
    background_color: Literal["white", "black"] = "white"
    """Colour behind the scene; Blender-synthetic scenes are rendered on white."""
    train_time_budget: Optional[float] = None
    """Train for this many seconds (then stop and save a checkpoint), with the learning rates decaying over that time
    instead of over the trainer's steps. Only time inside training iterations counts. It lifts the default step
    limit; a `--max-num-iterations` given still stops the run if it comes first. None: no limit."""
    freeze_geometry_at: float = 1.0
    """Share of training (of `train_time_budget`, else of the trainer's `--max-num-iterations`) after which the
    geometry grid stops learning and only colour trains: no blur backward, no geometry update and no fills, so each
    later step costs ~30% less. On Lego 200 px, 0.5 took 9-23% more steps in 600 s and rendered the test views no
    better: +0.03 and -0.17 dB on two seeds (docs/experiments.md, "Colour as SH coefficients, mixed heads, a frozen
    geometry"). 0 trains colour alone on a geometry loaded with --load-dir. 1: never."""

    @property
    def sdf_field(self) -> str:
        """Marks an SDF model for ``ns-export marching-cubes``: the field's ``forward_geonetwork`` is the weak SDF.
        That exporter is all nerfstudio reads this for, and it puts its lattice on the GPU with ``.cuda()``: without
        CUDA, the check ends the command with one line that names the CPU path, not the exporter's traceback."""
        if not torch.cuda.is_available():
            raise SystemExit(MARCHING_CUBES_NEEDS_CUDA)
        return "weak_sdf"


class RSSDFModel(Model):
    """Randomized-smoothing SDF model."""

    config: RSSDFModelConfig
    field: RSSDFField

    def populate_modules(self) -> None:
        super().populate_modules()
        self.field = RSSDFField(
            aabb=self.scene_box.aabb,
            resolution=self.config.grid_resolution,
            sigma=self.config.sigma,
            steepness=self.config.initial_steepness,
            density_eps=self.config.density_eps,
            initial_occupancy=self.config.initial_occupancy,
            appearance_resolution=self.config.appearance_resolution,
            appearance_dim=self.config.appearance_dim,
            hidden_dim=self.config.hidden_dim,
            sh_levels=self.config.sh_levels,
            colour_heads=self.config.colour_heads,
            stagger_colour=self.config.stagger_colour,
            initial_scale=self.config.coarse_scale if self.config.fit_box_at_step > 0 else 1.0,
        )
        self.sampler = OccupancyGuidedSampler(
            num_samples=self.config.num_samples,
            coarse_step=self.config.coarse_step,
            interpolate=self.config.coarse_read == "interpolated",
            uniform_fraction=self.config.uniform_sample_fraction,
            clip=self.config.clip_march,
        )
        self.renderer_rgb = RGBRenderer(background_color=self.config.background_color)
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer(method="expected")
        self.rgb_loss = nn.MSELoss()
        # Imported here, as nerfstudio's own models do: at the top, torchmetrics added ~0.9 s to every ns-* command.
        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        # Not a submodule: LPIPS's weights are AlexNet's, cached on some machines only. In checkpoints they would make
        # a run trained where they are cached fail to load where they are not (and add ~10 MB to each checkpoint).
        object.__setattr__(self, "lpips", lpips_if_available())
        self._add_viewer_controls()
        self.step = 0
        self._mask: Optional[Tensor] = None
        self._mask_key: Optional[Tuple] = None
        self._visibility: Optional[RayVisibility] = None
        """What training rays saw since the last fill (see `fill_every`)."""
        self._box_fitted = False
        self.train_seconds = 0.0
        """Seconds spent in training iterations so far (counted when `train_time_budget` is set). Checkpoints keep it,
        so a resumed run goes on with its learning rates' decay instead of starting it again."""
        self.register_buffer("trained_seconds", torch.zeros((), dtype=torch.float64))  # train_seconds, at each save
        self.max_steps: Optional[int] = None
        """The trainer's step limit, which measures training's progress when there is no time budget."""
        self._iteration_started: Optional[float] = None

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        self.trained_seconds.fill_(self.train_seconds)
        return super().state_dict(*args, **kwargs)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        """Checkpoints from before the clock was kept start it at 0; LPIPS weights that older checkpoints hold are
        dropped (see `lpips` in __init__). A state without the field (nerfstudio's second pass, see
        RSSDFField._load_from_state_dict) is left alone."""
        for key in [key for key in state_dict if key.startswith(prefix + "lpips.")]:
            del state_dict[key]
        if prefix + "field.aabb" in state_dict:
            state_dict.setdefault(prefix + "trained_seconds", torch.zeros((), dtype=torch.float64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.train_seconds = float(self.trained_seconds)

    def _add_viewer_controls(self) -> None:
        """Sliders in ns-viewer / ns-train's viewer, for rendering only, in units of the trained sigma."""
        sigma = self.config.sigma

        def set_sigma(slider: ViewerSlider) -> None:
            self.field.render_sigma = float(slider.value) * sigma

        def set_level(slider: ViewerSlider) -> None:
            self.field.render_level = float(slider.value) * sigma

        self.viewer_sigma = ViewerSlider(
            "RS sigma / trained sigma", 1.0, 0.25, 4.0, step=0.05, cb_hook=set_sigma,
            hint="Re-smooths the trained base grid with another sigma, for rendering only; training keeps its own.",
        )  # fmt: skip
        self.viewer_level = ViewerSlider(
            "Weak-SDF iso-level / sigma", 0.0, -2.5, 2.5, step=0.05, cb_hook=set_level,
            hint="Renders the level set weak_sdf = level as the surface (the weak SDF saturates at +-2.5 sigma).",
        )  # fmt: skip

    def get_param_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {
            "geometry": [self.field.base_logits],
            "appearance": [self.field.features],
            "colour_mlp": list(self.field.colour_mlp.parameters()),
        }

    # ----- training-time behaviour -----------------------------------------------------------------------------
    def steepness_at(self, step: int) -> float:
        """alpha rises geometrically from initial_steepness to steepness over the warm-up."""
        start, end = self.config.initial_steepness, self.config.steepness
        progress = min(1.0, step / max(1, self.config.steepness_warmup_steps))
        return float(start * (end / start) ** progress)

    def update_to_step(self, step: int) -> None:
        self.step = step
        self.field.steepness = self.steepness_at(step)

    def seconds_trained_by_now(self) -> float:
        """`train_seconds` and the part of the iteration under way, which is counted when it ends."""
        started = self._iteration_started
        return self.train_seconds + (0.0 if started is None else time.perf_counter() - started)

    def training_progress(self, step: int) -> float:
        """How far training is, in [0, 1]: by the clock under `train_time_budget`, else by the trainer's steps."""
        if self.config.train_time_budget is not None:
            return min(1.0, self.train_seconds / self.config.train_time_budget)
        return min(1.0, step / self.max_steps) if self.max_steps else 0.0

    @property
    def geometry_frozen(self) -> bool:
        return not self.field.base_logits.requires_grad

    def freeze_geometry_when_due(self, step: int) -> None:
        """From `freeze_geometry_at` on, the geometry grid takes no gradient (its optimizer then skips it) and the
        smoothed grid is blurred once and cached. A box fitted later brings a new grid, frozen again here."""
        if self.training_progress(step) >= self.config.freeze_geometry_at and not self.geometry_frozen:
            self.field.base_logits.requires_grad_(False)
            self.field.base_logits.grad = None
            self._visibility = None  # no fills from now on, so no record of what rays saw

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> List[TrainingCallback]:
        if self.device.type == "cpu":
            keep_freed_memory_for_reuse()
        trainer = training_callback_attributes.trainer
        if trainer is not None:
            self.max_steps = trainer.config.max_num_iterations
        callbacks = [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=self.update_to_step,
            )
        ]
        if self.config.freeze_geometry_at < 1.0:
            callbacks.append(
                TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self.freeze_geometry_when_due)
            )
        if self.config.fit_box_at_step > 0:
            optimizers = training_callback_attributes.optimizers

            def fit_box_once(step: int) -> None:
                retry = (step - self.config.fit_box_at_step) % self.config.mask_refresh_steps == 0
                if step >= self.config.fit_box_at_step and retry and not self.box_fitted:
                    self.box_fitted = self.fit_box(optimizers)

            callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], fit_box_once))
        if self.config.fill_every > 0:
            callbacks.append(
                TrainingCallback(
                    where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                    update_every_num_iters=self.config.fill_every,
                    func=self.fill_unseen_space,
                )
            )
        if self.config.train_time_budget is not None and trainer is not None:
            callbacks += self._time_budget_callbacks(trainer, training_callback_attributes.optimizers)
        return callbacks

    def _time_budget_callbacks(self, trainer, optimizers) -> List[TrainingCallback]:
        """Train for `train_time_budget` seconds: the learning rates decay over that time, then training stops.

        The clock counts the time spent inside training iterations only, so evaluations, checkpoints and the viewer
        do not eat into the budget.
        """
        budget = float(self.config.train_time_budget)  # type: ignore[arg-type]
        this_run = {"steps": 0, "seconds": 0.0}  # iterations timed in this process, for the terminal's progress
        if optimizers is not None:  # the schedulers step inside the iteration, before `end_iteration` counts it
            decay_by_progress(lambda: self.seconds_trained_by_now() / budget, optimizers, trainer.config.optimizers)
        if self.train_seconds >= budget:  # resumed from a checkpoint that spent it: nerfstudio trains one step
            from nerfstudio.utils.rich_utils import CONSOLE

            CONSOLE.print(
                f"rs-sdf: the checkpoint has trained its time budget already ({self.train_seconds:.1f} of "
                f"{budget:g} s): one step more is trained and saved; a larger --pipeline.model.train-time-budget "
                "trains on",
                markup=False,
                highlight=False,
            )

        def start_iteration(step: int) -> None:
            self._iteration_started = time.perf_counter()

        def end_iteration(step: int) -> None:
            if self._iteration_started is not None:
                elapsed = time.perf_counter() - self._iteration_started
                self.train_seconds += elapsed
                this_run["steps"] += 1
                this_run["seconds"] += elapsed
                self._iteration_started = None
            if self.train_seconds >= budget:
                trainer.stop_training = True
            if this_run["seconds"] > 0:
                steps_left = max(0.0, budget - self.train_seconds) * this_run["steps"] / this_run["seconds"]
                last_step = getattr(trainer, "_start_step", 0) + trainer.config.max_num_iterations - 1
                report_last_step(min(last_step, step + round(steps_left)))

        return [
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], start_iteration),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], end_iteration),
        ]

    @property
    def box_fitted(self) -> bool:
        """Whether the grids left the scene box: fitted in this run, or loaded so from a checkpoint."""
        return self._box_fitted or not torch.equal(self.field.aabb, self.scene_box.aabb.to(self.field.aabb))

    @box_fitted.setter
    def box_fitted(self, value: bool) -> None:
        self._box_fitted = value

    def fit_box(self, optimizers=None) -> bool:
        """Shrink the grids' box to the matter (see `fit_box_at_step`); False if there is no matter yet."""
        box = self.field.occupied_box(self.config.fit_box_margin)
        if box is None:
            return False
        old = (self.field.base_logits, self.field.features)
        self.field.resample_to_box(box)
        self._visibility = None  # of the old voxels; the next batches see the new ones
        self._mask = None  # of the old box, which a grid of the same shape would not tell
        if optimizers is not None:  # hand them the new grids; Adam's moments belonged to the old voxels
            replacements = dict(zip(old, (self.field.base_logits, self.field.features)))
            for optimizer in optimizers.optimizers.values():
                for group in optimizer.param_groups:
                    group["params"] = [replacements.get(p, p) for p in group["params"]]
                for parameter in old:
                    optimizer.state.pop(parameter, None)
            for name, parameters in optimizers.parameters.items():
                optimizers.parameters[name] = [replacements.get(p, p) for p in parameters]
        return True

    @torch.no_grad()
    def fill_unseen_space(self, step: int = 0) -> int:
        """Make solid the unseen space of `fill_rule` and the unseen inside of the surface, judged by the rays of the
        last `fill_every` batches, and start a new count. Fewer batches than that (after the box moved, say) are too
        few rays to tell: no fill.

        The inside is the matter (f_hat >= 1/2) that no ray saw through, less a one-voxel layer at its border, which
        the images shape. Images ask only that the surface be opaque, which a fog of f_theta ~0.6 behind a thin shell
        already is; the weak SDF needs f_theta near 1 there, and a steep f_hat across the surface.
        """
        visibility = self._visibility
        if visibility is None or visibility.batches < self.config.fill_every or self.geometry_frozen:
            return 0
        empty = self.field.smoothed_occupancy_grid(self.field.sigma) < 0.5
        if self.config.fill_rule == "hidden":
            outside = empty & visibility.hidden
        else:
            outside = grids.enclosed_voxels(empty, visibility.seen_through)
        inside = ~dilate(empty | visibility.seen_through)
        self._visibility = None
        return self.field.make_solid(outside | inside)

    def empty_space_mask(self, smoothed_grid: Tensor) -> Tensor:
        """The voxels the march reads (True: may hold matter that light reaches; False: empty, or deep inside opaque
        matter), refreshed every `mask_refresh_steps` while training and whenever the grid changes in eval."""
        if self.training:
            key: Tuple = (self.step // self.config.mask_refresh_steps,)
        else:
            key = (
                self.field.parameters_key(),
                self.field.active_sigma,
                self.field.active_threshold,
                self.field.steepness,
            )
        stale = self._mask is None or self._mask.shape != smoothed_grid.shape or self._mask.device != smoothed_grid.device
        if stale or self._mask_key != key:
            occupancy_grid = self.field.occupancy_from_smoothed(smoothed_grid.detach())
            threshold = self.config.empty_space_threshold
            self._mask = empty_space_mask(occupancy_grid, threshold) & ~opaque_interior(occupancy_grid, 1.0 - threshold)
            self._mask_key = key
        return self._mask

    # ----- rendering -------------------------------------------------------------------------------------------
    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        ray_bundle = ray_bundle.flatten()
        smoothed_grid = self.field.smoothed_occupancy_grid()
        visibility = None
        if self.training and self.config.fill_every > 0 and not self.geometry_frozen:  # a frozen one has no fills
            visibility = self._visibility
            if visibility is None or visibility.seen_through.shape != smoothed_grid.shape:  # (a checkpoint was loaded)
                visibility = self._visibility = RayVisibility.empty(
                    smoothed_grid.shape, smoothed_grid.device, behind_matter=self.config.fill_rule == "hidden"
                )
        ray_samples = self.sampler(
            ray_bundle,
            smoothed_grid.detach(),
            self.empty_space_mask(smoothed_grid),
            self.field.aabb,
            self.field.voxel_length,
            self.field.density_from_smoothed,
            training=self.training,
            visibility=visibility,
        )
        num_rays, num_samples = ray_samples.frustums.shape
        positions = ray_samples.frustums.get_positions().reshape(-1, 3)
        smoothed = self._smoothed_at_samples(ray_samples, positions, smoothed_grid)
        density = self.field.density_from_smoothed(smoothed).reshape(num_rays, num_samples, 1)
        weights = ray_samples.get_weights(density)

        # Colour only where it shows: most samples sit in front of or behind the surface with ~zero weight.
        active = weights.reshape(-1) > self.config.colour_weight_threshold
        if self.config.deferred_colour:
            head_rgb = self._deferred_colour(ray_bundle, positions, weights, active)
        else:
            head_rgb = self._per_sample_colour(ray_samples, positions, weights, active)
        outputs = {
            "rgb": head_rgb.mean(dim=0),
            "accumulation": self.renderer_accumulation(weights=weights),
            "depth": self.renderer_depth(weights=weights, ray_samples=ray_samples),
        }
        if self.training:
            outputs["head_rgb"] = head_rgb  # each head fits the pixels by itself (see `colour_heads`)
        else:
            outputs.update(self._geometry_outputs(positions, smoothed, weights, smoothed_grid, active))
        return outputs

    def _smoothed_at_samples(self, ray_samples: RaySamples, positions: Tensor, smoothed_grid: Tensor) -> Tensor:
        """f_hat at the samples. While training, rays whose coarse march saw nothing (less opacity than NOTHING_SEEN
        in all: the march skipped their voxels or found them clear) are not read. Reading them costs a gather and its
        gradient's scatter for next to no gradient, and on Lego they are over half of a batch's rays. They render as
        background."""
        if not self.training:
            return self.field.smoothed_occupancy(positions, smoothed_grid)
        seen = (ray_samples.metadata[COARSE_ACCUMULATION] >= NOTHING_SEEN).reshape(-1, 1)
        seen = seen.expand(*ray_samples.frustums.shape).reshape(-1)
        smoothed = torch.zeros(positions.shape[0], device=positions.device)
        smoothed = smoothed.index_put((seen,), self.field.smoothed_occupancy(positions[seen], smoothed_grid))
        return smoothed

    def _per_sample_colour(self, ray_samples, positions: Tensor, weights: Tensor, active: Tensor) -> Tensor:
        """Volume rendering proper: a colour per sample and head, composited; (heads, rays, 3)."""
        directions = ray_samples.frustums.directions.reshape(-1, 3)
        heads = self.field.colour_mlp.heads  # the checkpoint's count, when one was loaded
        colours = torch.zeros(heads, positions.shape[0], 3, device=positions.device, dtype=positions.dtype)
        if active.any():
            colours[:, active] = self.field.head_colours(positions[active], directions[active])
        colours = colours.reshape(heads, *weights.shape[:2], 3)
        return torch.stack([self.renderer_rgb(rgb=head, weights=weights) for head in colours])

    def _deferred_colour(self, ray_bundle: RayBundle, positions: Tensor, weights: Tensor, active: Tensor) -> Tensor:
        """Deferred shading: composite the colour features along the ray, decode them once per ray and head;
        (heads, rays, 3)."""
        num_rays, num_samples = weights.shape[:2]
        accumulation = weights.sum(dim=1)
        sample = active.nonzero()[:, 0]
        ray = torch.div(sample, num_samples, rounding_mode="floor")
        share = weights.reshape(-1)[sample] / accumulation[ray, 0].clamp_min(1e-6)
        ray_features = self.field.composite_appearance(positions[sample], share, ray, num_rays)
        surface_rgb = self.field.decode_colour_heads(ray_features, ray_bundle.directions.reshape(-1, 3))
        return torch.stack(
            [self.renderer_rgb(rgb=head[:, None, :], weights=accumulation[:, None, :]) for head in surface_rgb]
        )

    @torch.no_grad()
    def _geometry_outputs(
        self, positions: Tensor, smoothed: Tensor, weights: Tensor, smoothed_grid: Tensor, active: Tensor
    ) -> Dict[str, Tensor]:
        """Per-ray views of the geometry: normals, the ray's certified clearance, its peak occupancy."""
        num_rays, num_samples = weights.shape[:2]
        gradients = torch.zeros_like(positions)
        if active.any():
            gradients[active] = self.field.sdf_gradient(positions[active], smoothed_grid)
        normals = torch.nn.functional.normalize((weights * gradients.reshape(num_rays, num_samples, 3)).sum(1), dim=-1)
        sdf = weak_sdf(smoothed, self.field.active_sigma).reshape(num_rays, num_samples)
        occupancy = self.field.occupancy_from_smoothed(smoothed).reshape(num_rays, num_samples)
        return {
            "normals": (normals + 1.0) / 2.0,
            "weak_sdf": sdf.amin(dim=1, keepdim=True),
            "occupancy": occupancy.amax(dim=1, keepdim=True),
        }

    def get_rgba_image(self, outputs: Dict[str, Tensor], output_name: str = "rgb") -> Tensor:
        """The colour before the background was composited, with the accumulation as alpha. nerfstudio's own gives
        every pixel alpha 1 unless the background is random: `ns-export pointcloud` then kept the rays that miss the
        scene, whose depth lies anywhere along them, and `ns-render`'s rgba output had no transparency."""
        from nerfstudio.utils import colors

        rgb = outputs[output_name]
        alpha = outputs[output_name.replace("rgb", "accumulation")]
        background = colors.COLORS_DICT[self.config.background_color].to(rgb)
        colour = (rgb - (1.0 - alpha) * background) / alpha.clamp_min(1e-10)
        return torch.cat((colour.clamp(0.0, 1.0), alpha), dim=-1)

    # ----- losses and metrics ----------------------------------------------------------------------------------
    def _target_rgb(self, batch: Dict[str, Tensor]) -> Tensor:
        return self.renderer_rgb.blend_background(batch["image"].to(self.device))

    def get_metrics_dict(self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return {"psnr": self.psnr(outputs["rgb"], self._target_rgb(batch))}

    def get_loss_dict(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor], metrics_dict: Optional[Dict[str, Tensor]] = None
    ) -> Dict[str, Tensor]:
        pred_rgb, gt_rgb = self.renderer_rgb.blend_background_for_loss_computation(
            pred_image=outputs["rgb"], pred_accumulation=outputs["accumulation"], gt_image=batch["image"].to(self.device)
        )
        if "head_rgb" in outputs:  # the mean of the heads' losses, not the loss of their mean: independent models
            losses = {"rgb_loss": torch.stack([self.rgb_loss(gt_rgb, head) for head in outputs["head_rgb"]]).mean()}
        else:
            losses = {"rgb_loss": self.rgb_loss(gt_rgb, pred_rgb)}
        geometry_learns = self.training and not self.geometry_frozen
        if geometry_learns and self.config.tv_weight > 0:
            losses["tv_loss"] = self.config.tv_weight * total_variation(self.field.base_occupancy_grid())
        if geometry_learns and self.config.confidence_weight > 0:
            losses["confidence_loss"] = self.config.confidence_weight * indecision(self.field.base_occupancy_grid())
        return losses

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        from torchmetrics.functional import structural_similarity_index_measure

        gt_rgb = self._target_rgb(batch)
        predicted_rgb = outputs["rgb"]
        gt, pred = (torch.moveaxis(image, -1, 0)[None] for image in (gt_rgb, predicted_rgb))
        metrics = {
            "psnr": float(self.psnr(gt, pred).item()),
            "ssim": float(structural_similarity_index_measure(pred, gt, data_range=1.0)),  # type: ignore[arg-type]
        }
        if self.lpips is not None:
            self.lpips.to(pred.device)
            metrics["lpips"] = float(self.lpips(gt.clamp(0, 1), pred.clamp(0, 1)))
        images = {
            "img": torch.cat([gt_rgb, predicted_rgb], dim=1),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
            "depth": colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"]),
        }
        if "normals" in outputs:
            images["normals"] = outputs["normals"]
        return metrics, images


def total_variation(grid: Tensor) -> Tensor:
    """Mean squared difference between neighbouring voxels of a ``[..., D, H, W]`` grid."""
    return sum(grid.diff(dim=axis).pow(2).mean() for axis in (-1, -2, -3))  # type: ignore[return-value]


def report_last_step(step: int) -> None:
    """nerfstudio's terminal shows progress and an ETA against `--max-num-iterations`. Under a time budget the clock
    ends the run, so the step it will likely end at goes there instead (none is shown until nerfstudio's writer is
    set up, as in scripts that run the model without its trainer)."""
    from nerfstudio.utils import writer

    if "max_iter" in writer.GLOBAL_BUFFER:
        writer.GLOBAL_BUFFER["max_iter"] = step + 1  # the count of steps, as nerfstudio's is


def indecision(probabilities: Tensor) -> Tensor:
    """Mean p (1 - p): 0 where a classifier says 0 or 1, largest at 1/2; its gradient pushes p away from 1/2."""
    return (probabilities * (1.0 - probabilities)).mean()
