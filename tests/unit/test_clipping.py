"""The fast clipping paths release what the hooks path releases, on the same batch and model.

Each path is compared with a reference computed row by row with plain autograd (no Opacus): the
per-row norms the rule tuner's counts come from, the clipped gradient sum the noise is added to
(read before the optimizer step, so no noise switch exists anywhere), the counts, and whole
noisy steps under one reproducible noise stream.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ppmlops.errors import TrainingError
from ppmlops.privacy.randomness import Randomness
from ppmlops.training.clipping import EPS, resolve_mode
from ppmlops.training.models import build_model
from ppmlops.training.private_model import make_private_model

CPU = torch.device("cpu")
D = 12


def _nets() -> dict[str, nn.Module]:
    torch.manual_seed(3)
    return {
        "logistic": build_model("logistic", D),
        "mlp": build_model("mlp", D, [16, 8]),
        "mlp without bias": build_model("mlp", D, [16], bias=False),
        # LayerNorm has parameters: not a linear stack, so ghost clipping (with Opacus's hooks
        # for any layer it has no norm sampler for).
        "layernorm": nn.Sequential(nn.Linear(D, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 2)),
        # A factory's convolution over the features (issue 29): ghost clipping's Conv1d norm sampler.
        "conv": nn.Sequential(nn.Unflatten(1, (1, D)), nn.Conv1d(1, 3, 4), nn.ReLU(), nn.Flatten(),
                              nn.Linear(3 * (D - 3), 2)),
    }


def _batch(n: int = 40):
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, D, generator=g) * 3, torch.randint(0, 2, (n,), generator=g)


def _reference(net: nn.Module, X, y, clip: float):
    """Row-by-row gradients: the definition the fast paths must meet."""
    params = list(net.parameters())
    rows = []
    for i in range(len(y)):
        loss = nn.functional.cross_entropy(net(X[i:i + 1]), y[i:i + 1])
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    per_row = torch.stack(rows)
    norms = per_row.norm(dim=1)
    factor = (clip / (norms + EPS)).clamp(max=1.0)
    return norms, (per_row * factor[:, None]).sum(0)


def _clipped_sum(model, X, y, clip: float):
    """The clipper's norms and the clipped sum before noise, whichever path holds it."""
    model.optimizer.zero_grad(set_to_none=True)
    norms = model.clipper.backward(X, y, clip)
    if model.clipper.fast:
        grads = [p.grad for p in model.optimizer.params]
    else:  # the classic optimizer clips per-row gradients into summed_grad
        model.optimizer.clip_and_accumulate()
        grads = [p.summed_grad for p in model.optimizer.params]
    return norms, torch.cat([g.flatten() for g in grads])


def _private(net, mode: str, clip: float = 1.0):
    return make_private_model(copy.deepcopy(net), noise_multiplier=1.1, max_grad_norm=clip, learning_rate=0.3,
                              momentum=0.0, divisor=32.0, device=CPU, clipping=mode)


def _modes(name: str) -> list[str]:
    return ["hooks", "ghost"] + (["linear"] if name not in ("layernorm", "conv") else [])


@pytest.mark.parametrize("name", list(_nets()))
def test_every_path_gives_the_reference_norms_and_clipped_sum(name, gloo_world_of_one):
    net = _nets()[name]
    X, y = _batch()
    norms_ref, _ = _reference(net, X, y, 1.0)
    clip = float(norms_ref.median())  # about half the rows clipped
    norms_ref, sum_ref = _reference(net, X, y, clip)
    assert 5 < int((norms_ref > clip).sum()) < 35
    for mode in _modes(name):
        model = _private(net, mode, clip)
        assert model.clipping == mode
        norms, clipped_sum = _clipped_sum(model, X, y, clip)
        torch.testing.assert_close(norms, norms_ref, rtol=1e-4, atol=1e-5, msg=f"{mode} norms")
        torch.testing.assert_close(clipped_sum, sum_ref, rtol=1e-4, atol=1e-5, msg=f"{mode} clipped sum")


@pytest.mark.parametrize("name", ["mlp", "layernorm", "conv"])
def test_counts_and_noisy_steps_match_across_paths(name, gloo_world_of_one):
    """Same counts, and the same weights after steps drawing one reproducible noise stream: the
    noise, its scale (sigma C) and the public divisor are applied identically on every path."""
    net = _nets()[name]
    X, y = _batch()
    clip = float(_reference(net, X, y, 1.0)[0].median())
    results = {}
    for mode in _modes(name):
        model = _private(net, mode, clip)
        model.set_epoch(noise_multiplier=1.1, max_grad_norm=clip, learning_rate=0.3,
                        noise_source=Randomness.reproducible(9, "clip-test").source("noise", 1))
        counts = [0, 0]
        for rows in (slice(0, 40), slice(0, 0), slice(10, 30)):  # the empty Poisson batch included
            model.step(X[rows], y[rows], counts)
        results[mode] = (counts, torch.cat([p.detach().flatten() for p in model.net.parameters()]))
    hooks_counts, hooks_weights = results.pop("hooks")
    assert sum(hooks_counts) == 60 and hooks_counts[0] > 0 and hooks_counts[1] > 0
    for mode, (counts, weights) in results.items():
        assert counts == hooks_counts, mode
        torch.testing.assert_close(weights, hooks_weights, rtol=1e-4, atol=1e-5, msg=mode)


def test_the_fast_path_is_the_default_and_unsupported_models_are_named(gloo_world_of_one):
    assert resolve_mode("auto", build_model("mlp", D, [8])) == "linear"
    assert resolve_mode("auto", nn.Linear(D, 2)) == "ghost"  # not a Sequential: Opacus's ghost clipping
    assert resolve_mode("auto", _nets()["layernorm"]) == "ghost"
    assert resolve_mode("auto", _nets()["conv"]) == "ghost"
    assert _private(build_model("logistic", D), "auto").clipping == "linear"
    with pytest.raises(TrainingError, match="linear clipping needs an nn.Sequential"):
        resolve_mode("linear", _nets()["layernorm"])
    with pytest.raises(TrainingError, match="clipping must be one of"):
        resolve_mode("fastest", nn.Linear(D, 2))


def test_linear_clipping_refuses_inputs_that_are_not_rows(gloo_world_of_one):
    model = _private(build_model("logistic", D), "linear")
    with pytest.raises(TrainingError, match=r"\(batch, features\) inputs"):
        model.clipper.backward(torch.zeros(4, 3, D), torch.zeros(4, dtype=torch.int64), 1.0)


@pytest.mark.parametrize("mode", ["hooks", "ghost", "linear"])
def test_a_step_moves_the_weights_by_the_noisy_clipped_sum_over_the_public_divisor(mode, gloo_world_of_one):
    """The reference step, written out: w <- w - lr (sum of clipped rows + N(0, (sigma C)^2)) / divisor,
    the noise read from a second copy of the same reproducible stream."""
    net = _nets()["mlp"]
    X, y = _batch()
    clip = float(_reference(net, X, y, 1.0)[0].median())
    _, clipped = _reference(net, X, y, clip)
    before = torch.cat([p.detach().flatten() for p in net.parameters()])
    model = _private(net, mode, clip)  # lr 0.3, divisor 32
    model.set_epoch(noise_multiplier=1.1, max_grad_norm=clip, learning_rate=0.3,
                    noise_source=Randomness.reproducible(9, "step-test").source("noise", 1))
    model.step(X, y)
    noise = Randomness.reproducible(9, "step-test").source("noise", 1).gaussian_tensor(
        before.numel(), 1.1 * clip, torch.float32, CPU)
    after = torch.cat([p.detach().flatten() for p in model.net.parameters()])
    torch.testing.assert_close(after, before - 0.3 * (clipped + noise) / 32.0, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["hooks", "linear"])
def test_a_clipped_sum_is_released_once(mode, gloo_world_of_one):
    """A second optimizer step on the same backward would release the same sum again with fresh
    noise, which nothing charges for: refused until zero_grad."""
    model = _private(_nets()["mlp"], mode)
    model.set_epoch(noise_multiplier=1.1, max_grad_norm=1.0, learning_rate=0.3,
                    noise_source=Randomness.reproducible(9, "once").source("noise", 1))
    X, y = _batch()
    model.step(X, y)
    with pytest.raises((TrainingError, ValueError), match="twice|already been used|zero_grad"):
        model.optimizer.step()


@pytest.mark.parametrize("name,mode", [("mlp", "linear"), ("mlp", "ghost"), ("layernorm", "ghost")])
def test_virtual_steps_give_the_clipped_sum_and_the_step_of_one_big_batch(name, mode, gloo_world_of_one):
    """A physical limit of 7 rows splits the 40-row batch into 6 pieces: the same norms, the same
    clipped sum and, under one reproducible noise stream, the same weights as one backward."""
    net = _nets()[name]
    X, y = _batch()
    clip = float(_reference(net, X, y, 1.0)[0].median())
    weights = {}
    for limit in (None, 7):
        model = _private(net, mode, clip)
        model.physical_batch = limit
        model.set_epoch(noise_multiplier=1.1, max_grad_norm=clip, learning_rate=0.3,
                        noise_source=Randomness.reproducible(9, "virtual").source("noise", 1))
        model.optimizer.zero_grad(set_to_none=True)
        norms = model._virtual_backward(X, y, limit) if limit else model.clipper.backward(X, y, clip)
        summed = torch.cat([p.grad.flatten() for p in model.optimizer.params])
        if limit is None:
            norms_one, summed_one = norms, summed
        else:
            torch.testing.assert_close(norms, norms_one, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(summed, summed_one, rtol=1e-4, atol=1e-5)
        counts = [0, 0]
        model.step(X, y, counts)
        weights[limit] = (counts, torch.cat([p.detach().flatten() for p in model.net.parameters()]))
    assert weights[None][0] == weights[7][0] and sum(weights[7][0]) == 40
    torch.testing.assert_close(weights[7][1], weights[None][1], rtol=1e-4, atol=1e-5)


def test_a_physical_limit_needs_a_fast_clipping_path(gloo_world_of_one):
    with pytest.raises(TrainingError, match="fast clipping path"):
        make_private_model(build_model("mlp", D, [8]), noise_multiplier=1.0, max_grad_norm=1.0, learning_rate=0.1,
                           momentum=0.0, divisor=8.0, device=CPU, clipping="hooks", physical_batch=4)


def test_a_model_with_parameters_of_two_dtypes_steps_in_each_dtype(gloo_world_of_one):
    """The fused step gathers every clipped sum into one buffer (torch.cat promotes float32 to
    float64): each gradient still reaches its parameter in the parameter's own dtype."""
    net = build_model("mlp", D, [8])
    net[2].double()  # the last layer in float64
    net = nn.Sequential(net[0], net[1], _ToDouble(), net[2])
    model = make_private_model(net, noise_multiplier=1.0, max_grad_norm=1.0, learning_rate=0.1, momentum=0.0,
                               divisor=8.0, device=CPU, clipping="ghost")
    model.set_epoch(noise_multiplier=1.0, max_grad_norm=1.0, learning_rate=0.1,
                    noise_source=Randomness.reproducible(9, "dtypes").source("noise", 1))
    before = [p.detach().clone() for p in net.parameters()]
    X, y = _batch(8)
    model.step(X, y)
    for p, b in zip(net.parameters(), before):
        assert p.dtype == b.dtype and not torch.equal(p, b)


class _ToDouble(nn.Module):
    def forward(self, x):
        return x.double()
