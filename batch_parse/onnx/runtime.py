"""Run an exported copy (`batch-parse export-onnx`) in onnxruntime, behind the product's own API.

    detector, parser = load_onnx("parser-onnx/")
    results = parser.parse_faces(images, detector.detect(images))   # the same FaceResults as torch's

The graphs replace the torch networks only: the detector's pyramid and NMS, alignment, part
windows and paste-back stay the product's code, so labels match the torch parser to float
rounding (tests/test_onnx.py). CPU only (onnxruntime's CPUExecutionProvider); float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from batch_parse.faces.detector import FaceDetector
from batch_parse.model.config import ModelConfig
from batch_parse.model.parser import FaceParser
from batch_parse.model.weights import file_sha256
from batch_parse.onnx.export import FORMAT, MANIFEST


PARSER_GRAPHS = ("stage1", "localiser", "parts")  # the graphs export.py writes for the parser
DETECTOR_GRAPHS = ("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet")  # and for the detector, unless --no-detector


class OnnxError(ValueError):
    """An export folder that is missing, foreign, or altered since it was written (one line)."""


class _Session:
    """One graph: torch tensors in, a tuple of torch tensors out."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # the graphs are chains: no parallel branches to run
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = {name: t.detach().float().cpu().contiguous().numpy() for name, t in zip(self.inputs, tensors)}
        return tuple(torch.from_numpy(np.asarray(y)) for y in self.session.run(None, feed))


class OnnxParserNets:
    """STNiCNN's three inference calls (stage1, localise, parse_parts) answered by the exported graphs."""

    def __init__(self, sessions: dict[str, _Session], cfg: ModelConfig):
        self.cfg = cfg
        self._stage1, self._localiser, self._parts = sessions["stage1"], sessions["localiser"], sessions["parts"]

    def stage1(self, x: torch.Tensor) -> torch.Tensor:
        return self._stage1(x)[0]

    def localise(self, stage1_probs: torch.Tensor) -> torch.Tensor:
        return self._localiser(stage1_probs)[0]

    def parse_parts(self, crops: torch.Tensor) -> list[torch.Tensor]:
        return list(self._parts(crops))


def read_manifest(folder: str | Path) -> dict:
    """The export's manifest, checked: our format, a model record whose config builds, the graphs the
    model needs, each a file directly in the folder with its recorded sha256.

    What a manifest promises: each graph file is, byte for byte, the one written beside it (its
    sha256), so a graph damaged or swapped after export is refused. It does not authenticate: whoever
    can write the folder can rewrite a graph and its sha256 together. Trust an export folder as you
    trust code; `compare_with_torch` checks one against the torch weights it names.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise OnnxError(f"{folder} is not a batch-parse ONNX export (no {MANIFEST}; write one with `batch-parse export-onnx`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OnnxError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise OnnxError(f"{path} is not a {FORMAT} manifest")
    again = "export again with `batch-parse export-onnx`"
    model = manifest.get("model")
    if not (isinstance(model, dict) and isinstance(model.get("name"), str) and isinstance(model.get("weights_sha256"), str)
            and isinstance(model.get("config"), dict)):
        raise OnnxError(f"{path}: no model record (name, weights_sha256, config): {again}")
    try:
        manifest["_config"] = ModelConfig.from_json(json.dumps(model["config"]))
    except (TypeError, ValueError, AttributeError) as exc:
        raise OnnxError(f"{path}: the model config does not build ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
                        f"{again}") from None
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict):
        raise OnnxError(f"{path}: `graphs` is {json.dumps(graphs)[:40]}, not the graphs by name: {again}")
    needed = PARSER_GRAPHS + (DETECTOR_GRAPHS if manifest.get("detector") == "mtcnn" else ())
    missing = [name for name in needed if name not in graphs]
    if missing:
        raise OnnxError(f"{path} names no graph {', '.join(missing)}: {again}")
    root = folder.resolve()
    for name, graph in graphs.items():
        if not (isinstance(graph, dict) and isinstance(graph.get("file"), str) and isinstance(graph.get("sha256"), str)):
            raise OnnxError(f"{path}: graph {name} is {json.dumps(graph)[:40]}, not {{\"file\": ..., \"sha256\": ...}}: {again}")
        file = folder / graph["file"]
        # Graphs are files of the export folder itself: never a path that reads elsewhere (`/etc/...`, `../`).
        if Path(graph["file"]).name != graph["file"] or file.resolve().parent != root:
            raise OnnxError(f"{path}: graph {name} names {graph['file']!r}, not a file in {folder}: {again}")
        if not file.is_file():
            raise OnnxError(f"{file} is missing (graph {name} of {path})")
        if file_sha256(file) != graph["sha256"]:
            raise OnnxError(f"{file} differs from the file that was exported (sha256 mismatch); export again")
    return manifest


def load_onnx(folder: str | Path, threads: int | None = None) -> tuple[FaceDetector | None, FaceParser]:
    """(detector or None when exported without one, parser) running the folder's graphs in onnxruntime."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    threads = threads or torch.get_num_threads()
    sessions = {name: _Session(folder / graph["file"], threads) for name, graph in manifest["graphs"].items()}
    model, cfg = manifest["model"], manifest["_config"]
    parser = FaceParser(None, model["name"], model["weights_sha256"], device="cpu", precision="fp32",
                        nets=OnnxParserNets(sessions, cfg))
    detector = None
    if manifest.get("detector") == "mtcnn":
        detector = FaceDetector((sessions["mtcnn_pnet"], sessions["mtcnn_rnet"], sessions["mtcnn_onet"]), torch.device("cpu"))
    return detector, parser


def compare_with_torch(folder: str | Path, images: list[np.ndarray], model: str | None = None) -> dict[str, float | int]:
    """The export run in onnxruntime vs the torch model it came from, on the same photos.

    Faces found by each detector, and the share of label-map pixels on which the two parsers agree
    over the torch detector's faces (fp32 both). model: registry name or path of the torch weights
    (default: the manifest's model name).
    """
    from batch_parse.faces import load_detector
    from batch_parse.model import load_parser

    onnx_detector, onnx_parser = load_onnx(folder)  # its name and weights hash are the manifest's
    torch_parser = load_parser(model or onnx_parser.model_name, device="cpu", precision="fp32")
    if torch_parser.weights_sha256 != onnx_parser.weights_sha256:
        raise OnnxError(f"{folder} was exported from other weights than {torch_parser.model_name}")
    faces = load_detector("mtcnn", device="cpu").detect(images) if onnx_detector is not None else None
    onnx_faces = onnx_detector.detect(images) if onnx_detector is not None else None
    same = total = 0
    for a, b in zip(torch_parser.parse_faces(images, faces), onnx_parser.parse_faces(images, faces)):
        same += int((a.label_map == b.label_map).sum())
        total += a.label_map.size
    count = (lambda found: len(images) if found is None else sum(len(f.scores) for f in found))
    return {"faces_torch": count(faces), "faces_onnx": count(onnx_faces), "pixel_agreement": same / max(total, 1)}
