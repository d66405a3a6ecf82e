"""Weights on disk: safetensors files with the model config inside, the named registry, checks.

A weights file is self-describing: its metadata holds the ModelConfig (geometry conventions
included), so authors' converted weights and ours load through the same door. Nothing here
unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from batch_parse.model.config import ModelConfig
from batch_parse.model.stn_icnn import STNiCNN

from batch_parse.model.registry import FORMAT, REGISTRY, WEIGHTS_DIR, file_sha256  # noqa: F401 (re-exported)


class WeightsError(ValueError):
    """A weights file that is missing, foreign, or does not fit the model (one-line message)."""


def resolve(name_or_path: str) -> tuple[str, Path]:
    """Registry name or file path -> (display name, path)."""
    if name_or_path in REGISTRY:
        path = REGISTRY[name_or_path]
        if not path.is_file():
            raise WeightsError(f"weights {name_or_path!r} are not installed (missing {path})")
        return name_or_path, path
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        known = ", ".join(REGISTRY)
        raise WeightsError(f"no weights named {name_or_path!r} and no such file (known names: {known})")
    return path.stem, path


def _persistent_keys(model: torch.nn.Module) -> dict[str, torch.Size]:
    # BatchNorm's num_batches_tracked only matters for training-time momentum: not shipped.
    return {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def save_weights(model: STNiCNN, path: str | Path, dtype: torch.dtype = torch.float32, info: dict | None = None) -> None:
    keep = _persistent_keys(model)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items() if k in keep}
    meta = {"format": FORMAT, "config": model.cfg.to_json(), "info": json.dumps(info or {})}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def weights_class_names(path: str | Path) -> tuple[str, ...]:
    """The classes a weights file labels (from its metadata alone, no tensors read): the output
    schema of a job follows them (9-class v1/v2 files have no pixels_skin column)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for foreign files
        raise WeightsError(f"{path}: not a safetensors weights file ({exc.__class__.__name__})") from None
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a batch-parse STN-iCNN weights file (format={meta.get('format')!r})")
    return ModelConfig.from_json(meta["config"]).class_names


def load_weights(path: str | Path) -> tuple[STNiCNN, dict]:
    """Build the model a weights file describes and load it (float32, eval mode)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for foreign files
        hint = "; authors' .pth.tar checkpoints need `batch-parse convert` first" if path.name.endswith((".pth", ".tar")) else ""
        raise WeightsError(f"{path}: not a safetensors weights file ({exc.__class__.__name__}){hint}") from None
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a batch-parse STN-iCNN weights file (format={meta.get('format')!r}); "
                           "authors' .pth.tar files need `batch-parse convert` first")
    cfg = ModelConfig.from_json(meta["config"])
    model = STNiCNN(cfg)
    expected = _persistent_keys(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tensors[k].shape != expected[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with wrong shape (e.g. {k}: {tuple(tensors[k].shape)} != {tuple(expected[k])})")
        raise WeightsError(f"{path}: weights do not fit the model: " + "; ".join(parts))
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    model.eval()
    return model, json.loads(meta.get("info", "{}"))
