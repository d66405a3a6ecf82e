"""STN-iCNN (Tang et al. 2021): stage-1 iCNN, ResNet-18 localiser, four stage-2 part iCNNs."""

from __future__ import annotations

import torch
from torch import nn

from batch_parse.labels import NUM_PART_CLASSES, PARTS, STAGE2_NETWORKS, STAGE2_OUTPUTS
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
        # The localiser sees the part classes only (coarse classes folded into background, see
        # localise), so a 10-class stage 1 feeds the same 9-channel localiser as a 9-class one.
        self.localiser = ResNet18(NUM_PART_CLASSES, cfg.num_parts * 6)
        self.stage2 = nn.ModuleDict({name: ICNN(STAGE2_OUTPUTS[name], cfg.icnn) for name in STAGE2_NETWORKS})
        self.register_buffer("theta_mask", THETA_MASK.clone(), persistent=False)

    def localise(self, stage1_probs: torch.Tensor) -> torch.Tensor:
        """Stage-1 softmax (N,C,S,S) -> theta (N,P,2,3). The localiser sees probabilities, not logits."""
        theta = self.localiser(part_probs(stage1_probs)).view(-1, self.cfg.num_parts, 2, 3)
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


def part_probs(stage1_probs: torch.Tensor) -> torch.Tensor:
    """(N,C,S,S) stage-1 softmax -> (N,9,S,S): coarse classes (skin) added to background.

    Part windows depend on where the parts are, not on where the skin ends; and a localiser
    trained on 9-class probabilities (v2's) reads a 10-class stage 1 unchanged this way.
    """
    if stage1_probs.shape[1] == NUM_PART_CLASSES:
        return stage1_probs
    background = stage1_probs[:, :1] + stage1_probs[:, NUM_PART_CLASSES:].sum(1, keepdim=True)
    return torch.cat([background, stage1_probs[:, 1:NUM_PART_CLASSES]], 1)
