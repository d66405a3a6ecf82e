"""Inference-only iCNN whose convolutions of nearest-upsampled rows run at the coarse resolution.

Why: each interlink mix and output integration convolves cat([..., up(c)]); the upsampled channels
are 44-67% of those inputs. Done at c's resolution they cost 9/25 of the MACs, and neither up(c) nor
the concatenation is built: the iCNNs run ~1.2x faster on CPU (stage 1 0.80x, stage 2 0.82-0.85x time).
Derivation: up(c)[i] = c[i // 2], so a 5x5 (padding 2) output at row 2k reads c[k-1,k-1,k,k,k+1] and at
2k+1 reads c[k-1,k,k,k+1,k+1]: per phase a 3x3 conv of c with taps {0,1},{2,3},{4} / {0},{1,2},{3,4} summed.
Odd finer rows (41 -> 81) are the duplicate cropped; its one extra row/column would reach the last two
output rows/columns, so that row's (column's) contribution is subtracted (UpMixConv). Outputs equal the
folded ICNN's up to float rounding (~1e-5 on logits of ~15). Built from a folded ICNN (fuse.py), never trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from batch_parse.model.icnn import ICNN, _downsample

# Per output phase (0 even, 1 odd): which 5x5 taps land on coarse offsets -1, 0, +1.
_PHASE_TAPS = (((0, 1), (2, 3), (4,)), ((0,), (1, 2), (3, 4)))


def polyphase_kernel(weight: torch.Tensor) -> torch.Tensor:
    """(Cout,Cin,5,5) -> (4*Cout,Cin,3,3); output channel (2*i+j)*Cout+o is phase (row i, column j) of o."""
    cout, cin, kh, kw = weight.shape
    if (kh, kw) != (5, 5):
        raise ValueError(f"polyphase_kernel needs a 5x5 kernel, got {kh}x{kw}")
    out = weight.new_zeros(2, 2, cout, cin, 3, 3)
    for i in range(2):
        for j in range(2):
            for u, rows in enumerate(_PHASE_TAPS[i]):
                for v, cols in enumerate(_PHASE_TAPS[j]):
                    taps = weight[:, :, list(rows)][:, :, :, list(cols)]
                    out[i, j, :, :, u, v] = taps.sum((2, 3))
    return out.reshape(4 * cout, cin, 3, 3)


def add_interleaved(out: torch.Tensor, phases: torch.Tensor) -> None:
    """out[:, :, 2k+i, 2l+j] += phases[:, (2i+j)*C : (2i+j+1)*C, k, l] wherever out has that pixel.

    As views (no pixel_shuffle copy): the even-sized block at once, then an odd last row/column.
    """
    c, (H, W) = out.shape[1], out.shape[-2:]
    he, we = H // 2, W // 2
    p = phases.unflatten(1, (2, 2, c))  # (N, i, j, C, h, w)
    out[:, :, : 2 * he, : 2 * we].unflatten(2, (he, 2)).unflatten(4, (we, 2)).add_(
        p[..., :he, :we].permute(0, 3, 4, 1, 5, 2))
    if H % 2:
        out[:, :, 2 * he, : 2 * we].unflatten(2, (we, 2)).add_(p[:, 0, :, :, he, :we].permute(0, 2, 3, 1))
    if W % 2:
        out[:, :, : 2 * he, 2 * we].unflatten(2, (he, 2)).add_(p[:, :, 0, :, :he, we].permute(0, 2, 3, 1))
    if H % 2 and W % 2:
        out[:, :, 2 * he, 2 * we] += p[:, 0, 0, :, he, we]


class UpMixConv(nn.Module):
    """conv(cat(same + [nearest_up(coarse)])) for a 5x5, padding-2 conv, without building either.

    For an odd finer row (H = 2h-1) the polyphase sum is that of the uncropped duplicate, whose
    extra last row (c's last row again) reaches output rows H-1 (tap 3) and H-2 (tap 4); those
    contributions (and the extra column's, likewise) are subtracted: 1x5 (5x1) convolutions of
    one duplicated coarse row (column).
    """

    def __init__(self, conv: nn.Conv2d, same_channels: int):
        super().__init__()
        if conv.kernel_size != (5, 5) or conv.padding != (2, 2) or conv.stride != (1, 1) or conv.groups != 1:
            raise ValueError("UpMixConv needs a 5x5, stride-1, padding-2 convolution")
        w = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else w.new_zeros(w.shape[0])
        wc = w[:, same_channels:]
        self.register_buffer("weight", w.clone())  # the original, for shapes other than 2x
        self.register_buffer("bias", bias.clone())
        self.register_buffer("weight_same", w[:, :same_channels].clone())
        self.register_buffer("weight_poly", polyphase_kernel(wc))
        # The extra row's taps onto output rows H-1 and H-2 (the extra column's: columns W-1, W-2).
        self.register_buffer("weight_row", torch.cat([wc[:, :, 3:4], wc[:, :, 4:5]]).clone())
        # The column's as a 1x5 too (transposed): oneDNN runs 5x1 kernels on 1-wide maps slowly.
        self.register_buffer("weight_col", torch.cat([wc[:, :, :, 3:4], wc[:, :, :, 4:5]]).transpose(2, 3).contiguous())

    def reference(self, x: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(coarse, size=x.shape[-2:], mode="nearest")
        return F.conv2d(torch.cat([x, up], 1), self.weight, self.bias, padding=2)

    def forward(self, same: list[torch.Tensor], coarse: torch.Tensor) -> torch.Tensor:
        x = same[0] if len(same) == 1 else torch.cat(same, 1)
        H, W = x.shape[-2:]
        h, w = coarse.shape[-2:]
        if h != (H + 1) // 2 or w != (W + 1) // 2 or min(H, W) < 3:
            return self.reference(x, coarse)  # not a 2x (cropped) nearest upsampling: the plain way
        out = F.conv2d(x, self.weight_same, self.bias, padding=2)
        add_interleaved(out, F.conv2d(coarse, self.weight_poly, None, padding=1))
        c = out.shape[1]
        if H % 2:
            extra = coarse[:, :, h - 1 :].repeat_interleave(2, 3)  # the duplicate's row 2h-1, columns 0..2w-1
            d = F.conv2d(extra, self.weight_row, None, padding=(0, 2))[:, :, 0, :W]
            out[:, :, H - 1] -= d[:, :c]
            out[:, :, H - 2] -= d[:, c:]
        if W % 2:
            # The duplicate's column 2w-1, rows 0..H-1, laid out as a row.
            extra = coarse[:, :, :, w - 1 :].transpose(2, 3).repeat_interleave(2, 3)[..., :H]
            d = F.conv2d(extra, self.weight_col, None, padding=(0, 2))[:, :, 0]
            out[..., W - 1] -= d[:, :c]
            out[..., W - 2] -= d[:, c:]
        return out


class _Node(nn.Module):
    def __init__(self, mix: nn.Module, conv: nn.Conv2d):
        super().__init__()
        self.mix, self.conv = mix, conv


class PolyphaseICNN(nn.Module):
    """The folded ICNN's forward with every up-and-concatenate convolution as an UpMixConv."""

    def __init__(self, net: ICNN):
        super().__init__()
        bns = [*net.input_bn, *net.integrate_bn, net.head_bn1] + [m for layer in net.interlinks for node in layer
                                                                 for m in (node.mix_bn, node.bn)]
        if not all(isinstance(bn, nn.Identity) for bn in bns):
            raise ValueError("PolyphaseICNN takes a folded ICNN (fuse.fold_icnn)")
        rows = len(net.input_conv)
        widths = [conv.out_channels for conv in net.input_conv]
        self.input_conv = net.input_conv
        self.interlinks = nn.ModuleList()
        for layer in net.interlinks:
            nodes = nn.ModuleList()
            for r, node in enumerate(layer):
                if r + 1 < rows:
                    same = widths[r] + (widths[r - 1] if r > 0 else 0)
                    nodes.append(_Node(UpMixConv(node.mix_conv, same), node.conv))
                else:
                    nodes.append(_Node(node.mix_conv, node.conv))
            self.interlinks.append(nodes)
        self.integrate = nn.ModuleList(UpMixConv(conv, widths[r]) for r, conv in enumerate(net.integrate_conv))
        self.head_conv1, self.head_conv2, self.head_conv3 = net.head_conv1, net.head_conv2, net.head_conv3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scales = [x]
        for _ in range(1, len(self.input_conv)):
            scales.append(_downsample(scales[-1]))
        rows = [torch.tanh(conv(s)) for conv, s in zip(self.input_conv, scales)]

        last = len(rows) - 1
        for layer in self.interlinks:
            new_rows = []
            for r, node in enumerate(layer):
                same = ([_downsample(rows[r - 1])] if r > 0 else []) + [rows[r]]
                if r < last:
                    y = node.mix(same, rows[r + 1])
                else:
                    y = node.mix(torch.cat(same, 1))
                new_rows.append(F.relu(node.conv(F.relu(y))))
            rows = new_rows

        for r in range(last, 0, -1):
            rows[r - 1] = torch.tanh(self.integrate[r - 1]([rows[r - 1]], rows[r]))

        y = torch.tanh(self.head_conv1(rows[0]))
        return self.head_conv3(self.head_conv2(y))
