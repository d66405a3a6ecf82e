"""`batch-parse export-onnx`: six graphs and a manifest that run in onnxruntime and label as torch does.

The export is made once by the real command (a fresh interpreter), then read back with onnx and
run in onnxruntime behind the product's own detector and parser code (batch_parse.onnx.runtime),
on the bundled demo photos and real face-pool photos.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from batch_parse.demo import demo_images
from batch_parse.faces import load_detector, mtcnn
from batch_parse.labels import PART_NAMES, PARTS
from batch_parse.model import load_parser
from batch_parse.model.weights import REGISTRY, file_sha256
from batch_parse.onnx.export import MANIFEST, export_onnx
from batch_parse.onnx.runtime import OnnxError, compare_with_torch, load_onnx, read_manifest
from batch_parse.pipeline.decode import decode_image

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
GRAPHS = {"stage1", "localiser", "parts", "mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"}


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "batch_parse.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env=env, check=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The default model and MTCNN exported by the command itself, with its onnxruntime check."""
    out = tmp_path_factory.mktemp("onnx") / "export"
    result = cli("export-onnx", str(out))
    assert result.returncode == 0, result.stderr
    assert "100.000% of label pixels as torch's" in result.stdout, result.stdout
    return out


@pytest.fixture(scope="module")
def demo() -> list[np.ndarray]:
    return [decode_image(p.read_bytes(), 50_000_000) for p in demo_images()]


def test_the_manifest_names_every_graph_with_its_hash_and_the_model_it_came_from(exported):
    manifest = json.loads((exported / MANIFEST).read_text())
    assert set(manifest["graphs"]) == GRAPHS
    for graph in manifest["graphs"].values():
        path = exported / graph["file"]
        assert file_sha256(path) == graph["sha256"]
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        assert [i.name for i in model.graph.input] == list(graph["inputs"])
        assert [o.name for o in model.graph.output] == list(graph["outputs"])
    assert manifest["model"]["weights_sha256"] == file_sha256(REGISTRY["stn-icnn/default"])
    assert manifest["model"]["parts"] == list(PART_NAMES)
    assert "non-commercial" in manifest["licences"]["parser"] and "MIT" in manifest["licences"]["detector"]


def test_onnxruntime_finds_the_same_faces_and_draws_the_same_labels(exported, demo):
    detector, parser = load_onnx(exported, threads=1)
    reference_detector, reference = load_detector("mtcnn", device="cpu"), load_parser("stn-icnn/default", "cpu", "fp32")
    found, expected = detector.detect(demo), reference_detector.detect(demo)
    assert [len(f.scores) for f in found] == [len(f.scores) for f in expected]
    assert sum(len(f.scores) for f in found) > 0
    for a, b in zip(found, expected):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.05)
    for faces in (expected, None):  # face-first and whole-image
        ours, theirs = parser.parse_faces(demo, faces), reference.parse_faces(demo, faces)
        same = sum(int((a.label_map == b.label_map).sum()) for a, b in zip(ours, theirs))
        assert same / sum(a.label_map.size for a in theirs) >= 0.9999
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a.confidences, b.confidences, atol=1e-3)
    assert parser.model_version == reference.model_version  # rows written through it say which weights


def test_batch_and_size_stay_dynamic(exported):
    import onnxruntime

    pnet = onnxruntime.InferenceSession(str(exported / "mtcnn_pnet.onnx"), providers=["CPUExecutionProvider"])
    reference = mtcnn.load_networks(mtcnn.weight_paths(), torch.device("cpu"))[0]
    for h, w in ((12, 12), (97, 131)):
        x = torch.rand(3, 3, h, w, generator=torch.Generator().manual_seed(h)) * 2 - 1
        prob, offsets = pnet.run(None, {"image": x.numpy()})
        with torch.inference_mode():
            expected_prob, expected_offsets = reference(x)
        np.testing.assert_allclose(prob, expected_prob.numpy(), atol=1e-4)
        np.testing.assert_allclose(offsets, expected_offsets.numpy(), atol=1e-4)
    parts = onnxruntime.InferenceSession(str(exported / "parts.onnx"), providers=["CPUExecutionProvider"])
    outputs = parts.run(None, {"crops": np.zeros((5, 6, 3, 81, 81), np.float32)})
    assert [o.shape for o in outputs] == [(5, part.num_outputs, 81, 81) for part in PARTS]


def test_a_skin_model_exports_its_ten_classes(tmp_path, demo):
    out = export_onnx(tmp_path / "v3", model="stn-icnn/v3", detector=False).parent
    manifest = read_manifest(out)
    assert set(manifest["graphs"]) == {"stage1", "localiser", "parts"} and manifest["detector"] is None
    assert manifest["model"]["class_names"][-1] == "skin"
    detector, parser = load_onnx(out, threads=1)
    assert detector is None and parser.class_names[-1] == "skin"
    result = compare_with_torch(out, demo[:4], "stn-icnn/v3")
    assert result["faces_onnx"] == result["faces_torch"] == 4  # whole images: no detector exported
    assert result["pixel_agreement"] >= 0.9999


def test_an_altered_or_foreign_export_is_refused_in_one_line(exported, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in exported.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    with open(copy / "parts.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(OnnxError, match="parts.onnx differs from the file that was exported"):
        load_onnx(copy)
    (copy / "stage1.onnx").unlink()
    with pytest.raises(OnnxError, match="stage1.onnx is missing"):
        read_manifest(copy)
    with pytest.raises(OnnxError, match="not a batch-parse ONNX export"):
        load_onnx(tmp_path)
    (tmp_path / MANIFEST).write_text('{"format": "something-else"}')
    with pytest.raises(OnnxError, match="is not a batch-parse-onnx/1 manifest"):
        load_onnx(tmp_path)


def test_bad_arguments_fail_before_anything_is_written(tmp_path):
    out = tmp_path / "never"
    result = cli("export-onnx", str(out), "--model", "stn-icnn/v9")
    assert result.returncode == 2 and "no weights named 'stn-icnn/v9'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    result = cli("export-onnx", str(out), "--opset", "9")
    assert result.returncode == 2 and not out.exists()


def test_torch_threads_are_left_as_they_were(exported):
    before = torch.get_num_threads()
    load_onnx(exported, threads=1)
    assert torch.get_num_threads() == before
