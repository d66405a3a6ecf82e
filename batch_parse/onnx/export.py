"""Write the detector's and the parser's networks as ONNX graphs, with a manifest that says what they are.

    from batch_parse.onnx import export_onnx
    manifest = export_onnx("parser-onnx/", model="stn-icnn/default")

The graphs come from the inference form of the weights (`fuse.optimize_for_inference`: BatchNorm
folded; not the polyphase rewrite, see export_onnx), in float32, batch dimension dynamic (P-Net's height and width too). See the
package docstring for the six files.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from batch_parse import __version__
from batch_parse.faces import mtcnn
from batch_parse.labels import PART_NAMES
from batch_parse.model.fuse import optimize_for_inference
from batch_parse.model.licence import DETECTOR, SHIPPED
from batch_parse.model.registry import DEFAULT
from batch_parse.model.weights import file_sha256, load_weights, resolve

FORMAT = "batch-parse-onnx/1"
MANIFEST = "batch-parse-onnx.json"
# 17: GridSample-free graphs need nothing newer, and onnxruntime, TensorRT and OpenVINO releases
# of the last three years all run it.
DEFAULT_OPSET = 17
LICENCES = {"parser": SHIPPED.line(), "detector": DETECTOR.terms}  # model/licence.py: the one text


class _Localiser(nn.Module):
    """Stage-1 softmax -> theta, as STNiCNN.localise (skin folded into background, rotation masked)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, stage1_probs: torch.Tensor) -> torch.Tensor:
        return self.net.localise(stage1_probs)


class _Parts(nn.Module):
    """Crops (N,6,3,s,s) -> the six part logits, as STNiCNN.parse_parts (mirrored parts flipped in and out)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.net.parse_parts(crops))


def _export(module: nn.Module, example: torch.Tensor, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], opset: int) -> None:
    module = module.to(memory_format=torch.contiguous_format).eval()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export's, which in torch 2.13
        # specialises these graphs' batch size (parse_parts' chunk); this one keeps it dynamic.
        warnings.simplefilter("ignore", DeprecationWarning)
        # part_probs' branch on the class count is fixed per model: tracing it as a constant is right.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, (example,), str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)


def _describe(path: Path, inputs: dict[str, str], outputs: dict[str, str]) -> dict:
    return {"file": path.name, "sha256": file_sha256(path), "inputs": inputs, "outputs": outputs}


def export_onnx(out_dir: str | Path, model: str = DEFAULT, detector: bool = True,
                opset: int = DEFAULT_OPSET) -> Path:
    """Write the graphs and the manifest into out_dir (created); returns the manifest's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name, weights = resolve(model)
    loaded, _ = load_weights(weights)
    cfg = loaded.cfg
    # Without the polyphase rewrite: its in-place adds into strided views do not trace into ONNX
    # (labels came out 93% right), and a plain 5x5 convolution graph is what other runtimes optimise.
    # One copy for the three graphs: _export only changes its memory format, the same for each.
    net = optimize_for_inference(loaded, polyphase=False).float()
    s1, ps, classes = cfg.stage1_size, cfg.part_size, cfg.num_classes
    batch = {0: "faces"}
    graphs: dict[str, dict] = {}
    with torch.inference_mode():
        path = out / "stage1.onnx"
        _export(net.stage1, torch.rand(2, 3, s1, s1), path, ["image"], ["logits"],
                {"image": batch, "logits": batch}, opset)
        graphs["stage1"] = _describe(path, {"image": f"(faces,3,{s1},{s1}) float32 RGB 0..1, the frame resized (see geometry.stage1_input)"},
                                     {"logits": f"(faces,{classes},{s1},{s1}) float32 stage-1 logits ({', '.join(cfg.class_names)})"})
        path = out / "localiser.onnx"
        _export(_Localiser(net), torch.rand(2, classes, s1, s1).softmax(1), path, ["stage1_probs"], ["theta"],
                {"stage1_probs": batch, "theta": batch}, opset)
        graphs["localiser"] = _describe(path, {"stage1_probs": f"(faces,{classes},{s1},{s1}) float32 softmax of stage1's logits"},
                                        {"theta": f"(faces,{cfg.num_parts},2,3) float32 part windows (geometry.theta_to_windows)"})
        path = out / "parts.onnx"
        part_outputs = [f"{part}_logits" for part in PART_NAMES]
        _export(_Parts(net), torch.rand(2, cfg.num_parts, 3, ps, ps), path, ["crops"], part_outputs,
                {"crops": batch, **{o: batch for o in part_outputs}}, opset)
        graphs["parts"] = _describe(path, {"crops": f"(faces,{cfg.num_parts},3,{ps},{ps}) float32 RGB 0..1, parts in the order {', '.join(PART_NAMES)}"},
                                    {o: f"(faces,1+k,{ps},{ps}) float32 logits: background then the part's classes" for o in part_outputs})
        if detector:
            graphs.update(_export_mtcnn(out, opset))
    manifest = {
        "format": FORMAT,
        "exported_by": f"batch-parse {__version__}, torch {torch.__version__}",
        "opset": opset,
        "model": {"name": name, "weights_sha256": file_sha256(weights), "config": json.loads(cfg.to_json()),
                  "class_names": list(cfg.class_names), "parts": list(PART_NAMES)},
        "detector": "mtcnn" if detector else None,
        "graphs": graphs,
        "licences": LICENCES if detector else {"parser": LICENCES["parser"]},
    }
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _export_mtcnn(out: Path, opset: int) -> dict[str, dict]:
    paths = mtcnn.weight_paths()
    if paths is None:
        raise FileNotFoundError(f"the MTCNN weights are not installed; install them with: {mtcnn.INSTALL_COMMAND}")
    pnet, rnet, onet = mtcnn.load_networks(paths, torch.device("cpu"))
    pixels = f"float32 RGB, (pixel - {mtcnn.PIXEL_MEAN}) * {mtcnn.PIXEL_SCALE}"
    graphs = {}
    path = out / "mtcnn_pnet.onnx"
    _export(pnet, torch.rand(1, 3, 60, 80), path, ["image"], ["face_prob", "offsets"],
            {"image": {0: "n", 2: "height", 3: "width"}, "face_prob": {0: "n", 1: "rows", 2: "cols"},
             "offsets": {0: "n", 2: "rows", 3: "cols"}}, opset)
    graphs["mtcnn_pnet"] = _describe(path, {"image": f"(n,3,H,W) one pyramid level, {pixels}"},
                                     {"face_prob": f"(n,h,w) face probability per {mtcnn.PNET_CELL}px window, stride {mtcnn.PNET_STRIDE}",
                                      "offsets": "(n,4,h,w) box offsets in window widths"})
    for name, net, size, outputs in (("rnet", rnet, mtcnn.RNET_SIZE, ["face_prob", "offsets"]),
                                     ("onet", onet, mtcnn.ONET_SIZE, ["face_prob", "offsets", "landmarks"])):
        path = out / f"mtcnn_{name}.onnx"
        _export(net, torch.rand(2, 3, size, size), path, ["crops"], outputs, {k: {0: "n"} for k in ["crops", *outputs]}, opset)
        described = {"face_prob": "(n,) face probability", "offsets": "(n,4) box offsets in box widths"}
        if name == "onet":
            described["landmarks"] = "(n,5,2) eyes, nose, mouth corners as fractions of the box"
        graphs[f"mtcnn_{name}"] = _describe(path, {"crops": f"(n,3,{size},{size}) {pixels}"}, described)
    return graphs
