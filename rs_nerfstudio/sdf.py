"""From the smoothed occupancy f_hat to a weak SDF, an occupancy and a volume density.

Cohen et al.'s certified radius of the smoothed classifier at x is r(x) = sigma * Phi^-1(p(x)), where p is the
probability of the predicted class. For occupancy, f_hat(x) = P(x + noise is inside), so the radius is the distance
to the surface that the smoothed classifier certifies: a 1-Lipschitz lower bound of the true distance, exact for a
half-space. We use nerfstudio's export convention, positive outside and negative inside:

    sdf(x) = sigma * Phi^-1(1 - f_hat(x))

All functions are pure and differentiable.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

SATURATION = 2.5
"""The weak SDF saturates at +-2.5 sigma. The blur's kernel stops at 3 sigma, so f_hat's tail falls faster than a
Gaussian's there and Phi^-1 of it would grow faster than the distance: up to 2.5 sigma it stays within a few percent
of 1-Lipschitz (tests/test_sdf.py measures it), beyond it would not."""
DEFAULT_CLAMP = float(torch.special.ndtr(torch.tensor(-SATURATION, dtype=torch.float64)))
"""f_hat is clamped to [c, 1 - c] before Phi^-1, with c = Phi(-SATURATION); the gradient stays finite."""


def weak_sdf(
    smoothed_occupancy: Float[Tensor, "*batch"], sigma: float, clamp: float = DEFAULT_CLAMP
) -> Float[Tensor, "*batch"]:
    """Certified radius as a signed distance: sigma * Phi^-1(1 - f_hat), positive outside."""
    p_outside = (1.0 - smoothed_occupancy).clamp(clamp, 1.0 - clamp)
    return sigma * torch.special.ndtri(p_outside)


def smoothed_occupancy_from_sdf(sdf: Float[Tensor, "*batch"], sigma: float) -> Float[Tensor, "*batch"]:
    """Inverse of :func:`weak_sdf`: f_hat = Phi(-sdf / sigma). Exact for a half-space."""
    return torch.special.ndtr(-sdf / sigma)


def occupancy(
    smoothed_occupancy: Float[Tensor, "*batch"], steepness: float, threshold: float = 0.5
) -> Float[Tensor, "*batch"]:
    """G = sigmoid(alpha (f_hat - threshold)): a sharp occupancy whose 1/2-level set is the weak SDF's zero set for
    the default threshold 1/2, and its level set sdf = l for threshold = :func:`level_threshold` (l)."""
    return torch.sigmoid(steepness * (smoothed_occupancy - threshold))


def level_threshold(level: float, sigma: float) -> float:
    """The f_hat whose weak SDF is ``level``: Phi(-level / sigma)."""
    return float(torch.special.ndtr(torch.tensor(-level / sigma, dtype=torch.float64)))


def density_from_occupancy(
    occ: Float[Tensor, "*batch"], scale: float, eps: float = 1e-3
) -> Float[Tensor, "*batch"]:
    """Volume density -scale * log(1 - (1 - eps) G), which behaves like -scale * log(1 + eps - G).

    A segment of length delta then has opacity 1 - (1 - (1 - eps) G)^(scale * delta); with scale = 1 / delta this
    is (1 - eps) G, so a sample's opacity tracks its occupancy. eps bounds the density at -scale * log(eps) where
    G = 1 and keeps the logarithm finite; the density is exactly 0 where G = 0 (never negative).
    """
    return -scale * torch.log1p(-(1.0 - eps) * occ)
