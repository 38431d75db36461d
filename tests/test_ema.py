"""The EMA copy of G: its decay per step, and what a short demo run draws with it. After a few thousand images of
the built-in digits the EMA generator (every sample grid, metric and `generate`'s default) must be at least as
close to the reals as the trained generator, and both far closer than the initial generator."""
import dataclasses
import random

import pytest
import torch

from progan_fast import train
from progan_fast.metrics import generator_swd
from progan_fast.training import checkpoint as ckpt
from progan_fast.training.config import TrainConfig, build_networks
from progan_fast.training.data import RealImages, prepare_cache
from progan_fast.training.step import ema_decay
from tiny_runs import one_thread

# 4x4 then 8x8 on the built-in digits with the quick preset's EMA; small networks so that it takes seconds.
SHORT_DEMO = ["--resolution", "8", "--fmap-base", "128", "--fmap-max", "32", "--minibatch", "4:32,8:32",
              "--stable-kimg", "1.5", "--fade-kimg", "1.5", "--tick-kimg", "1.5", "--swd-images", "0",
              "--progress", "off", "--tensorboard", "off", "--seed", "3"]
EVALUATION_IMAGES = 512


def test_ema_decay_halves_the_gap_once_per_half_life_in_images():
    rng = random.Random(7)
    for _ in range(20):
        config = dataclasses.replace(TrainConfig(), ema_kimg=rng.uniform(0.5, 50), ema_rampup=rng.uniform(0.01, 0.5))
        batch, shown = rng.choice([4, 32, 128, 96]), rng.randrange(1, 2_000_000)
        half_life = min(config.ema_kimg * 1000, config.ema_rampup * shown)
        steps = half_life / batch
        assert ema_decay(config, batch, shown) ** steps == pytest.approx(0.5, rel=1e-9)
        assert ema_decay(dataclasses.replace(config, ema_rampup=0.0), batch, shown) ** (
            config.ema_kimg * 1000 / batch) == pytest.approx(0.5, rel=1e-9)  # no ramp-up: the half-life alone
        assert ema_decay(config, batch, 0) == 0.0  # the first step copies G
        fixed = rng.uniform(0.9, 0.9999)
        assert ema_decay(dataclasses.replace(config, ema_beta=fixed), batch, shown) == fixed


def generator(config: TrainConfig, weights=None) -> torch.nn.Module:
    torch.manual_seed(config.seed)  # as the trainer builds its networks: the initial weights when not loaded
    G, _ = build_networks(config)
    if weights is not None:
        G.load_state_dict(weights)
    return G.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("short_demo")
    with one_thread():
        train.main(SHORT_DEMO + ["--out", str(root / "run"), "--cache-dir", str(root / "cache")])
        final = ckpt.list_checkpoints(root / "run")[-1]
        state, _ = ckpt.load_state(final)
        config = TrainConfig.from_json(state["config"])
        data = RealImages(prepare_cache(None, 8, str(root / "cache")), config.seed, False, torch.device("cpu"),
                          channels_last=False)
        reals = data.evaluation_reals(EVALUATION_IMAGES, 8, config.seed)  # as the trainer's own SWD
        return {name: generator_swd(G, reals, 8, seed=config.seed)["mean"] for name, G in (
            ("initial", generator(config)), ("trained", generator(config, ckpt.load_weights(final, "G"))),
            ("ema", generator(config, ckpt.load_weights(final, "G_ema"))))}


def test_the_ema_generator_draws_as_well_as_the_trained_one(short_demo):
    print("SWD x1e3 at 8x8:", {name: round(value, 1) for name, value in short_demo.items()})
    assert short_demo["ema"] <= short_demo["trained"] * 1.05, short_demo
    assert short_demo["trained"] < short_demo["initial"] * 0.6, short_demo
    assert short_demo["ema"] < short_demo["initial"] * 0.6, short_demo
