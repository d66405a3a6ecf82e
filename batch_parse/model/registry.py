"""The named weights that ship in the package, and a torch-free check that a name or path is weights.

weights.py loads them; this module only names and checks them, so `batch-parse validate` and the
CLI's argument checks say "not a weights file" in one line without importing torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
FORMAT = "batch-parse/stn-icnn/1"  # the `format` key of a weights file's safetensors metadata
DEFAULT = "stn-icnn/default"  # the name a run uses unless told; which version it names moves

# Named weights that ship inside the package (MODEL_CARD.md describes each). Every earlier version
# stays loadable by name so that earlier outputs can be reproduced; "default" is what a run uses
# unless told (v4: at least v2 on every figure of benchmarks/model_targets.py, and it labels skin).
REGISTRY: dict[str, Path] = {
    DEFAULT: WEIGHTS_DIR / "stn-icnn-v4.safetensors",
    "stn-icnn/v4": WEIGHTS_DIR / "stn-icnn-v4.safetensors",  # + skin (10 classes), trained to convergence
    "stn-icnn/v3": WEIGHTS_DIR / "stn-icnn-v3.safetensors",  # + skin (10 classes)
    "stn-icnn/v2": WEIGHTS_DIR / "stn-icnn-v2.safetensors",
    "stn-icnn/v1": WEIGHTS_DIR / "stn-icnn-v1.safetensors",
}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def version_named(sha256: str) -> str | None:
    """The registry's version name (not DEFAULT, which moves) of the weights with this SHA-256, if
    they ship in the package: what to pass as --model to reproduce an older output."""
    for name, path in REGISTRY.items():
        if name != DEFAULT and path.is_file() and file_sha256(path) == sha256:
            return name
    return None


def weights_problem(name_or_path: str) -> str | None:
    """Why `name_or_path` is not a registry name or a batch-parse weights file; None when it is one.

    A file is opened with safetensors (its header only, no tensor is read) and must carry our
    `format` metadata, so a JPEG, a Parquet file or the authors' .pth.tar is named here.
    """
    from safetensors import safe_open

    if name_or_path in REGISTRY:
        path = REGISTRY[name_or_path]
        return None if path.is_file() else f"weights {name_or_path!r} are not installed (missing {path})"
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        return f"no weights named {name_or_path!r} and no such file (known names: {', '.join(REGISTRY)})"
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own types for foreign files
        hint = "; authors' .pth.tar checkpoints need `batch-parse convert` first" if path.name.endswith((".pth", ".tar")) else ""
        return f"{path} is not a safetensors weights file ({type(exc).__name__}){hint}"
    if meta.get("format") != FORMAT:
        return f"{path} is safetensors but not batch-parse STN-iCNN weights (format={meta.get('format')!r})"
    return None
