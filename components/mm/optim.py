"""The optimiser side of a training step.

  ema_momentum      the EMA's momentum for a schedule's length
  BF16OptimWrapper  the forward pass and loss in bfloat16 autocast on CPU or GPU, the weights in float32
  GroupedOptimWrapperConstructor  mmengine's per-weight settings, with the weights of equal settings in one group
  FastExpMomentumEMA ExpMomentumEMA updated with one foreach call per iteration instead of one call per tensor
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from mmdet.models.layers import ExpMomentumEMA
from mmdet.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper


def ema_momentum(iters: int) -> tuple[float, int]:
    """ExpMomentumEMA's (momentum, gamma) for a schedule of `iters` iterations: the momentum starts near 1 (the
    average follows the model while that changes fast) and settles to about 1 / (iters / 6), so that at the
    end it averages over the last sixth of the schedule, the learning-rate decay."""
    return min(0.5, 6 / iters), max(1, iters // 10)


@OPTIM_WRAPPERS.register_module(force=True)
class BF16OptimWrapper(OptimWrapper):
    """OptimWrapper with the forward pass and loss under bfloat16 autocast, on whatever device the model is on.
    Weights, gradients and optimiser state stay float32; bfloat16 has float32's range, so no loss scaling
    (mmengine's AmpOptimWrapper is for CUDA float16 and refuses a CPU). Validation runs outside it, in float32."""

    @contextmanager
    def optim_context(self, model):
        device = next(model.parameters()).device.type
        with super().optim_context(model), torch.autocast(device, dtype=torch.bfloat16):
            yield


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class GroupedOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's constructor, which makes one parameter group per weight wherever paramwise_cfg is set (no weight
    decay for norms and biases), with the weights of equal settings put back into one group: the fused AdamW then
    updates all of them in one call per group instead of one per weight. The same update: AdamW treats every
    weight on its own."""

    def __call__(self, model):
        wrapper = super().__call__(model)
        groups: dict[tuple, dict] = {}
        for group in wrapper.optimizer.param_groups:
            settings = {k: v for k, v in group.items() if k != "params"}
            key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
            groups.setdefault(key, dict(settings, params=[]))["params"].extend(group["params"])
        wrapper.optimizer.param_groups[:] = list(groups.values())
        return wrapper


@MODELS.register_module(force=True)
class FastExpMomentumEMA(ExpMomentumEMA):
    """ExpMomentumEMA, every averaged tensor updated by one foreach lerp per iteration instead of the original's
    per-tensor Python loop: the same average, faster. Integer buffers (BatchNorm's counters) are not averaged, as
    in the original."""

    def update_parameters(self, model) -> None:
        if self.steps == 0 or self.steps % self.interval:  # the first copy, and the steps between updates
            super().update_parameters(model)
            return
        source = model.state_dict() if self.update_buffers else dict(model.named_parameters())
        keys = [k for k, p in self.avg_parameters.items() if p.dtype.is_floating_point]
        momentum = (1 - self.momentum) * math.exp(-float(1 + self.steps) / self.gamma) + self.momentum
        device = next(iter(self.avg_parameters.values())).device
        torch._foreach_lerp_([self.avg_parameters[k].data for k in keys],
                             [source[k].data.to(device) for k in keys], momentum)
        if not self.update_buffers:  # buffers follow the model, as in the original
            for b_avg, b_src in zip(self.module.buffers(), model.buffers()):
                b_avg.data.copy_(b_src.data.to(b_avg.device))
        self.steps += 1
