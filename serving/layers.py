"""Depthwise convolutions in float32 under bfloat16 autocast on the CPU.

oneDNN's bfloat16 depthwise convolution is slower backwards than float32 on CPUs, where the other convolutions
are faster in bfloat16. `depthwise_in_float32(model)` runs the depthwise layers in float32 and leaves every
other layer to autocast. The weights and
the state dict are unchanged; training and inference both use it, so both compute the same.
"""

from __future__ import annotations

import torch


class Float32DepthwiseConv2d(torch.nn.Conv2d):
    """A depthwise Conv2d that computes in float32 on the CPU under autocast and returns autocast's dtype, as an
    autocast convolution does (the layers after it then run as before: in bfloat16, the cheaper on large maps)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            out = super().forward(x.float())
        return out.to(torch.get_autocast_dtype("cpu"))


def depthwise_in_float32(model: torch.nn.Module) -> int:
    """Make every depthwise Conv2d of model a Float32DepthwiseConv2d, in place; return how many."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Conv2d and module.groups > 1 and module.groups == module.in_channels:
            module.__class__ = Float32DepthwiseConv2d
            count += 1
    return count
