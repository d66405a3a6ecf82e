"""MTCNN's three networks (P-Net, R-Net, O-Net) and loading their weights from the facenet-pytorch wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

# facenet-pytorch ships the weights (MIT licence) but pins old torch/numpy and imports torchvision,
# so it is installed with --no-deps and only its data files are read; it is never imported.
WEIGHTS_PACKAGE = "facenet_pytorch"
INSTALL_COMMAND = "pip install --no-deps facenet-pytorch==2.6.0"

# Input normalisation the weights were trained with: RGB in 0..255 mapped to about -1..1.
PIXEL_MEAN = 127.5
PIXEL_SCALE = 1 / 128

# Each network's input side, and P-Net's output stride over its input (one 2x2 max-pool).
PNET_CELL = 12
PNET_STRIDE = 2
RNET_SIZE = 24
ONET_SIZE = 48


class PNet(nn.Module):
    """Proposal net: fully convolutional, a face score and a box offset for every 12x12 window (stride 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not-face logits
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,3,H,W) normalised -> face probability (N,h,w), offsets (N,4,h,w)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_1(x).softmax(dim=1)[:, 1], self.conv4_2(x)


class RNet(nn.Module):
    """Refine net: 24x24 crops -> face probability and box offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,3,24,24) normalised -> face probability (N,), offsets (N,4)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten_width_major(self.prelu3(self.conv3(x)))))
        return self.dense5_1(x).softmax(dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output net: 48x48 crops -> face probability, box offsets and five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # five x fractions of the box, then five y fractions

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N,3,48,48) normalised -> face probability (N,), offsets (N,4), landmarks (N,5,2) as box fractions."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_width_major(self.prelu4(self.conv4(x)))))
        points = self.dense6_3(x).view(-1, 2, 5).transpose(1, 2)
        return self.dense6_1(x).softmax(dim=1)[:, 1], self.dense6_2(x), points


def _flatten_width_major(x: torch.Tensor) -> torch.Tensor:
    # The weights come from a model that saw images transposed (width as rows, channels last); its
    # convolution kernels were transposed in the conversion, but the dense layers still expect the
    # features flattened in (width, height, channel) order.
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


def weight_paths() -> dict[str, Path] | None:
    """{"pnet": path, "rnet": path, "onet": path} in the installed facenet-pytorch, or None if it is not installed."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        paths = {name: Path(location) / "data" / f"{name}.pt" for name in ("pnet", "rnet", "onet")}
        if all(path.is_file() for path in paths.values()):
            return paths
    return None


def load_networks(paths: dict[str, Path], device: torch.device) -> tuple[PNet, RNet, ONet]:
    """The three networks with their weights, in eval mode on `device`."""
    nets = (PNet(), RNet(), ONet())
    for name, net in zip(("pnet", "rnet", "onet"), nets):
        net.load_state_dict(torch.load(paths[name], map_location="cpu", weights_only=True), strict=True)
        # channels_last: these narrow convolutions run 3-4x faster in it on CPU.
        net.eval().requires_grad_(False).to(device, memory_format=torch.channels_last)
    return nets
