"""Parity with the authors' STN-iCNN test-time path, checked against the official fixture.

The fixture (shared/fixtures/official, README there) holds random-weight checkpoints in the
authors' formats and every intermediate of their code on real faces. Criteria are the README's:
stage by stage with the recorded inputs first (tight), then end to end from the decoded pixels.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from batch_parse.labels import NUM_CLASSES, PARTS
from batch_parse.model import geometry
from batch_parse.model.config import AUTHORS_CONFIG
from batch_parse.model.convert import convert_state_dicts, load_authors_model, read_authors_checkpoint
from batch_parse.model.icnn import ICNN
from batch_parse.model.parser import FaceParser
from batch_parse.model.stn_icnn import STNiCNN
from batch_parse.model.weights import WeightsError


# The README's criteria (max abs difference unless said otherwise).
TOL_A = 1e-5
TOL_SOFTMAX = 1e-6
TOL_B = 1e-5
TOL_CROP = 2e-4
TOL_CROP_E2E = 1e-3  # theta errors are magnified ~500x by the 1024-pixel canvas
TOL_C = 1e-5
TOL_MAPBACK = 1e-6

from corpus import shared_dir  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fixture_dir() -> Path:
    return shared_dir() / "fixtures" / "official"


def checkpoint(kind: str) -> Path:
    """'A', 'AB' or 'C': the fixture checkpoint file in that authors' layout."""
    names = {"A": "A_like_48fb8cd4.pth.tar", "AB": "AB_like_e0de5954.pth.tar", "C": "C_like_c1f2ab1a.pth.tar"}
    return fixture_dir() / "checkpoints" / names[kind]


@functools.cache
def authors_model() -> STNiCNN:
    """The fixture's A+B and C checkpoints through our converter (shared by the model test modules)."""
    return load_authors_model([checkpoint("AB"), checkpoint("C")])


@functools.cache
def arrays(name: str) -> "CachedNpz":
    return CachedNpz(fixture_dir() / f"{name}.npz")


class CachedNpz:
    """np.load re-reads (and inflates) an array on every access; the 1024x1024 ones are big."""

    def __init__(self, path: Path):
        self._npz = np.load(path)
        self._cache: dict[str, np.ndarray] = {}
        self.files = set(self._npz.files)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = self._npz[key]
        return self._cache[key]


class Case:
    """One fixture case: its arrays under their unprefixed names.

    main: two 200x200 faces through the whole official path.
    lm:   the same faces, thetas from the authors' landmark formula (crops on real parts).
    ns:   a 187x173 cut (uneven padding, distorted stage-1 resize) through the whole path.
    """

    def __init__(self, name: str):
        self.name = name
        self.main = arrays("e2e_official_fp32")
        self.npz, self.prefix = (self.main, "") if name == "main" else (arrays("supplementary"), name + "_")

    def __getitem__(self, key: str) -> np.ndarray:
        if self.prefix + key in self.npz.files:
            return self.npz[self.prefix + key]
        # The landmark case reuses the main case's images.
        return self.main[key]

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [(int(w), int(h)) for w, h in self["orig_size_wh"]]

    def images(self) -> list[torch.Tensor]:
        return [torch.from_numpy(im).permute(2, 0, 1) for im in self["raw_rgb_uint8"]]

    def part_keys(self, kind: str) -> list[str]:
        """'stage2_logits' -> the fixture's per-part keys, in labels.PARTS order."""
        order = [str(p) for p in self.main["part_order"]]
        assert len(order) == len(PARTS)
        return [f"{kind}_{p}" for p in order]

    def part_probs(self, i: int) -> list[torch.Tensor]:
        return [torch.from_numpy(self[k][i]) for k in self.part_keys("stage2_softmax")]

    def windows(self) -> torch.Tensor:
        return geometry.theta_to_windows(torch.from_numpy(self["theta"]), self.sizes, AUTHORS_CONFIG)

    def canvas_windows(self) -> torch.Tensor:
        """The same windows in the authors' 1024x1024 padded-canvas pixels."""
        side = AUTHORS_CONFIG.canvas_size
        return geometry.theta_to_windows(torch.from_numpy(self["theta"]), [(side, side)] * len(self.sizes), AUTHORS_CONFIG)


@pytest.fixture(scope="module")
def model() -> STNiCNN:
    return authors_model()


def max_abs(got: torch.Tensor | np.ndarray, want: np.ndarray) -> float:
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else got
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got.astype(np.float64) - want).max())


def assert_stage1_input(got: torch.Tensor, want: np.ndarray, fragile: np.ndarray) -> None:
    """Identical except at fragile values, which may be off by exactly one 8-bit step."""
    got = got.numpy()
    assert np.array_equal(got[~fragile], want[~fragile]), "stage-1 input differs at non-fragile values"
    steps = (got[fragile].astype(np.float64) - want[fragile]) * 255
    assert np.all(np.abs(steps - np.round(steps)) < 1e-3) and np.all(np.abs(np.round(steps)) <= 1)


def assert_mapback(got: torch.Tensor, want: np.ndarray, labels_1024: np.ndarray, fragility: np.ndarray) -> None:
    """Probabilities within TOL_MAPBACK wherever the fixture says stable; argmax identical there
    too, except where the two best classes are closer than the probabilities' own tolerance (the
    landmark case's overlapping eye windows tie to one float32 step)."""
    stable = fragility == 0
    assert stable.mean() > 0.95  # the mask must not hide the comparison
    got = got.numpy()
    assert float(np.abs(got - want)[:, stable].max()) <= TOL_MAPBACK
    top2 = np.sort(want, axis=0)[-2:]
    decided = stable & (top2[1] - top2[0] > 2 * TOL_MAPBACK)
    assert (stable & ~decided).sum() <= 100  # 29 in the landmark case
    assert np.array_equal(got.argmax(0)[decided], labels_1024[decided])


def icnn_internals(net: ICNN, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run `net`, keeping the intermediates the fixture stores as int_A_* (by forward hooks)."""
    got: dict[str, torch.Tensor] = {}

    def keep(name: str):
        return lambda module, inputs, output: got.__setitem__(name, output)

    hooks = [bn.register_forward_hook(keep(f"input_bnm{r}")) for r, bn in enumerate(net.input_bn)]
    for k, layer in enumerate(net.interlinks):
        hooks += [node.register_forward_hook(keep(f"interlink{k}_row{r}")) for r, node in enumerate(layer)]
    # The output integration's result is what the head's first conv consumes.
    hooks.append(net.head_conv1.register_forward_pre_hook(lambda module, inputs: got.__setitem__("output_integration", inputs[0])))
    hooks.append(net.head_bn1.register_forward_hook(keep("last_con1_bnm")))
    hooks.append(net.head_conv2.register_forward_hook(keep("last_conv2")))
    try:
        got["stage1_logits"] = net(x)
    finally:
        for hook in hooks:
            hook.remove()
    return got


# ---- per stage, each fed the fixture's recorded input ----


@pytest.mark.parametrize("name", ["main", "ns"])
def test_preprocessing_truncates_like_the_authors_loader(name):
    case = Case(name)
    got = torch.stack([geometry.stage1_input(im, AUTHORS_CONFIG) for im in case.images()])
    assert_stage1_input(got, case["stage1_input"], case["stage1_input_fragile"])


@pytest.mark.parametrize("name", ["main", "ns"])
@torch.inference_mode()
def test_stage1_logits(model, name):
    case = Case(name)
    logits = model.stage1(torch.from_numpy(case["stage1_input"]))
    assert max_abs(logits, case["stage1_logits"]) <= TOL_A


@torch.inference_mode()
def test_stage1_internals(model):
    supp = arrays("supplementary")
    got = icnn_internals(model.stage1, torch.from_numpy(Case("main")["stage1_input"][:1]))
    wanted = sorted(k[len("int_A_"):] for k in supp.files if k.startswith("int_A_"))
    assert sorted(got) == wanted  # every recorded internal is compared, none skipped
    for key in wanted:
        assert max_abs(got[key], supp["int_A_" + key]) <= TOL_A, key


@pytest.mark.parametrize("name", ["main", "ns"])
def test_softmax_over_classes(name):
    case = Case(name)
    # The parser's own expression: float logits, softmax over the class dimension.
    assert max_abs(torch.from_numpy(case["stage1_logits"]).float().softmax(1), case["stage1_softmax"]) <= TOL_SOFTMAX


@pytest.mark.parametrize("name", ["main", "ns"])
@torch.inference_mode()
def test_localiser_theta(model, name):
    case = Case(name)
    theta = model.localise(torch.from_numpy(case["stage1_softmax"]))
    assert max_abs(theta, case["theta"]) <= TOL_B
    assert torch.all(theta[..., 0, 1] == 0) and torch.all(theta[..., 1, 0] == 0)


@pytest.mark.parametrize("name", ["main", "lm", "ns"])
def test_crops_from_the_unpadded_image(name):
    # The authors sample a zero-padded 1024 canvas; we sample the image itself through windows.
    case = Case(name)
    crops = torch.stack([geometry.crop_parts(im, w, AUTHORS_CONFIG.part_size) for im, w in zip(case.images(), case.windows())])
    assert max_abs(crops, case["parts"]) <= TOL_CROP


@pytest.mark.parametrize("name", ["main", "lm", "ns"])
@torch.inference_mode()
def test_stage2_logits_all_parts(model, name):
    case = Case(name)
    logits = model.parse_parts(torch.from_numpy(case["parts"]))
    for got, key in zip(logits, case.part_keys("stage2_logits"), strict=True):
        assert max_abs(got, case[key]) <= TOL_C, key


@pytest.mark.parametrize("name", ["main", "lm", "ns"])
def test_paste_back_over_the_padded_canvas(name):
    case = Case(name)
    side = AUTHORS_CONFIG.canvas_size
    for i, windows in enumerate(case.windows()):
        left, top = (int(v) for v in case["padding_ltrb"][i][:2])
        got = geometry.paste_back(case.part_probs(i), windows, -left, -top, side, side)
        assert_mapback(got, case["mapback"][i], case["label_map_1024"][i], case["mapback_fragility"][i])


@pytest.mark.parametrize("name", ["main", "lm", "ns"])
def test_label_map_tiled_over_the_canvas(name):
    # Windows in canvas pixels make label_map cover the whole 1024 canvas: 2x2 tiles of 512.
    case = Case(name)
    side = AUTHORS_CONFIG.canvas_size
    for i, windows in enumerate(case.canvas_windows()):
        got = geometry.label_map(case.part_probs(i), windows, side, side).numpy()
        stable = case["mapback_fragility"][i] == 0
        assert np.array_equal(got[stable], case["label_map_1024"][i][stable])


@pytest.mark.parametrize("name", ["main", "ns"])
def test_label_map_on_the_original_image(name):
    case = Case(name)
    for i, ((w, h), windows) in enumerate(zip(case.sizes, case.windows())):
        got = geometry.label_map(case.part_probs(i), windows, w, h).numpy()
        assert got.dtype == np.uint8 and got.shape == (h, w)
        assert np.array_equal(got, case["label_map_orig"][i])


def test_landmark_windows_give_the_authors_landmark_thetas():
    # Their formula: an 81x81 native-resolution window centred on each part's centroid, which
    # is 40 px either side of the centre in our window terms (ax = ay = 40).
    case = Case("lm")
    points = case["points9_yx_canvas"].astype(np.float64)  # (N, 9, (y, x)), row 0 unused
    centres = np.concatenate([points[:, 1:6], points[:, 6:9].mean(1, keepdims=True)], axis=1)
    pad = case["padding_ltrb"][:, None, :2].astype(np.float64)  # left, top
    half = (AUTHORS_CONFIG.part_size - 1) / 2
    windows = np.stack([np.full(centres.shape[:2], half), centres[..., 1] - pad[..., 0],
                        np.full(centres.shape[:2], half), centres[..., 0] - pad[..., 1]], axis=-1)  # fmt: skip
    theta = geometry.windows_to_theta(torch.from_numpy(windows), case.sizes, AUTHORS_CONFIG)
    assert max_abs(theta, case["theta"]) <= 1e-6
    assert max_abs(case.windows(), windows) <= 1e-4  # pixels


# ---- end to end, from the decoded pixels ----


@pytest.mark.parametrize("name", ["main", "ns"])
@torch.inference_mode()
def test_end_to_end_from_raw_pixels(model, name):
    # Both main-case images go as one batch: stricter than the fixture's batch of one.
    case = Case(name)
    images = case.images()
    x = torch.stack([geometry.stage1_input(im, AUTHORS_CONFIG) for im in images])
    assert_stage1_input(x, case["stage1_input"], case["stage1_input_fragile"])
    logits = model.stage1(x)
    assert max_abs(logits, case["stage1_logits"]) <= TOL_A
    theta = model.localise(logits.softmax(1))
    assert max_abs(theta, case["theta"]) <= TOL_B
    windows = geometry.theta_to_windows(theta, case.sizes, AUTHORS_CONFIG)
    crops = torch.stack([geometry.crop_parts(im, w, AUTHORS_CONFIG.part_size) for im, w in zip(images, windows)])
    assert max_abs(crops, case["parts"]) <= TOL_CROP_E2E
    part_logits = model.parse_parts(crops)
    for got, key in zip(part_logits, case.part_keys("stage2_logits"), strict=True):
        assert max_abs(got, case[key]) <= TOL_C, key
    side = AUTHORS_CONFIG.canvas_size
    for i, w in enumerate(windows):
        left, top = (int(v) for v in case["padding_ltrb"][i][:2])
        mapback = geometry.paste_back([p[i].softmax(0) for p in part_logits], w, -left, -top, side, side)
        assert_mapback(mapback, case["mapback"][i], case["label_map_1024"][i], case["mapback_fragility"][i])


@torch.inference_mode()
def test_landmark_case_from_given_thetas(model):
    case = Case("lm")
    assert (case["mapback_fragility"] == 0).all()  # every pixel of this case is stable
    images = case.images()
    crops = torch.stack([geometry.crop_parts(im, w, AUTHORS_CONFIG.part_size) for im, w in zip(images, case.windows())])
    assert max_abs(crops, case["parts"]) <= TOL_CROP
    assert crops.amax() > 0.5  # real content, unlike the main case's mostly-padding crops
    part_logits = model.parse_parts(crops)
    for got, key in zip(part_logits, case.part_keys("stage2_logits"), strict=True):
        assert max_abs(got, case[key]) <= TOL_C, key
    side = AUTHORS_CONFIG.canvas_size
    for i, w in enumerate(case.windows()):
        left, top = (int(v) for v in case["padding_ltrb"][i][:2])
        mapback = geometry.paste_back([p[i].softmax(0) for p in part_logits], w, -left, -top, side, side)
        assert_mapback(mapback, case["mapback"][i], case["label_map_1024"][i], case["mapback_fragility"][i])
        assert len(np.unique(case["label_map_1024"][i])) > 3  # a realistic paste-back, many classes


def test_face_parser_reproduces_the_official_label_maps(model):
    sha = "0" * 64
    parser = FaceParser(model, "authors", sha, device="cpu", precision="fp32")  # the authors' arithmetic, exactly
    assert parser.model_version == "authors@00000000"
    for name in ("main", "ns"):
        case = Case(name)
        results = parser.parse(list(case["raw_rgb_uint8"]))
        boxes = geometry.window_boxes(case.windows()).numpy()
        for i, result in enumerate(results):
            want = case["label_map_orig"][i]
            assert np.array_equal(result.label_map, want)
            assert np.array_equal(result.class_pixels, np.bincount(want.ravel(), minlength=NUM_CLASSES))
            np.testing.assert_allclose(result.boxes, boxes[i], atol=2e-3)


# ---- the converter on every authors' layout ----


def _same_weights(a: STNiCNN, b: STNiCNN) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_end_to_end_bundles_convert_to_the_same_weights(model, tmp_path):
    ab, c = read_authors_checkpoint(checkpoint("AB")), read_authors_checkpoint(checkpoint("C"))
    # The two layouts the README describes, built as it shows (legacy, non-zip format).
    after = {"model1": ab["model1"], "model2": c["model2"], "select_net": ab["select_net"]}
    after |= {"step": 0, "epoch": 0, "best_error": float("inf")}
    before = {"model": {**{"modelA." + k: v for k, v in ab["model1"].items()},
                        **{"stn_model." + k: v for k, v in ab["select_net"].items()},
                        **{"modelC." + k: v for k, v in c["model2"].items()}}}  # fmt: skip
    assert len(before["model"]) == 1627
    for name, bundle in (("after_like.pth.tar", after), ("before_like.pth.tar", before)):
        torch.save(bundle, tmp_path / name, _use_new_zipfile_serialization=False)
        _same_weights(load_authors_model([tmp_path / name]), model)


def test_stage1_only_file_with_stage2_file_names_the_missing_localiser():
    with pytest.raises(WeightsError, match="lack model.*B"):
        load_authors_model([checkpoint("A"), checkpoint("C")])


def test_converter_keeps_exactly_the_entries_that_affect_the_output():
    # state_dict_keys.json marks, per entry, whether it can change any test-time output.
    listing = json.loads((fixture_dir() / "state_dict_keys.json").read_text())["state_dicts"]
    wanted: set[tuple[str, str]] = set()
    for title, entries in listing.items():
        net = {"model1": "A", "select_net": "B", "model2": "C"}[title.split()[0]]
        wanted |= {(net, e["key"]) for e in entries if e["affects_output"]}
    ab, c = read_authors_checkpoint(checkpoint("AB")), read_authors_checkpoint(checkpoint("C"))
    nets = {"A": ab["model1"], "B": ab["select_net"], "C": c["model2"]}
    source = {id(v): (net, k) for net, sd in nets.items() for k, v in sd.items()}
    converted = convert_state_dicts(nets)
    kept = [source[id(v)] for v in converted.values()]
    assert len(kept) == len(set(kept))  # no source tensor used twice
    assert set(kept) == wanted
