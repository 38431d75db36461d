"""Activations follow the models' memory format end to end: in a channels_last training step (a fade, so both
branches of G's output and D's input run) every EqualizedConv2d of G and D gets a channels_last input (G's 4x4
input, the upsampling convs, toRGB; D on reals, fakes and the penalty's mixed images), and so does the gradient
penalty (D's input gradient); the step computes what the contiguous step computes; and the trainer's
--channels-last puts networks and reals in the format it names."""
import dataclasses

import pytest
import torch

import progan_fast
from progan_fast import functional as PF
from progan_fast.backend import unavailable_reason
from progan_fast.layout import PIXEL_ALIGNMENT, is_channels_last
from progan_fast.training.config import build_networks, build_parser, preset_config, resolve
from progan_fast.training.loop import Trainer
from progan_fast.training.step import TrainStep

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RES = 8
# lr 0: the weights stay put, so the gradients of both networks are functions of the same weights and inputs in
# both layouts (a first Adam step with beta1 = 0 would turn rounding differences into full-size updates).
CONFIG = dataclasses.replace(preset_config("official"), resolution=RES, fmap_base=64, fmap_max=16, lr=0.0,
                             minibatch={4: 4, 8: 4})
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    unavailable_reason("triton", DEVICE) is not None, reason="the triton backend cannot run here"))]
FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def in_format(t: torch.Tensor, memory_format: torch.memory_format) -> bool:
    """t is laid out in memory_format and not also in the other one (a shape where both coincide proves nothing);
    channels_last includes its padded variant (minibatch stddev's triton output, `progan_fast.layout`)."""
    if memory_format == torch.channels_last:
        return is_channels_last(t)
    return t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last)


def fade_step(backend: str, memory_format: torch.memory_format, monkeypatch):
    """One fading training step with networks and reals in memory_format; (the step, whether each input of every
    conv (by module name), each output of G and each input of D was in memory_format, the same for the penalty's
    inputs)."""
    torch.manual_seed(0)
    G, D = build_networks(CONFIG)
    for net in (G, D):
        net.to(DEVICE, memory_format=memory_format)
        with torch.no_grad():  # random biases: zero ones would leave parts of the gradients untested
            for name, p in net.named_parameters():
                if name.endswith("bias"):
                    p.normal_(std=0.3)
    layouts, penalty_inputs = {}, []
    # G's images (after the fade) and D's inputs (reals, fakes, mixed) before D lays them out itself.
    G.register_forward_hook(lambda module, args, images: layouts.setdefault("G output", []).append(
        in_format(images, memory_format)))
    D.register_forward_pre_hook(lambda module, args: layouts.setdefault("D input", []).append(
        in_format(args[0], memory_format)))
    for prefix, net in (("G", G), ("D", D)):
        for name, module in net.named_modules():
            if isinstance(module, progan_fast.EqualizedConv2d):
                module.register_forward_pre_hook(
                    lambda module, args, key=f"{prefix}.{name}": layouts.setdefault(key, []).append(
                        in_format(args[0], memory_format)))
    # The pixel stride of D's 4x4 conv input (512 + 1 channels at full width).
    D.blocks[0].conv.register_forward_pre_hook(
        lambda module, args: layouts.setdefault("D 4x4 conv pixel stride", []).append(args[0].stride(3)))
    penalty = PF.gradient_penalty
    monkeypatch.setattr(PF, "gradient_penalty", lambda grad, **kwargs: (
        penalty_inputs.append(in_format(grad, memory_format)), penalty(grad, **kwargs))[1])
    gan = TrainStep(G, D, CONFIG, DEVICE)
    gan.new_optimizers(RES)
    generator = torch.Generator().manual_seed(1)
    reals = (torch.rand(4, 3, RES, RES, generator=generator) * 2 - 1).to(DEVICE, memory_format=memory_format)
    with progan_fast.use_backend(backend):
        gan(reals, RES, torch.tensor(0.4, device=DEVICE), images_shown=0)
    monkeypatch.setattr(PF, "gradient_penalty", penalty)
    return gan, layouts, penalty_inputs


@pytest.fixture(autouse=True)
def exact_fp32(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the same rounding in both layouts


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", FORMATS)
def test_every_conv_and_the_penalty_see_the_chosen_format(backend, layout, monkeypatch):
    gan, layouts, penalty_inputs = fade_step(backend, FORMATS[layout], monkeypatch)
    # At 8x8 while fading: G's 4x4 block, both convs of the 8x8 block, both toRGBs; D's two fromRGBs (reals,
    # fakes and mixed images, and their downsampled copies), both convs of its 8x8 block, its 4x4 conv.
    expected = {"G.blocks.0.conv", "G.blocks.1.conv0", "G.blocks.1.conv1", "G.to_rgb.0", "G.to_rgb.1",
                "D.from_rgb.0", "D.from_rgb.1", "D.blocks.1.conv0", "D.blocks.1.conv1", "D.blocks.0.conv",
                "G output", "D input"}
    pixel_strides = layouts.pop("D 4x4 conv pixel stride")
    assert set(layouts) == expected
    if backend == "triton" and layout == "channels_last":
        # 16 + 1 channels here, written 16-element aligned by minibatch stddev: the conv's loads are vectors.
        assert pixel_strides == [2 * PIXEL_ALIGNMENT] * 4
    wrong = sorted(name for name, seen in layouts.items() if not all(seen))
    assert not wrong, f"not {layout}: {wrong}"
    # D runs on reals, fakes and mixed images in the D step, on fakes in the G step: four times per conv.
    assert all(len(layouts[name]) == 4 for name in expected if name.startswith("D"))
    assert penalty_inputs == [True]
    assert gan.G.memory_format == gan.G_ema.memory_format == FORMATS[layout]


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_step_computes_what_the_contiguous_step_computes(backend, monkeypatch):
    steps = {layout: fade_step(backend, memory_format, monkeypatch)[0] for layout, memory_format in FORMATS.items()}
    channels_last, contiguous = steps["channels_last"], steps["contiguous"]
    torch.testing.assert_close(channels_last.stats, contiguous.stats, rtol=1e-5, atol=1e-6)  # losses, D scores
    for net in ("G", "D"):
        pairs = zip(getattr(channels_last, net).named_parameters(), getattr(contiguous, net).named_parameters())
        for (name, a), (_, b) in pairs:
            assert (a.grad is None) == (b.grad is None), name
            if a.grad is not None:
                scale = b.grad.abs().max().item()
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5 * scale, msg=f"{net}.{name}")


def test_module_to_sets_the_memory_format_and_keeps_the_state_dict():
    G = progan_fast.Generator(resolution=8, fmap_base=32, fmap_max=8)
    keys = list(G.state_dict())
    assert G.memory_format == torch.contiguous_format
    assert G.to(memory_format=torch.channels_last) is G and G.memory_format == torch.channels_last
    assert G.blocks[1].conv0.weight.is_contiguous(memory_format=torch.channels_last)
    G.to(torch.float32)  # other conversions keep the format
    assert G.memory_format == torch.channels_last and list(G.state_dict()) == keys
    images = G(torch.randn(2, G.latent_size), 8, 0.5)
    assert in_format(images, torch.channels_last)
    G.to(memory_format=torch.contiguous_format)
    assert G(torch.randn(2, G.latent_size), 8, 0.5).is_contiguous()


def test_the_trainer_puts_networks_and_reals_in_the_chosen_format(tmp_path):
    options = ["--resolution", "8", "--fmap-base", "32", "--fmap-max", "8", "--minibatch", "4:4,8:4",
               "--cache-dir", str(tmp_path / "cache"), "--tensorboard", "off", "--progress", "off", "--device", "cpu"]
    for flag, memory_format in (("on", torch.channels_last), ("off", torch.contiguous_format)):
        run = ["--out", str(tmp_path / f"run-{flag}"), "--channels-last", flag]  # a run folder each: each is locked
        trainer = Trainer(resolve(build_parser().parse_args(options + run)))
        assert trainer.gan.G.memory_format == trainer.gan.D.memory_format == trainer.gan.G_ema.memory_format \
            == memory_format
        assert in_format(trainer.data.batch(0, 4, 8), memory_format)
