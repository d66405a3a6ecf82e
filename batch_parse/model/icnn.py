"""The interlinked CNN (iCNN, Zhou et al. 2015): four scales that exchange features three times."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from batch_parse.model.config import ICNNConfig


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=1, padding=k // 2)


def _downsample(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def _upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # Nearest to the exact size of the finer row: 41 -> 81 is not a factor of 2.
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


class InterlinkNode(nn.Module):
    """One row of an interlinking layer: mix [finer row pooled, own row, coarser row upsampled]."""

    def __init__(self, cin: int, width: int, k: int):
        super().__init__()
        self.mix_conv = _conv(cin, width, k)
        self.mix_bn = nn.BatchNorm2d(width)
        self.conv = _conv(width, width, k)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.mix_bn(self.mix_conv(x)))
        return F.relu(self.bn(self.conv(x)))


class ICNN(nn.Module):
    """Image (N,3,H,W) in 0..1 -> logits (N,num_classes,H,W)."""

    def __init__(self, num_classes: int, cfg: ICNNConfig = ICNNConfig()):
        super().__init__()
        w, k = cfg.widths, cfg.kernel_size
        rows = len(w)
        self.input_conv = nn.ModuleList(_conv(cfg.in_channels, w[r], k) for r in range(rows))
        self.input_bn = nn.ModuleList(nn.BatchNorm2d(w[r]) for r in range(rows))
        mix_in = [w[r] + (w[r - 1] if r > 0 else 0) + (w[r + 1] if r + 1 < rows else 0) for r in range(rows)]
        self.interlinks = nn.ModuleList(
            nn.ModuleList(InterlinkNode(mix_in[r], w[r], k) for r in range(rows)) for _ in range(cfg.interlink_layers)
        )
        # Output integration, coarse to fine: row r-1 absorbs the upsampled row r.
        self.integrate_conv = nn.ModuleList(_conv(w[r] + w[r + 1], w[r], k) for r in range(rows - 1))
        self.integrate_bn = nn.ModuleList(nn.BatchNorm2d(w[r]) for r in range(rows - 1))
        hidden = 2 * num_classes + 8
        self.head_conv1 = _conv(w[0], hidden, k)
        self.head_bn1 = nn.BatchNorm2d(hidden)
        self.head_conv2 = _conv(hidden, num_classes, k)
        self.head_conv3 = _conv(num_classes, num_classes, cfg.last_kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scales = [x]
        for _ in range(1, len(self.input_conv)):
            scales.append(_downsample(scales[-1]))
        rows = [torch.tanh(bn(conv(s))) for conv, bn, s in zip(self.input_conv, self.input_bn, scales)]

        for layer in self.interlinks:
            new_rows = []
            for r, node in enumerate(layer):
                parts = []
                if r > 0:
                    parts.append(_downsample(rows[r - 1]))
                parts.append(rows[r])
                if r + 1 < len(rows):
                    parts.append(_upsample_to(rows[r + 1], rows[r]))
                new_rows.append(node(torch.cat(parts, dim=1)))
            rows = new_rows

        for r in range(len(rows) - 1, 0, -1):
            merged = torch.cat([rows[r - 1], _upsample_to(rows[r], rows[r - 1])], dim=1)
            rows[r - 1] = torch.tanh(self.integrate_bn[r - 1](self.integrate_conv[r - 1](merged)))

        y = torch.tanh(self.head_bn1(self.head_conv1(rows[0])))
        # No norm or activation between these two: the authors' BNs for them exist but are unused.
        return self.head_conv3(self.head_conv2(y))
