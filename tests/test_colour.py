"""The colour heads: each an MLP of its own on its own features; old one-MLP checkpoints still load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rs_nerfstudio.colour import ColourHeads


def sequential_like(heads: ColourHeads, head: int) -> nn.Sequential:
    """Head ``head`` of ``heads`` as the nn.Sequential that rs-sdf's single colour MLP was."""
    layers = []
    for weight, bias in zip(heads.weights, heads.biases):
        linear = nn.Linear(weight.shape[1], weight.shape[2])
        with torch.no_grad():
            linear.weight.copy_(weight[head].T)
            linear.bias.copy_(bias[head, 0])
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def test_each_head_is_an_mlp_of_its_own_features_and_the_shared_encoding() -> None:
    torch.manual_seed(0)
    heads = ColourHeads(3, feature_dim=4, encoding_dim=9, hidden_dim=16)
    features, encoding = torch.randn(50, 12), torch.randn(50, 9)
    colours = heads(features, encoding)
    assert colours.shape == (3, 50, 3)
    for head in range(3):
        own = torch.cat([features[:, 4 * head : 4 * (head + 1)], encoding], dim=-1)
        expected = torch.sigmoid(sequential_like(heads, head)(own))
        torch.testing.assert_close(colours[head], expected)
    assert not torch.allclose(colours[0], colours[1])  # initialised apart


def test_without_an_encoding_the_heads_read_features_alone() -> None:
    heads = ColourHeads(2, feature_dim=5, encoding_dim=0, hidden_dim=8)
    features = torch.randn(7, 10)
    expected = torch.sigmoid(sequential_like(heads, 1)(features[:, 5:]))
    torch.testing.assert_close(heads(features)[1], expected)


def test_a_checkpoint_of_the_single_mlp_loads_as_one_head_with_its_outputs() -> None:
    torch.manual_seed(1)
    old = nn.Sequential(nn.Linear(12 + 9, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    heads = ColourHeads(2, feature_dim=12, encoding_dim=9, hidden_dim=64)
    parameters = list(heads.parameters())
    heads.load_state_dict(old.state_dict())
    assert heads.heads == 1
    assert list(heads.parameters()) == parameters  # the same objects: an optimizer made before loading holds them
    features, encoding = torch.randn(20, 12), torch.randn(20, 9)
    torch.testing.assert_close(heads(features, encoding)[0], torch.sigmoid(old(torch.cat([features, encoding], -1))))


def test_a_checkpoint_with_more_heads_sets_the_count() -> None:
    saved = ColourHeads(3, feature_dim=4, encoding_dim=0, hidden_dim=8)
    loaded = ColourHeads(1, feature_dim=4, encoding_dim=0, hidden_dim=8)
    loaded.load_state_dict(saved.state_dict())
    features = torch.randn(6, 12)
    assert loaded.heads == 3
    torch.testing.assert_close(loaded(features), saved(features))


def test_no_heads_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ColourHeads(0, feature_dim=4, encoding_dim=0, hidden_dim=8)


def test_reset_draws_new_weights_in_the_range_of_linear_layers() -> None:
    heads = ColourHeads(2, feature_dim=4, encoding_dim=5, hidden_dim=8)
    before = [parameter.detach().clone() for parameter in heads.parameters()]
    heads.reset_parameters()
    assert all(not torch.equal(old, new) for old, new in zip(before, heads.parameters()))
    for weight, bias in zip(heads.weights, heads.biases):
        bound = 1.0 / weight.shape[1] ** 0.5  # nn.Linear's, with weight.shape[1] inputs
        assert weight.abs().max() <= bound and bias.abs().max() <= bound
