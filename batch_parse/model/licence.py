"""The licence of the labels: the one place its text lives (torch-free, next to the weights registry).

The labels a model writes inherit the terms of its weights, and the shipped weights inherit those
of their training data: every data set in the model card ("Data and licences") is for
non-commercial research only. So every output file records the licence of the weights that wrote
it (Parquet metadata key `licence`), and every export, `inspect` and `export-onnx` repeat it from
here. Weights that are not in the registry (a user's own file) carry the licence their safetensors
metadata names (`licence` key), else "unknown".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from batch_parse.model.registry import REGISTRY

MODEL_CARD = "batch_parse/model/weights/MODEL_CARD.md"
TRAINING_DATA = "UTKFace, CFP, Caltech 10,000 Web Faces, CUHK face points, RMFD, muxspace facial_expressions, WIDER FACE"


@dataclass(frozen=True)
class Licence:
    """Terms of a set of labels (or weights) and where they come from."""

    name: str  # short, for one line and for fields such as the HF card's license_name
    terms: str  # one sentence a user can act on
    source: str  # why these are the terms: what they are inherited from
    link: str  # where to read more (a path in the batch-parse package, or a URL)

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return f"{self.name}: {self.terms} ({self.source}; see {self.link})"


SHIPPED = Licence(
    name="non-commercial-research-only",
    terms="the labels may be used for non-commercial research only; the images keep their own terms",
    source=f"inherited from the weights, trained by batch-parse on data sets for non-commercial research only ({TRAINING_DATA})",
    link=MODEL_CARD,
)
UNKNOWN = Licence(
    name="unknown",
    terms="the terms of these labels are those of the weights that wrote them, which do not say",
    source="weights outside batch-parse's registry, without a licence in their metadata",
    link="whoever trained the weights",
)
# The face detector's weights (MIT) decide nothing about the labels' terms, but export-onnx ships them.
DETECTOR = Licence(
    name="MIT",
    terms="MTCNN P/R/O-Net weights from facenet-pytorch 2.6.0 (MIT licence, Tim Esler)",
    source="facenet-pytorch 2.6.0",
    link="https://pypi.org/project/facenet-pytorch/2.6.0/",
)


def weights_licence(model_name: str, weights_path=None) -> Licence:
    """The licence of labels written by these weights: the registry's own, or what a custom file's
    safetensors metadata says (`licence`), else UNKNOWN."""
    if model_name in REGISTRY:
        return SHIPPED
    text = None
    if weights_path is not None:
        from safetensors import safe_open

        try:
            with safe_open(str(weights_path), framework="np") as f:  # the header only
                meta = f.metadata() or {}
            text = meta.get("licence") or meta.get("license")
        except Exception:  # noqa: BLE001 - an unreadable file is refused elsewhere; here it says nothing
            text = None
    if text:
        return Licence(name=str(text), terms=f"the labels inherit the weights' licence: {text}",
                       source="the weights file's own metadata", link=str(model_name))
    return UNKNOWN


def output_licence(meta: dict) -> Licence:
    """The licence recorded in an output file's metadata; files from before it was recorded get
    the licence of the model they name (the shipped weights' for registry names)."""
    recorded = meta.get("licence")
    if isinstance(recorded, dict) and {"name", "terms", "source", "link"} <= recorded.keys():
        return Licence(**{k: str(recorded[k]) for k in ("name", "terms", "source", "link")})
    return weights_licence(str(meta.get("model") or ""))
