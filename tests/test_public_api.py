"""The public names other GAN code imports, with the documented signatures; packaging of the kernels."""
import inspect
import os
import subprocess
import sys

import pytest

import progan_fast


@pytest.mark.parametrize("obj, expected", [
    (progan_fast.EqualizedConv2d, "(in_channels, out_channels, kernel_size, padding=None, bias=True, gain=1.4142135623730951, "
                                  "activation=None, negative_slope=0.2, pixel_norm=False, upsample=False, pixel_norm_eps=1e-08)"),
    (progan_fast.EqualizedLinear, "(in_features, out_features, bias=True, gain=1.4142135623730951, activation=None, "
                                  "negative_slope=0.2)"),
    (progan_fast.PixelNorm, "(eps=1e-08)"),
    (progan_fast.MinibatchStdDev, "(group_size=4, eps=1e-08)"),
    (progan_fast.Generator, "(resolution=1024, num_channels=3, latent_size=None, fmap_base=8192, fmap_max=512)"),
    (progan_fast.Discriminator, "(resolution=1024, num_channels=3, fmap_base=8192, fmap_max=512, mbstd_group_size=4)"),
    (progan_fast.reference.Generator, "(resolution=1024, num_channels=3, latent_size=None, fmap_base=8192, fmap_max=512)"),
    (progan_fast.reference.Discriminator, "(resolution=1024, num_channels=3, fmap_base=8192, fmap_max=512, "
                                          "mbstd_group_size=4)"),
])
def test_signatures(obj, expected):
    signature = inspect.signature(obj)
    plain = signature.replace(parameters=[p.replace(annotation=inspect.Parameter.empty) for p in
                                          signature.parameters.values()], return_annotation=inspect.Signature.empty)
    assert str(plain) == expected


def test_forward_signatures():
    assert list(inspect.signature(progan_fast.Generator.forward).parameters) == ["self", "z", "res", "alpha"]
    assert list(inspect.signature(progan_fast.Discriminator.forward).parameters) == ["self", "images", "alpha"]


def test_functional_names_exist():
    for name in ("equalized_conv2d", "equalized_linear", "bias_act", "pixel_norm", "minibatch_stddev", "fade",
                 "fade_upsample", "fade_downsample", "gradient_penalty"):
        assert callable(getattr(progan_fast.functional, name)), name
    for name in progan_fast.__all__:
        assert hasattr(progan_fast, name), name


def test_kernels_ship_inside_the_package_only(tmp_path):
    """progan_fast.kernels imports from anywhere; no top-level module called `kernels` is installed."""
    code = ("import importlib.util, progan_fast.kernels; "
            "assert importlib.util.find_spec('kernels') is None, 'a top-level kernels module is importable'")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True)


def test_the_backends_have_one_import_name(tmp_path):
    """From the repository root the folders kernels/ and csrc/ are importable as top-level names too: they refuse,
    naming the one way (progan_fast.kernels, progan_fast.csrc), so the same files never load twice."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name, one_way in (("kernels", "progan_fast.kernels"), ("csrc", "progan_fast.csrc")):
        result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=root, capture_output=True, text=True)
        assert result.returncode != 0 and f"the package {one_way}" in result.stderr, result.stderr


def test_every_op_module_of_each_backend_is_in_its_package():
    """kernels/<op>.py and csrc/<op>.py load as submodules of progan_fast and register on their op."""
    from progan_fast.backend import OPS
    import progan_fast.csrc.bias_act
    import progan_fast.kernels.bias_act

    assert progan_fast.kernels.bias_act.__name__ == "progan_fast.kernels.bias_act"
    assert OPS["bias_act"].impls["triton"] is progan_fast.kernels.bias_act.bias_act_triton
    assert OPS["bias_act"].impls["cuda"] is progan_fast.csrc.bias_act.bias_act_cuda
