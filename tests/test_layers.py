"""serving.layers: the depthwise layers computed in float32 under bfloat16 autocast, everything else unchanged."""

import copy

import torch

from platepipe.configs.model import stage_config
from platepipe.serving.layers import Float32DepthwiseConv2d, depthwise_in_float32


def _reader():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict

    register_all_modules(init_default_scope=True)
    torch.manual_seed(0)
    return MODELS.build(ConfigDict(stage_config("reader", "quick")["model"])).eval()


def test_only_the_depthwise_layers_change_class_and_the_weights_stay():
    model = _reader()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    depthwise = [m for m in model.modules() if type(m) is torch.nn.Conv2d and m.groups > 1]
    assert depthwise_in_float32(model) == len(depthwise) > 0
    assert all(type(m) is Float32DepthwiseConv2d for m in depthwise)
    assert all(m.groups == 1 for m in model.modules() if type(m) is torch.nn.Conv2d)  # the others left alone
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    twin = copy.deepcopy(model)  # the weight average (EMA) is a deep copy: it keeps the float32 layers
    assert sum(type(m) is Float32DepthwiseConv2d for m in twin.modules()) == len(depthwise)


def test_a_depthwise_layer_computes_in_float32_and_returns_autocasts_dtype():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 16, 5, padding=2, groups=16)
    x = torch.randn(2, 16, 12, 32)
    reference = conv(x)  # float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = conv(x)
    depthwise_in_float32(conv)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        patched = conv(x.requires_grad_())
    assert plain.dtype == patched.dtype == torch.bfloat16
    assert torch.equal(patched, reference.to(torch.bfloat16))  # float32 maths, rounded once at the end
    assert not torch.equal(plain, patched)  # bfloat16 maths round the inputs and weights first
    patched.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert torch.equal(conv(x), reference)  # without autocast: the plain float32 convolution


def test_a_whole_model_reads_the_same_in_float32_with_or_without_the_change():
    model = _reader()
    x = torch.randn(2, 3, 96, 256)
    with torch.no_grad():
        before = model.bbox_head(model.extract_feat(x))
        depthwise_in_float32(model)
        after = model.bbox_head(model.extract_feat(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.bbox_head(model.extract_feat(x))
    for b, a, m in zip(before[0] + before[1], after[0] + after[1], mixed[0] + mixed[1]):
        assert torch.equal(a, b)
        assert torch.allclose(m.float(), b, atol=0.5, rtol=0.1)  # bfloat16 elsewhere: close, not equal
