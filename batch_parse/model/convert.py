"""Convert the authors' STN-iCNN checkpoints (aod321/STN-iCNN .pth.tar) to our safetensors layout.

Accepted inputs, any combination that together holds models A, B and C:
  A      {'model1', 'step', 'epoch', 'best_error'}             train_stage1.py
  A+B    {'model1', 'select_net', ...}                          2_tuning_cropper_model1.py
  C      {'model2', ...}                                        train_stage2.py
  A+B+C  {'model1', 'model2', 'select_net', ...}                3_end2end_tunning_all.py
  A+B+C  {'model': {'modelA.*', 'stn_model.*', 'modelC.*'}}     before_end2end notebook
A later file overrides an earlier one for the networks both hold.

The files are legacy torch pickles; they are read with weights_only=True and only the three
numpy globals their bookkeeping needs are allowlisted (never weights_only=False).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from batch_parse.labels import STAGE2_NETWORKS
from batch_parse.model.config import AUTHORS_CONFIG, ModelConfig
from batch_parse.model.stn_icnn import STNiCNN
from batch_parse.model.weights import WeightsError, save_weights

# Renames inside one iCNN, authors' name -> ours. Entries the authors' test-time forward never
# uses (see _UNUSED) are dropped.
_ICNN_RENAMES = [
    (r"input_conv\.(\d)\.", r"input_conv.\1."),
    (r"input_bnm\.(\d)\.", r"input_bn.\1."),
    (r"interlink_layers\.(\d)\.iCNN_Nodelist\.(\d)\.inter_conv_node_batchnorm\.", r"interlinks.\1.\2.mix_bn."),
    (r"interlink_layers\.(\d)\.iCNN_Nodelist\.(\d)\.inter_conv_node\.", r"interlinks.\1.\2.mix_conv."),
    (r"interlink_layers\.(\d)\.iCNN_Nodelist\.(\d)\.conv_node_batchnorm\.", r"interlinks.\1.\2.bn."),
    (r"interlink_layers\.(\d)\.iCNN_Nodelist\.(\d)\.conv_node\.", r"interlinks.\1.\2.conv."),
    (r"last_conv1\.", "head_conv1."),
    (r"last_con1_bnm\.", "head_bn1."),
    (r"last_conv2\.", "head_conv2."),
    (r"last_conv3\.", "head_conv3."),
]
_UNUSED = re.compile(r"(last_con2_bnm|last_conv3_bnm)\.|num_batches_tracked$")
_OUTPUT_NODE = re.compile(r"interlink_layers\.(\d)\.iCNN_Nodelist\.(\d)\.output_conv_node(_batchnorm)?\.(.*)")


def _allowed_globals() -> list:
    from numpy._core.multiarray import scalar

    return [(scalar, "numpy.core.multiarray.scalar"), np.dtype, np.dtypes.Float64DType]


def read_authors_checkpoint(path: str | Path) -> dict:
    """Load one authors' .pth.tar safely (weights_only=True plus a 3-entry numpy allowlist)."""
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except Exception as exc:
        raise WeightsError(f"{path}: not a loadable authors' checkpoint ({str(exc).splitlines()[0][:200]})") from None


def convert_icnn(sd: dict[str, torch.Tensor], last_layer: int, rows: int) -> dict[str, torch.Tensor]:
    """One authors' iCNN state dict -> our ICNN names."""
    out = {}
    for key, value in sd.items():
        if _UNUSED.search(key):
            continue
        node = _OUTPUT_NODE.fullmatch(key)
        if node:
            layer, row, is_bn, rest = int(node[1]), int(node[2]), node[3], node[4]
            # Only the last interlinking layer's output nodes take part in output integration,
            # and the coarsest row has nothing coarser to absorb.
            if layer == last_layer and row < rows - 1:
                out_key = f"integrate_{'bn' if is_bn else 'conv'}.{row}.{rest}"
                out[out_key] = value
            continue
        for pattern, repl in _ICNN_RENAMES:
            new, n = re.subn("^" + pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise WeightsError(f"unknown iCNN entry in authors' checkpoint: {key}")
    return out


def _split_bundle(ck: dict) -> dict[str, dict]:
    """Top-level checkpoint -> {'A': sd, 'B': sd, 'C': sd} for the networks it holds."""
    if "model" in ck and isinstance(ck["model"], dict):  # before_end2end notebook layout
        flat = ck["model"]
        ck = {
            "model1": {k[len("modelA."):]: v for k, v in flat.items() if k.startswith("modelA.")},
            "select_net": {k[len("stn_model."):]: v for k, v in flat.items() if k.startswith("stn_model.")},
            "model2": {k[len("modelC."):]: v for k, v in flat.items() if k.startswith("modelC.")},
        }
    found = {name: ck[key] for name, key in (("A", "model1"), ("B", "select_net"), ("C", "model2")) if ck.get(key)}
    if not found:
        raise WeightsError(f"no STN-iCNN networks in checkpoint (top-level keys: {sorted(ck)[:6]})")
    return found


def convert_state_dicts(nets: dict[str, dict], cfg: ModelConfig = AUTHORS_CONFIG) -> dict[str, torch.Tensor]:
    last, rows = cfg.icnn.interlink_layers - 1, len(cfg.icnn.widths)
    out = {f"stage1.{k}": v for k, v in convert_icnn(nets["A"], last, rows).items()}
    for key, value in nets["B"].items():
        if key.endswith("num_batches_tracked"):
            continue
        if not key.startswith("model_res."):
            raise WeightsError(f"unknown localiser entry in authors' checkpoint: {key}")
        out["localiser." + key[len("model_res."):]] = value
    by_net: dict[int, dict] = {}
    for key, value in nets["C"].items():
        m = re.fullmatch(r"model\.(\d)\.(.*)", key)
        if not m:
            raise WeightsError(f"unknown stage-2 entry in authors' checkpoint: {key}")
        by_net.setdefault(int(m[1]), {})[m[2]] = value
    for index, sd in sorted(by_net.items()):
        for k, v in convert_icnn(sd, last, rows).items():
            out[f"stage2.{STAGE2_NETWORKS[index]}.{k}"] = v
    return out


def load_authors_model(paths: list[str | Path], cfg: ModelConfig = AUTHORS_CONFIG) -> STNiCNN:
    nets: dict[str, dict] = {}
    for path in paths:
        nets.update(_split_bundle(read_authors_checkpoint(path)))
    missing = [n for n in ("A", "B", "C") if n not in nets]
    if missing:
        raise WeightsError(f"the checkpoints given lack model(s) {', '.join(missing)} (need A, B and C; e.g. the A+B and C files)")
    model = STNiCNN(cfg)
    sd = convert_state_dicts(nets, cfg)
    result = model.load_state_dict(sd, strict=False)
    missing_keys = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing_keys or result.unexpected_keys:
        raise WeightsError(f"converted checkpoint does not fit: missing {missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model.eval()


def convert_checkpoints(paths: list[str | Path], out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """The `batch-parse convert` command: authors' files -> one self-describing safetensors file."""
    model = load_authors_model(paths)
    save_weights(model, out, dtype=dtype, info={"source": "aod321/STN-iCNN checkpoints", "files": [Path(p).name for p in paths]})
    return Path(out)
