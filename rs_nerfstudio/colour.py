"""Colour decoders: a few small MLPs side by side, an ensemble whose mean is the rendered colour.

After 10 minutes on Lego 200 px, rs-sdf renders its 79 training views ~6 dB better than the 8 test views, which lie up
to 17 degrees from every training camera, and colour holds most of that gap (docs/experiments.md, "Where the
over-fitting is"). Two colour models trained on the same rays err differently on the test views, so their mean
renders them better than either does. Each head has its own slice of the colour-feature grid and its own MLP; all
share the geometry and the rays.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn


class ColourHeads(nn.Module):
    """``heads`` MLPs of one shape (inputs -> hidden -> hidden -> RGB, ReLU between, sigmoid out). Head k reads
    features ``[k * feature_dim, (k + 1) * feature_dim)`` and the shared encoding of the view direction. The weights
    of all heads are stacked, one tensor per layer; each head runs its own matrix products, which on 2 CPU cores took
    6.8 ms forward and backward for 8192 rays and two heads of 64, against 7.5-8.3 ms as batched products (baddbmm).

    Args:
        heads: how many decoders.
        feature_dim: colour features per voxel for each head.
        encoding_dim: width of the view-direction encoding (0: view-independent colour).
        hidden_dim: width of the hidden layers.
    """

    def __init__(self, heads: int, feature_dim: int, encoding_dim: int, hidden_dim: int) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"colour heads must be at least 1, got {heads}")
        self.feature_dim = feature_dim
        sizes = [feature_dim + encoding_dim, hidden_dim, hidden_dim, 3]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(heads, n_in, n_out)) for n_in, n_out in zip(sizes, sizes[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(heads, 1, n_out)) for n_out in sizes[1:])
        self.reset_parameters()

    @property
    def heads(self) -> int:
        return self.weights[0].shape[0]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """nn.Linear's initialisation, for each head: uniform in +-1/sqrt(inputs)."""
        for weight, bias in zip(self.weights, self.biases):
            bound = 1.0 / math.sqrt(weight.shape[1])
            weight.uniform_(-bound, bound)
            bias.uniform_(-bound, bound)

    def forward(
        self, features: Float[Tensor, "N heads_times_C"], encoding: Optional[Float[Tensor, "N E"]] = None
    ) -> Float[Tensor, "heads N 3"]:
        """Each head's RGB in [0, 1]."""
        last = len(self.weights) - 1
        colours = []
        for head, x in enumerate(features.split(self.feature_dim, dim=-1)):
            if encoding is not None:
                x = torch.cat([x, encoding], dim=-1)
            for layer, (weight, bias) in enumerate(zip(self.weights, self.biases)):
                x = torch.addmm(bias[head], x, weight[head])
                if layer < last:
                    x = torch.relu(x)
            colours.append(torch.sigmoid(x))
        return torch.stack(colours)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        """Checkpoints from before the heads (one nn.Sequential: Linear, ReLU, Linear, ReLU, Linear) load as one head;
        a checkpoint with another number of heads than this module's sets the parameters' shapes (the same objects,
        so optimizers made before loading keep holding them)."""
        for layer, index in enumerate((0, 2, 4)):
            old_weight, old_bias = f"{prefix}{index}.weight", f"{prefix}{index}.bias"
            if old_weight in state_dict:
                state_dict[f"{prefix}weights.{layer}"] = state_dict.pop(old_weight).T[None].contiguous()
                state_dict[f"{prefix}biases.{layer}"] = state_dict.pop(old_bias)[None, None]
        for name, parameters in (("weights", self.weights), ("biases", self.biases)):
            for layer, parameter in enumerate(parameters):
                loaded = state_dict.get(f"{prefix}{name}.{layer}")
                if loaded is not None and loaded.shape != parameter.shape:
                    parameter.data = torch.empty(loaded.shape, dtype=parameter.dtype, device=parameter.device)
                    parameter.grad = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
