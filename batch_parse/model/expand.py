"""A model with more stage-1 classes, made from a trained one without changing what it predicts.

Fine-tuning v3 (10 classes: the parts plus skin) from v2 (9 classes) starts from v2's exact
behaviour: every tensor is copied, and the new class's logit is a copy of background's, both
lowered by log(1 + new classes), so the two split background's probability evenly: the part
probabilities, and so the localiser's input (stn_icnn.part_probs) and every part window, are v2's. Training then only has to split "background" into skin and the rest. The localiser and
the part networks do not change shape (the localiser sees part classes only, stn_icnn.part_probs).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from batch_parse.labels import BACKGROUND
from batch_parse.model.icnn import ICNN
from batch_parse.model.stn_icnn import STNiCNN

# The new head channels' first convolution starts this small (relative to PyTorch's own
# initialisation): it is multiplied by zeros in the next layer anyway, this only sets its gradient scale.
NEW_CHANNEL_INIT_SCALE = 0.1


@torch.no_grad()
def _grow_head(old: ICNN, new: ICNN) -> None:
    """Copies old's tensors into new, which has more classes: new classes repeat background."""
    k_old = old.head_conv3.out_channels
    h_old = old.head_conv1.out_channels
    src, dst = old.state_dict(), new.state_dict()
    for key, value in src.items():
        if dst[key].shape == value.shape:
            dst[key].copy_(value)
    added = range(k_old, new.head_conv3.out_channels)
    # head_conv1 / head_bn1: the old hidden channels as they were, the new ones small and random.
    dst["head_conv1.weight"][:h_old] = src["head_conv1.weight"]
    dst["head_conv1.weight"][h_old:] *= NEW_CHANNEL_INIT_SCALE
    dst["head_conv1.bias"][:h_old] = src["head_conv1.bias"]
    for name in ("weight", "bias", "running_mean", "running_var"):
        dst[f"head_bn1.{name}"][:h_old] = src[f"head_bn1.{name}"]
    # head_conv2: new hidden channels feed nothing yet; each new class reads what background reads.
    w2, b2 = dst["head_conv2.weight"], dst["head_conv2.bias"]
    w2.zero_()
    w2[:k_old, :h_old] = src["head_conv2.weight"]
    b2[:k_old] = src["head_conv2.bias"]
    # head_conv3: old classes ignore the new channels; a new class is background's combination.
    w3, b3 = dst["head_conv3.weight"], dst["head_conv3.bias"]
    w3.zero_()
    w3[:k_old, :k_old] = src["head_conv3.weight"]
    b3[:k_old] = src["head_conv3.bias"]
    share = math.log(1 + len(added))  # exp(bg - share) summed over the sharers = exp(bg)
    for c in added:
        w2[c, :h_old] = src["head_conv2.weight"][BACKGROUND]
        b2[c] = src["head_conv2.bias"][BACKGROUND]
        w3[c, :k_old] = src["head_conv3.weight"][BACKGROUND]
        b3[c] = src["head_conv3.bias"][BACKGROUND] - share
    b3[BACKGROUND] -= share
    new.load_state_dict(dst)


def with_classes(model: STNiCNN, num_classes: int) -> STNiCNN:
    """model with num_classes stage-1 classes (>= its own); the same model when equal."""
    if num_classes == model.cfg.num_classes:
        return model
    if num_classes < model.cfg.num_classes:
        raise ValueError(f"cannot drop classes: model has {model.cfg.num_classes}, asked for {num_classes}")
    grown = STNiCNN(dataclasses.replace(model.cfg, num_classes=num_classes))
    grown.localiser.load_state_dict(model.localiser.state_dict())
    grown.stage2.load_state_dict(model.stage2.state_dict())
    _grow_head(model.stage1, grown.stage1)
    return grown.train(model.training)
