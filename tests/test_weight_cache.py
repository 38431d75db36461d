"""Prepared conv weights (progan_fast.ops.weight_cache): built once per weight and optimizer step in a training
step, with the same results as preparing them at every call, and never stale after a weight changes."""
import collections
import dataclasses

import pytest
import torch

import progan_fast
from progan_fast.ops import weight_cache
from progan_fast.training.config import build_networks, preset_config
from progan_fast.training.step import TrainStep

RES = 8
CONFIG = dataclasses.replace(preset_config("official"), resolution=RES, fmap_base=64, fmap_max=16,
                             minibatch={4: 4, 8: 4})
PREPARE = weight_cache.prepared_weight


def two_steps(monkeypatch, cached: bool):
    """Two fading steps on the triton backend; (the networks, the builds of the second step by weight and slot)."""
    builds = collections.Counter()

    def counting(weight, slot, key, build):
        return PREPARE(weight, slot, key, lambda w: (builds.update([(names.get(id(weight), 'other'), slot)]), build(w))[1])
    monkeypatch.setattr(weight_cache, "_cacheable", weight_cache._cacheable if cached else lambda weight: False)
    monkeypatch.setattr("progan_fast.kernels.equalized_conv.prepared_weight", counting)
    monkeypatch.setattr(weight_cache, "prepared_weight", counting)
    torch.manual_seed(0)
    G, D = build_networks(CONFIG)
    names = {id(p): f"{n}.{k}" for n, net in (("G", G), ("D", D)) for k, p in net.named_parameters()}
    gan = TrainStep(G, D, CONFIG, torch.device("cpu"))
    gan.new_optimizers(RES)
    reals = torch.rand(4, 3, RES, RES, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with progan_fast.use_backend("triton"):
        gan(reals, RES, torch.tensor(0.4), images_shown=0)
        builds.clear()
        gan(reals, RES, torch.tensor(0.4), images_shown=0)
    return (G, D), builds


def test_built_once_per_weight_and_optimizer_step_with_the_results_of_per_call_preparation(monkeypatch):
    nets, builds = two_steps(monkeypatch, cached=True)
    assert builds and set(builds.values()) == {1}, builds  # each weight and slot once
    weights = {name for name, _ in builds}
    assert set(builds) == {(name, slot) for name in weights for slot in ("triton conv taps", "triton conv backward")}
    assert len(weights) == 10  # at 8x8 while fading: 5 convs of G, 5 of D
    uncached_nets, _ = two_steps(monkeypatch, cached=False)
    for net, uncached in zip(nets, uncached_nets):
        for (name, p), q in zip(net.named_parameters(), uncached.parameters()):
            assert torch.equal(p, q), name


@pytest.mark.parametrize("upsample", [False, True])
@pytest.mark.parametrize("change", ["adam", "fused adam", "load_state_dict", "in-place", "new data"])
def test_never_stale(change, upsample):
    layer = progan_fast.EqualizedConv2d(5, 7, 3, activation="lrelu", upsample=upsample)
    x = torch.randn(2, 5, 5, 6)
    with progan_fast.use_backend("triton"):
        layer(x).sum().backward()
        if change in ("adam", "fused adam"):
            torch.optim.Adam(layer.parameters(), lr=0.1, fused=change == "fused adam").step()
        elif change == "load_state_dict":
            layer.load_state_dict({"weight": torch.randn(7, 5, 3, 3), "bias": torch.randn(7)})
        elif change == "in-place":
            with torch.no_grad():
                layer.weight.mul_(-2)
        else:
            layer.weight.data = torch.randn(7, 5, 3, 3)
        got = layer(x)
    with progan_fast.use_backend("torch"):
        expected = layer(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
