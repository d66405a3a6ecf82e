"""The inference API: load_parser from a weights file, mixed-size batches, result contract, errors.

The weights are the official fixture's random-weight checkpoints converted to our format (the
project's own trained weights may not exist when this runs); the API does not care what they learnt.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from test_model_parity import authors_model, checkpoint, fixture_dir

from batch_parse.labels import CLASS_NAMES, NUM_CLASSES, PARTS
from batch_parse.model import load_parser
from batch_parse.model.config import AUTHORS_CONFIG
from batch_parse.model.convert import convert_checkpoints
from batch_parse.model.parser import FaceParser, native_bf16_cpu
from batch_parse.model.weights import WeightsError, load_weights, resolve, save_weights

# Under load, batching moves theta by ~5e-7 (fixture README), i.e. ~3e-4 px on the 1024 canvas.
BOX_ATOL = 2e-3
MAX_CHANGED_PIXELS = 5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "authors.safetensors"
    save_weights(authors_model(), path)
    return path


@pytest.fixture(scope="module")
def parser(weights_path):
    # fp32: these tests compare with the authors' arithmetic; "auto" may run stage 2 in bf16.
    return load_parser(str(weights_path), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def faces() -> list[np.ndarray]:
    """Real faces at awkward sizes: 200x200, 187x173 (HxW), 480x640 and 300x97."""
    main = np.load(fixture_dir() / "e2e_official_fp32.npz")["raw_rgb_uint8"]
    nonsquare = np.load(fixture_dir() / "supplementary.npz")["ns_raw_rgb_uint8"][0]
    face = Image.fromarray(main[0])
    wide = Image.new("RGB", (640, 480), (128, 128, 128))
    wide.paste(face.resize((480, 480), Image.BILINEAR), (80, 0))
    tall = np.asarray(face.resize((300, 300), Image.BILINEAR))[:, 100:197]
    return [main[0], nonsquare, np.array(wide), np.ascontiguousarray(tall)]


def test_load_parser_reads_the_file_it_was_given(parser, weights_path):
    sha = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    assert parser.weights_sha256 == sha
    assert parser.model_name == "authors"
    assert parser.model_version == f"authors@{sha[:8]}"
    assert parser.cfg == AUTHORS_CONFIG  # the geometry conventions travel inside the file
    assert parser.precision == "fp32"
    loaded = parser.model.state_dict()
    for key, value in authors_model().state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_result_contract(parser, faces):
    results = parser.parse(faces)
    assert len(results) == len(faces)
    for image, r in zip(faces, results):
        h, w = image.shape[:2]
        assert r.label_map.shape == (h, w) and r.label_map.dtype == np.uint8
        assert r.label_map.max() < NUM_CLASSES
        assert r.boxes.shape == (len(PARTS), 4) and r.boxes.dtype == np.float32
        assert np.all(r.boxes[:, 2] >= r.boxes[:, 0]) and np.all(r.boxes[:, 3] >= r.boxes[:, 1])
        assert r.confidences.shape == (len(PARTS),) and r.confidences.dtype == np.float32
        assert np.all((r.confidences >= 0) & (r.confidences <= 1))
        assert r.class_pixels.shape == (NUM_CLASSES,) and r.class_pixels.dtype == np.int64
        assert r.class_pixels.sum() == h * w
        assert np.array_equal(r.class_pixels, np.bincount(r.label_map.ravel(), minlength=NUM_CLASSES))
        assert r.class_names == parser.class_names == CLASS_NAMES[:9]  # the authors' model: the 9 part classes
    # Not all background: the paste-back reached the images (random weights still label pixels).
    assert all(r.class_pixels[0] < r.label_map.size for r in results)


def test_an_image_parses_the_same_alone_and_in_a_mixed_batch(parser, faces):
    together = parser.parse(faces)
    for image, mixed in zip(faces, together):
        (alone,) = parser.parse([image])
        assert (alone.label_map != mixed.label_map).sum() <= MAX_CHANGED_PIXELS, image.shape
        np.testing.assert_allclose(alone.boxes, mixed.boxes, atol=BOX_ATOL)
        np.testing.assert_allclose(alone.confidences, mixed.confidences, atol=1e-4)


def test_empty_batch(parser):
    assert parser.parse([]) == []


# ---- weights files that must be refused, each with one line naming the problem ----


def _refusal(path) -> str:
    with pytest.raises(WeightsError) as caught:
        load_weights(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def _rewrite(source, target, edit) -> None:
    """Copy a weights file, letting `edit` change its tensors; metadata kept as is."""
    with safe_open(str(source), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors)
    save_file(tensors, str(target), metadata=meta)


def test_refuses_a_file_that_is_not_safetensors(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert "not a safetensors weights file" in _refusal(path)


def test_refuses_an_authors_checkpoint_given_as_weights():
    assert "not a safetensors weights file" in _refusal(checkpoint("C"))


def test_refuses_a_foreign_safetensors_file(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    assert "not a batch-parse STN-iCNN weights file" in _refusal(path)


def test_refuses_a_missing_tensor(weights_path, tmp_path):
    key = "stage2.mouth.head_conv3.bias"
    _rewrite(weights_path, tmp_path / "missing.safetensors", lambda t: t.pop(key))
    message = _refusal(tmp_path / "missing.safetensors")
    assert "1 missing" in message and key in message


def test_refuses_a_tensor_of_the_wrong_shape(weights_path, tmp_path):
    key = "localiser.fc.weight"
    _rewrite(weights_path, tmp_path / "shape.safetensors", lambda t: t.update({key: torch.zeros(35, 512)}))
    message = _refusal(tmp_path / "shape.safetensors")
    assert "wrong shape" in message and key in message and "(35, 512) != (36, 512)" in message


def test_refuses_an_unexpected_tensor(weights_path, tmp_path):
    _rewrite(weights_path, tmp_path / "extra.safetensors", lambda t: t.update({"stage1.extra": torch.zeros(1)}))
    assert "unexpected (e.g. stage1.extra)" in _refusal(tmp_path / "extra.safetensors")


def test_unknown_weights_name():
    with pytest.raises(WeightsError, match=r"no weights named 'nope/unknown'.*known names: stn-icnn/default"):
        load_parser("nope/unknown")


# ---- the `convert` command's function ----


def test_converted_file_parses_like_the_in_memory_model(tmp_path, faces):
    out = convert_checkpoints([checkpoint("AB"), checkpoint("C")], tmp_path / "converted.safetensors", torch.float32)
    _, info = load_weights(out)
    assert info["files"] == [checkpoint("AB").name, checkpoint("C").name]
    from_file = load_parser(str(out), device="cpu").parse(faces)
    in_memory = FaceParser(authors_model(), "authors", "0" * 64, device="cpu").parse(faces)
    for a, b in zip(from_file, in_memory, strict=True):
        assert np.array_equal(a.label_map, b.label_map)
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.confidences, b.confidences)


def test_convert_to_bfloat16_halves_the_file(weights_path, tmp_path):
    half = convert_checkpoints([checkpoint("AB"), checkpoint("C")], tmp_path / "bf16.safetensors", torch.bfloat16)
    assert half.stat().st_size < 0.55 * weights_path.stat().st_size
    model, _ = load_weights(half)
    loaded = model.state_dict()
    for key, value in authors_model().state_dict().items():
        if value.is_floating_point():
            assert torch.equal(loaded[key], value.bfloat16().float()), key


@pytest.mark.parametrize("bad", ["missing.pth.tar", "junk.pth.tar"])
def test_convert_refuses_unreadable_checkpoints(tmp_path, bad):
    path = tmp_path / bad
    if bad.startswith("junk"):
        path.write_bytes(b"\x80\x02 not a pickle at all" * 10)
    with pytest.raises(WeightsError) as caught:
        convert_checkpoints([path, checkpoint("C")], tmp_path / "out.safetensors")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out.safetensors").exists()


# ---- memory on a large photo ----

_BIG_PHOTO = textwrap.dedent(
    """
    import resource, sys
    import numpy as np, torch
    from batch_parse.model.config import DEFAULT_CONFIG
    from batch_parse.model.parser import FaceParser
    from batch_parse.model.stn_icnn import STNiCNN

    torch.set_num_threads(1)
    model = STNiCNN(DEFAULT_CONFIG).eval()
    # A localiser that puts the brow_1 window in the top-left corner, the mouth window in the
    # bottom-right one, the rest in the middle: label_map must then cover the whole photo.
    theta = [[0.05, 0, 0, 0, 0.05, 0]] * 6
    theta[0] = [0.05, 0, -0.95, 0, 0.05, -0.7]
    theta[5] = [0.05, 0, 0.95, 0, 0.05, 0.7]
    with torch.no_grad():
        model.localiser.fc.weight.zero_()
        model.localiser.fc.bias.copy_(torch.tensor(theta).flatten())
    parser = FaceParser(model, "big", "0" * 64, device="cpu")
    photo = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    parser.parse([photo[:200, :200]])  # first-call allocations are not the photo's
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (result,) = parser.parse([photo])
    rise_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    boxes = result.boxes
    print(rise_mb, boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max(), result.class_pixels.sum())
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_a_12_megapixel_photo_never_holds_nine_full_size_planes():
    # 9 float32 planes of 4000x3000 are 432 MB; the photo itself as float is 144 MB (stage 1
    # must see all of it). Measured in a fresh process so that other tests' peaks do not count.
    done = subprocess.run([sys.executable, "-c", _BIG_PHOTO], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rise_mb, x0, y0, x1, y1, pixels = (float(v) for v in done.stdout.split())
    assert pixels == 4000 * 3000
    assert x0 < 200 and y0 < 200 and x1 > 3800 and y1 > 2800  # the windows span the photo
    assert rise_mb < 250, f"peak memory rose by {rise_mb:.0f} MB parsing one 4000x3000 photo"


# ---- GPU ----


def test_auto_precision_keeps_the_windows_and_the_labels_on_real_faces(face_jpegs):
    # "mixed" (the "auto" of CUDA and of CPUs with native bf16) runs only stage 2 in bf16: stage 1
    # and the localiser stay fp32, so the part windows are fp32's exactly and labels barely move.
    try:
        _, weights = resolve("stn-icnn/default")
    except WeightsError as exc:
        pytest.skip(str(exc))
    images = [np.array(Image.open(io.BytesIO(data)).convert("RGB")) for data in face_jpegs(8)]
    auto = load_parser(str(weights), device="cpu")
    assert auto.precision == ("mixed" if native_bf16_cpu() else "fp32")
    mixed = load_parser(str(weights), device="cpu", precision="mixed")
    reference = load_parser(str(weights), device="cpu", precision="fp32").parse(images)
    results = mixed.parse(images)
    for a, b in zip(reference, results):
        np.testing.assert_array_equal(a.boxes, b.boxes)
    agree = np.mean([np.mean(a.label_map == b.label_map) for a, b in zip(reference, results)])
    assert agree >= 0.995, agree
    with pytest.raises(ValueError, match="precision must be one of"):
        load_parser(str(weights), device="cpu", precision="int4")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_agrees_with_fp32_on_gpu(face_jpegs):
    # Agreement is a property of trained weights: random ones (the fixture's) make the localiser
    # magnify bf16 noise into moved windows (94-98% agreement with bf16 autocast on CPU).
    try:
        _, weights = resolve("stn-icnn/default")
    except WeightsError as exc:
        pytest.skip(str(exc))
    images = [np.array(Image.open(io.BytesIO(data)).convert("RGB")) for data in face_jpegs(32)]
    fp32 = load_parser(str(weights), device="cuda", precision="fp32")
    bf16 = load_parser(str(weights), device="cuda")
    assert bf16.precision == "mixed"  # the GPU default: stage 2 in bf16
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # a true fp32 reference
    try:
        reference = fp32.parse(images)
    finally:
        torch.backends.cudnn.allow_tf32 = before
    agree = [np.mean(a.label_map == b.label_map) for a, b in zip(reference, bf16.parse(images))]
    assert np.mean(agree) >= 0.995, agree
