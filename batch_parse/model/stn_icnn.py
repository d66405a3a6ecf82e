"""STN-iCNN (Tang et al. 2021): stage-1 iCNN, ResNet-18 localiser, four stage-2 part iCNNs."""

from __future__ import annotations

import torch
from torch import nn

from batch_parse.labels import PARTS, STAGE2_NETWORKS, STAGE2_OUTPUTS
from batch_parse.model.config import ModelConfig
from batch_parse.model.icnn import ICNN
from batch_parse.model.resnet import ResNet18

# Only scale and translation are free: rotation and shear entries are multiplied by zero.
THETA_MASK = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])


class STNiCNN(nn.Module):
    """The three networks. Geometry (windows, crops, paste-back) lives in geometry.py."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.stage1 = ICNN(cfg.num_classes, cfg.icnn)
        self.localiser = ResNet18(cfg.num_classes, cfg.num_parts * 6)
        self.stage2 = nn.ModuleDict({name: ICNN(STAGE2_OUTPUTS[name], cfg.icnn) for name in STAGE2_NETWORKS})
        self.register_buffer("theta_mask", THETA_MASK.clone(), persistent=False)

    def localise(self, stage1_probs: torch.Tensor) -> torch.Tensor:
        """Stage-1 softmax (N,9,S,S) -> theta (N,P,2,3). The localiser sees probabilities, not logits."""
        theta = self.localiser(stage1_probs).view(-1, self.cfg.num_parts, 2, 3)
        return theta * self.theta_mask

    def parse_parts(self, crops: torch.Tensor) -> list[torch.Tensor]:
        """Crops (N,P,3,s,s) -> per-part logits, list of (N, 1+classes, s, s) in PARTS order.

        Parts sharing a network (the two brows, the two eyes) run as one batch; the second of
        each pair is mirrored in and out so the shared network only ever sees side-1 parts.
        """
        logits: list[torch.Tensor | None] = [None] * len(PARTS)
        for name in STAGE2_NETWORKS:
            idx = [i for i, p in enumerate(PARTS) if p.network == name]
            batch = torch.cat([crops[:, i].flip(-1) if PARTS[i].mirrored else crops[:, i] for i in idx])
            out = self.stage2[name](batch).chunk(len(idx))
            for i, y in zip(idx, out):
                logits[i] = y.flip(-1) if PARTS[i].mirrored else y
        return logits  # type: ignore[return-value]
