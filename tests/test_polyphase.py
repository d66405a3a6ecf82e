"""The polyphase iCNN (model/polyphase.py) computes what the folded ICNN computes, to float rounding."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batch_parse.model.fuse import fold_icnn, optimize_for_inference
from batch_parse.model.icnn import ICNN
from batch_parse.model.polyphase import PolyphaseICNN, UpMixConv, add_interleaved
from batch_parse.model.weights import load_weights, resolve

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Logits reach ~15 on the real weights; float rounding of the regrouped sums is ~1e-5 there.
# A wrong tap or border moves logits by 1e-2 or more (test_the_border_correction_is_needed).
ATOL = 1e-4


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("height,width", [(128, 128), (81, 81), (41, 41), (21, 21), (97, 113), (6, 3), (3, 5)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_upmix_equals_conv_of_the_upsampled_concatenation(height, width, layout):
    torch.manual_seed(height * width)
    conv = nn.Conv2d(24 + 16, 8, 5, padding=2)
    mix = UpMixConv(conv, 24)
    x = torch.randn(3, 24, height, width)
    coarse = torch.randn(3, 16, (height + 1) // 2, (width + 1) // 2)
    if layout == "channels_last":
        x, coarse = channels_last(x), channels_last(coarse)
    with torch.no_grad():
        want = conv(torch.cat([x, F.interpolate(coarse, size=(height, width), mode="nearest")], 1))
        got = mix([x], coarse)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_the_border_correction_is_needed():
    """Without the subtraction of the duplicate's extra row/column, the last two rows/columns are wrong."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8 + 16, 8, 5, padding=2)
    mix = UpMixConv(conv, 8)
    x, coarse = torch.randn(2, 8, 81, 81), torch.randn(2, 16, 41, 41)
    with torch.no_grad():
        want = conv(torch.cat([x, F.interpolate(coarse, size=(81, 81), mode="nearest")], 1))
        uncorrected = F.conv2d(x, mix.weight_same, mix.bias, padding=2)
        add_interleaved(uncorrected, F.conv2d(coarse, mix.weight_poly, None, padding=1))
    err = (uncorrected - want).abs()
    assert err[..., :79, :79].max() < 1e-5
    assert err[..., 79:, :].amax((0, 1, 3)).min() > 1e-2 and err[..., :, 79:].amax((0, 1, 2)).min() > 1e-2


def random_folded_icnn(num_classes: int, seed: int) -> ICNN:
    """An ICNN with random weights and BatchNorm statistics, folded as for inference."""
    torch.manual_seed(seed)
    net = ICNN(num_classes).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    fold_icnn(net)
    return net.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("size,num_classes", [(128, 10), (81, 2), (81, 4)])
def test_random_icnn_logits_match(size, num_classes):
    folded = random_folded_icnn(num_classes, seed=size + num_classes)
    poly = PolyphaseICNN(copy.deepcopy(folded)).to(memory_format=torch.channels_last)
    x = channels_last(torch.rand(4, 3, size, size))
    with torch.inference_mode():
        want, got = folded(x), poly(x)
    assert want.abs().max() > 0.1  # not a degenerate net
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_polyphase_refuses_an_unfolded_icnn():
    with pytest.raises(ValueError, match="folded"):
        PolyphaseICNN(ICNN(9))


@pytest.mark.parametrize("registry_name", ["stn-icnn/default", "stn-icnn/v3"])
def test_real_weights_logits_match(registry_name):
    _, path = resolve(registry_name)
    model, _ = load_weights(path)
    old = optimize_for_inference(model, polyphase=False)
    new = optimize_for_inference(model)
    assert isinstance(new.stage1, PolyphaseICNN) and isinstance(model.stage1, ICNN)  # the original untouched
    torch.manual_seed(1)
    nets = [("stage1", old.stage1, new.stage1, model.cfg.stage1_size)]
    nets += [(name, old.stage2[name], new.stage2[name], model.cfg.part_size) for name in old.stage2]
    with torch.inference_mode():
        for name, a, b, size in nets:
            x = channels_last(torch.rand(4, 3, size, size))
            want, got = a(x), b(x)
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=lambda m: f"{name}: {m}")
            assert torch.equal(got.argmax(1), want.argmax(1)), name
