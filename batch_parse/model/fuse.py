"""Inference-only rewrites of a trained STN-iCNN: BatchNorm folded into the convolutions before it.

With 8-32 channels the iCNN's time goes as much to the elementwise BatchNorm passes as to the
convolutions; folding them (and running channels_last, see parser.py) makes the model ~1.7x
faster on CPU. Outputs change only by float rounding (~1e-7). The folded iCNNs then run their
convolutions of upsampled rows at the coarse resolution (polyphase.py): ~1.2x again, outputs
within ~1e-5 (float rounding). Never used for training.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from batch_parse.model.icnn import ICNN
from batch_parse.model.polyphase import PolyphaseICNN
from batch_parse.model.resnet import ResNet18
from batch_parse.model.stn_icnn import STNiCNN


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.data.mul_(scale[:, None, None, None])
    bias = conv.bias.data if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def fold_icnn(net: ICNN) -> None:
    for i, (conv, bn) in enumerate(zip(net.input_conv, net.input_bn)):
        _fold(conv, bn)
        net.input_bn[i] = nn.Identity()
    for layer in net.interlinks:
        for node in layer:
            _fold(node.mix_conv, node.mix_bn)
            _fold(node.conv, node.bn)
            node.mix_bn, node.bn = nn.Identity(), nn.Identity()
    for i, (conv, bn) in enumerate(zip(net.integrate_conv, net.integrate_bn)):
        _fold(conv, bn)
        net.integrate_bn[i] = nn.Identity()
    _fold(net.head_conv1, net.head_bn1)
    net.head_bn1 = nn.Identity()


def fold_resnet(net: ResNet18) -> None:
    """The localiser's BatchNorms folded too: a ResNet-18 on 128x128 spends ~10% of its time in them."""
    _fold(net.conv1, net.bn1)
    net.bn1 = nn.Identity()
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer:
            _fold(block.conv1, block.bn1)
            _fold(block.conv2, block.bn2)
            block.bn1, block.bn2 = nn.Identity(), nn.Identity()
            if block.downsample is not None:
                _fold(block.downsample[0], block.downsample[1])
                block.downsample[1] = nn.Identity()


@torch.no_grad()
def optimize_for_inference(model: STNiCNN, polyphase: bool = True) -> STNiCNN:
    """A folded, channels_last copy in eval mode; the original is left untouched.

    polyphase: the iCNNs as PolyphaseICNN (the default; False keeps the folded ICNN, for comparisons).
    """
    model = copy.deepcopy(model).eval()
    fold_icnn(model.stage1)
    fold_resnet(model.localiser)
    for net in model.stage2.values():
        fold_icnn(net)
    if polyphase:
        model.stage1 = PolyphaseICNN(model.stage1)
        for name in list(model.stage2):
            model.stage2[name] = PolyphaseICNN(model.stage2[name])
    return model.to(memory_format=torch.channels_last)
