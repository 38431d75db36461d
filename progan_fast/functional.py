"""Functional API: every op of progan_fast as a function, dispatched to the selected backend."""
from .ops.bias_act import bias_act
from .ops.equalized_conv import equalized_conv2d
from .ops.equalized_linear import equalized_linear
from .ops.gradient_penalty import gradient_penalty
from .ops.fade import downsample2x, fade, fade_downsample, fade_upsample, upsample2x
from .ops.minibatch_stddev import minibatch_stddev
from .ops.pixel_norm import pixel_norm

__all__ = ["bias_act", "equalized_conv2d", "equalized_linear", "pixel_norm", "minibatch_stddev", "fade",
           "fade_upsample", "fade_downsample", "upsample2x", "downsample2x", "gradient_penalty"]
