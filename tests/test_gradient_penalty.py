"""WGAN-GP through a tiny discriminator: second derivatives checked numerically in float64."""
import pytest
import torch
from torch.func import functional_call

import progan_fast
import progan_fast.functional as PF
from progan_fast import reference

TINY = dict(resolution=8, fmap_base=8, fmap_max=4)  # widths 4 at 4x4, 2 at 8x8


def tiny_discriminator(cls):
    torch.manual_seed(3)
    model = cls(**TINY).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.3)
    return model


def penalty(model, params, x_hat, alpha):
    scores = functional_call(model, params, (x_hat, alpha))
    grad, = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    return PF.gradient_penalty(grad)


@pytest.mark.parametrize("cls", [progan_fast.Discriminator, reference.Discriminator])
@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_discriminator_gradgradcheck(cls, alpha):
    model = tiny_discriminator(cls)
    names = [name for name, _ in model.named_parameters()]
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, requires_grad=True)

    def scores(x, *params):
        return functional_call(model, dict(zip(names, params)), (x, alpha))

    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    assert torch.autograd.gradgradcheck(scores, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls", [progan_fast.Discriminator, reference.Discriminator])
def test_penalty_parameter_gradients_match_finite_differences(cls):
    model = tiny_discriminator(cls)
    names = [name for name, _ in model.named_parameters()]
    x_hat = torch.randn(4, 3, 8, 8, dtype=torch.float64, requires_grad=True)

    def penalty_of(*params):
        return penalty(model, dict(zip(names, params)), x_hat, 0.7)

    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    assert torch.autograd.gradcheck(penalty_of, params, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_fast_and_reference_penalty_gradients_agree():
    ref, fast = tiny_discriminator(reference.Discriminator), tiny_discriminator(progan_fast.Discriminator)
    fast.load_state_dict(ref.state_dict())
    real, fake = torch.randn(2, 4, 3, 8, 8, dtype=torch.float64)
    u = torch.rand(4, 1, 1, 1, dtype=torch.float64)
    x_hat = (real + (fake - real) * u).requires_grad_()
    for model in (ref, fast):
        penalty(model, dict(model.named_parameters()), x_hat, 0.3).backward()
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12, msg=name)
    assert any(p.grad.abs().sum() > 0 for p in fast.parameters())
