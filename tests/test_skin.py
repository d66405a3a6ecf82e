"""The skin class end to end: labels, the model's class count, stage-1 skin in the label map,
output schema and metadata (9-class files still read), inspect, render, exports, scoring.

Fixtures are made here: label maps drawn with numpy, output files written as the job writes
them (schema.output_schema + pyarrow), real v2 weights for the model checks.
"""

from __future__ import annotations

import io
import json
import math
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from batch_parse.demo import IMAGES_DIR
from batch_parse.labels import (
    CELEBAMASK_TO_CLASS, CLASS_COLORS, CLASS_NAMES, CLASS_TO_HELEN, COARSE_CLASSES, HELEN_LABELS, HELEN_TO_CLASS,
    MIRROR_CLASS, NUM_CLASSES, NUM_PART_CLASSES, PARTS, SKIN, class_names,
)
from batch_parse.model import geometry
from batch_parse.model.config import AUTHORS_CONFIG, DEFAULT_CONFIG, ModelConfig
from batch_parse.model.expand import with_classes
from batch_parse.model.parser import FaceParser
from batch_parse.model.weights import REGISTRY, load_weights, weights_class_names
from batch_parse.output.schema import (
    STATUS_OK, file_class_names, output_schema, read_metadata, table_schema,
)
from batch_parse.train.evaluate import confusion, f1_scores
from batch_parse.train.train import has_coarse, stage1_loss

V2 = REGISTRY["stn-icnn/v2"]


# ---- labels and configs ----

def test_skin_is_appended_so_nine_class_indices_keep_their_meaning():
    assert CLASS_NAMES[SKIN] == "skin" and SKIN == NUM_CLASSES - 1 == NUM_PART_CLASSES
    assert COARSE_CLASSES == (SKIN,) and class_names(9) == CLASS_NAMES[:9] and class_names(10) == CLASS_NAMES
    assert len(CLASS_COLORS) == NUM_CLASSES and len(set(CLASS_COLORS)) == NUM_CLASSES
    assert MIRROR_CLASS[SKIN] == SKIN and len(MIRROR_CLASS) == NUM_CLASSES
    assert HELEN_TO_CLASS[HELEN_LABELS.index("face_skin")] == SKIN and HELEN_TO_CLASS[CLASS_TO_HELEN[SKIN]] == SKIN
    # CelebAMask masks are drawn in mapping order: skin first, so every part lands over it.
    assert next(iter(CELEBAMASK_TO_CLASS.values())) == SKIN
    assert all(max(p.classes) < NUM_PART_CLASSES for p in PARTS)
    with pytest.raises(ValueError):
        ModelConfig(num_classes=8)


def test_class_count_belongs_to_the_weights_file():
    assert DEFAULT_CONFIG.num_classes == 10 and AUTHORS_CONFIG.num_classes == 9
    assert weights_class_names(V2) == CLASS_NAMES[:9]
    assert weights_class_names(REGISTRY["stn-icnn/v1"]) == CLASS_NAMES[:9]
    model, _ = load_weights(V2)
    assert model.cfg.num_classes == 9 and model.stage1.head_conv3.out_channels == 9


# ---- the model: a grown v2, stage-1 skin in the label map ----

@pytest.fixture(scope="module")
def faces(one_torch_thread):
    return [np.asarray(Image.open(IMAGES_DIR / name).convert("RGB")) for name in ("hopper.jpg", "hopper_face_tight.jpg")]


def test_v2_grown_to_ten_classes_labels_its_parts_exactly_as_v2(faces):
    v2, _ = load_weights(V2)
    grown = with_classes(v2, 10).eval()
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        p9, p10 = v2.stage1(x).softmax(1), grown.stage1(x).softmax(1)
        torch.testing.assert_close(p10[:, 1:9], p9[:, 1:], atol=1e-6, rtol=0)
        torch.testing.assert_close(p10[:, 0] + p10[:, 9], p9[:, 0], atol=1e-6, rtol=0)
        torch.testing.assert_close(grown.localise(p10), v2.localise(p9), atol=1e-5, rtol=0)
    old = FaceParser(v2, "v2", "0" * 64, device="cpu", precision="fp32").parse(faces)
    new = FaceParser(grown, "grown", "0" * 64, device="cpu", precision="fp32").parse(faces)
    for a, b in zip(old, new):
        assert a.class_names == CLASS_NAMES[:9] and b.class_names == CLASS_NAMES
        parts = b.label_map != SKIN
        np.testing.assert_array_equal(b.label_map[parts], a.label_map[parts])
        assert (a.label_map[~parts] == 0).all()  # skin only ever replaces background
        assert a.class_pixels[SKIN] == 0 and len(a.class_pixels) == len(b.class_pixels) == NUM_CLASSES
        np.testing.assert_array_equal(b.class_pixels, np.bincount(b.label_map.ravel(), minlength=NUM_CLASSES))


def test_add_skin_fills_stage_one_face_where_stage_two_said_background():
    cfg = DEFAULT_CONFIG
    s = cfg.stage1_size
    probs = torch.zeros(NUM_CLASSES, s, s)
    probs[0] = 1.0
    # Stage 1 calls the centre half of its square "face" (skin), on a 200x100 (wide) photo: the
    # photo fills rows 32..95 of the 128 square, columns 0..127.
    probs[0, 32:96, 32:96], probs[SKIN, 32:96, 32:96] = 0.1, 0.9
    labels = torch.zeros(100, 200, dtype=torch.uint8)
    labels[45:55, 95:105] = 5  # a nose from stage 2, inside the face
    geometry.add_skin(labels, probs, 200, 100, cfg)
    skin = labels == SKIN
    assert (labels[45:55, 95:105] == 5).all()  # parts stay
    # The face square covers photo x 50..149 and y 0..99 (128 px -> 200 px, 1.5625 px per cell).
    ys, xs = skin.nonzero(as_tuple=True)
    assert abs(xs.min().item() - 50) <= 1 and abs(xs.max().item() - 149) <= 1
    assert ys.min().item() == 0 and ys.max().item() == 99
    assert skin.sum().item() == pytest.approx(100 * 100 - 100, abs=250)
    # No face region: nothing changes.
    empty = torch.zeros(100, 200, dtype=torch.uint8)
    probs[0], probs[SKIN] = 1.0, 0.0
    assert not geometry.add_skin(empty, probs, 200, 100, cfg).any()


def test_named_weights_load_with_their_own_classes(faces):
    from batch_parse.model.parser import load_parser

    named = (("stn-icnn/v1", CLASS_NAMES[:9]), ("stn-icnn/v2", CLASS_NAMES[:9]), ("stn-icnn/v3", CLASS_NAMES),
             ("stn-icnn/v4", CLASS_NAMES), ("stn-icnn/default", CLASS_NAMES))
    for name, classes in named:
        parser = load_parser(name, device="cpu")
        assert parser.class_names == classes == parser.cfg.class_names, name
    for name in ("stn-icnn/v3", "stn-icnn/default"):
        for r in load_parser(name, device="cpu").parse(faces):  # tight face crops: skin around the parts, the parts still there
            area = r.label_map.size
            assert r.class_pixels[SKIN] > 0.15 * area, name
            assert all(r.class_pixels[c] > 0 for c in (3, 4, 5, 6, 8)), name
            assert r.class_pixels[SKIN] < 0.95 * area, name


# ---- training: skin-less labels, augmentation ----

def test_faces_without_skin_labels_score_background_as_background_or_skin():
    logits = torch.randn(2, NUM_CLASSES, 4, 4)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[:, 0, 0] = 3
    labelled = torch.tensor([True, False])
    logp = logits.log_softmax(1)
    want_0 = -torch.where(target[0] == 3, logp[0, 3], logp[0, 0]).mean()
    merged = torch.logsumexp(logp[1, [0, SKIN]], 0)
    want_1 = -torch.where(target[1] == 3, logp[1, 3], merged).mean()
    assert stage1_loss(logits, target, labelled).item() == pytest.approx(((want_0 + want_1) / 2).item(), rel=1e-5)
    labels = torch.zeros(2, 5, 5, dtype=torch.long)
    labels[0, 2, 2] = SKIN
    assert has_coarse(labels).tolist() == [True, False]


def test_squeeze_and_side_light_keep_labels_on_their_pixels():
    from batch_parse.train import augment

    gen = torch.Generator().manual_seed(3)
    images = torch.zeros(8, 3, 64, 64)
    labels = torch.zeros(8, 64, 64, dtype=torch.long)
    images[:, :, 20:44, 20:44] = 1.0
    labels[:, 20:44, 20:44] = SKIN
    out, lab = augment.augment(images, labels, gen, zoom_min=0.7)
    assert out.shape == images.shape and lab.shape == labels.shape
    # Photometric changes move no pixel: where the label says skin, the image is the bright square.
    bright = out.mean(1)
    for i in range(8):
        inside, outside = bright[i][lab[i] == SKIN], bright[i][lab[i] == 0]
        if inside.numel() > 50 and outside.numel() > 50:
            assert inside.median() > outside.median()
    shaded = augment.side_light(torch.ones(4, 3, 8, 32), torch.Generator().manual_seed(0), p=1.0)
    assert (shaded <= 1).all() and (shaded.amin((1, 2, 3)) < 0.75).all()


# ---- output files: schema, metadata, inspect, render, export ----

def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _face_map(size: int = 120) -> np.ndarray:
    lm = np.zeros((size, size), np.uint8)
    lm[20:110, 25:95] = SKIN
    lm[40:46, 35:55], lm[40:46, 65:85] = 3, 4
    lm[55:80, 52:68] = 5
    lm[88:94, 45:75] = 6
    return lm


def _write_output(dst: Path, names: tuple[str, ...], label_map: np.ndarray, source: Path) -> None:
    """One labelled face as the job writes it, by a model with `names` classes."""
    model = "stn-icnn/v3" if len(names) == NUM_CLASSES else "stn-icnn/v2"
    sha = ("3" if len(names) == NUM_CLASSES else "2") * 64
    schema = output_schema(model, sha, "png", source=str(source), class_names=names)
    label_map = np.where(label_map < len(names), label_map, 0).astype(np.uint8)
    key = "face.png"
    height, width = label_map.shape
    row = {name: None for name in schema.names}
    row.update(id=zlib.crc32(key.encode()), key=key, width=width, height=height, status=STATUS_OK, face_index=0, face_count=1,
               label_map=_png(label_map), label_map_x=0, label_map_y=0, face_box=[0.0, 0.0, float(width), float(height)],
               transform=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], aligned_width=width, aligned_height=height,
               model_version=f"{model}@{sha[:8]}", processed_at=datetime.now(timezone.utc))  # fmt: skip
    for part in PARTS:
        ys, xs = np.nonzero(np.isin(label_map, part.classes))
        box = [10.0, 10.0, 30.0, 30.0] if xs.size == 0 else [xs.min() - 3.0, ys.min() - 3.0, xs.max() + 4.0, ys.max() + 4.0]
        row[f"{part.name}_box"] = box
        row[f"{part.name}_window"] = [box[0], box[1], box[2], box[1], box[2], box[3], box[0], box[3]]
        row[f"{part.name}_confidence"] = 0.8
    row["parse_score"] = 0.8
    for c, name in enumerate(names):
        row[f"pixels_{name}"] = int((label_map == c).sum())
    folder = dst / f"{model.replace('/', '_')}-{sha[:8]}" / "data"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([row], schema=schema), folder / "part-0.parquet")


@pytest.fixture
def outputs(tmp_path):
    """(v3 output, v2 output, both in one folder): a 10-class and a 9-class file of the same face."""
    source = tmp_path / "source"
    source.mkdir()
    lm = _face_map()
    Image.fromarray(np.full((*lm.shape, 3), 180, np.uint8)).save(source / "face.png")
    v3, v2, mixed = tmp_path / "v3", tmp_path / "v2", tmp_path / "mixed"
    _write_output(v3, CLASS_NAMES, lm, source)
    _write_output(v2, CLASS_NAMES[:9], lm, source)
    _write_output(mixed, CLASS_NAMES, lm, source)
    _write_output(mixed, CLASS_NAMES[:9], lm, source)
    return v3, v2, mixed


def test_schema_and_metadata_follow_the_models_classes(outputs):
    v3, v2, _ = outputs
    assert "pixels_skin" in table_schema(CLASS_NAMES).names and "pixels_skin" not in table_schema(CLASS_NAMES[:9]).names
    for folder, names in ((v3, CLASS_NAMES), (v2, CLASS_NAMES[:9])):
        path = next(folder.rglob("*.parquet"))
        table = pq.read_table(path)
        meta = read_metadata(table.schema)
        assert tuple(meta["class_names"]) == names == file_class_names(meta)
        assert [tuple(c) for c in meta["class_colors"]] == list(CLASS_COLORS[: len(names)])
        assert ("pixels_skin" in table.column_names) == (len(names) == NUM_CLASSES)
    assert table.column("pixels_nose").to_pylist() == [int((_face_map() == 5).sum())]
    # Files from before the class list grew (no class_names key) read as the 9 part classes.
    assert file_class_names({}) == CLASS_NAMES[:9]


def test_inspect_reads_nine_and_ten_class_files_together(outputs):
    from batch_parse.report.inspect import collect_stats

    _, _, mixed = outputs
    _, versions = collect_stats(str(mixed))
    assert len(versions) == 2
    by_model = {v.split("@")[0]: s for v, s in versions.items()}
    assert by_model["stn-icnn/v3"].class_present[SKIN] == 1
    assert by_model["stn-icnn/v2"].class_present[SKIN] == 0 and by_model["stn-icnn/v2"].class_present[5] == 1
    # The report lists each version's classes from its files' metadata: no skin line for v2.
    from batch_parse.report.inspect import inspect_output

    text = "\n".join(inspect_output(str(mixed)))
    v3_block, v2_block = sorted(text.split("\nmodel_version ")[1:], key=lambda b: "stn-icnn/v2" in b.splitlines()[0])
    assert "classes (10, from the files' metadata)" in v3_block and "\n    skin " in v3_block
    assert "classes (9, from the files' metadata)" in v2_block and "\n    skin " not in v2_block


def test_render_draws_skin_in_its_colour_and_lists_it_from_the_metadata(outputs, tmp_path):
    from batch_parse.report import overlay as ov
    from batch_parse.report.render import render_output

    v3, v2, _ = outputs
    lm = _face_map()
    picture = ov.overlay(np.full((*lm.shape, 3), 180, np.uint8), lm)
    skin_pixel = picture[100, 30].astype(int)  # inside the skin, away from its outline
    nose_pixel = picture[65, 60].astype(int)
    assert (skin_pixel != 180).any() and (nose_pixel != 180).any()
    # Skin is blended more lightly than the parts, towards its own colour.
    assert np.abs(skin_pixel - 180).sum() < np.abs(nose_pixel - 180).sum()
    assert np.sign(skin_pixel - 180).tolist() == np.sign(np.array(CLASS_COLORS[SKIN]) - 180).tolist()
    assert ov.legend(class_names=CLASS_NAMES).height > ov.legend(class_names=CLASS_NAMES[:9]).height
    for folder, has_skin in ((v3, True), (v2, False)):
        out = tmp_path / f"render-{folder.name}"
        render_output(str(folder), str(out))
        assert ("</span>skin</span>" in (out / "index.html").read_text()) == has_skin  # the legend
        panel = np.asarray(Image.open(next((out / "panels").rglob("*.png"))).convert("RGB"))
        teal = (np.abs(panel.astype(int) - CLASS_COLORS[SKIN]).sum(2) == 0).sum()
        assert (teal > 20) == has_skin  # the skin outline and legend swatch, only where there is skin


def test_exports_carry_skin_masks_and_nine_class_outputs_still_export(outputs, tmp_path):
    from pycocotools.coco import COCO

    from batch_parse.export import export_output

    v3, v2, _ = outputs
    lm = _face_map()
    for folder in (v3, v2):
        out = tmp_path / f"coco-{folder.name}"
        export_output(str(folder), out, "coco")
        coco = COCO(str(out / "annotations.json"))
        # Category ids are class indices, one per class of the output's own model: skin (9) only for v3.
        parts = [c for c in coco.loadCats(coco.getCatIds()) if c["name"] != "face"]  # "face": the keypoint category
        names = CLASS_NAMES if folder is v3 else CLASS_NAMES[:9]
        assert [(c["id"], c["name"]) for c in parts] == list(enumerate(names))[1:]
        masks = {a["category_id"]: coco.annToMask(a).astype(bool) for a in coco.loadAnns(coco.getAnnIds(catIds=[c["id"] for c in parts]))}
        if folder is v3:
            np.testing.assert_array_equal(masks[SKIN], lm == SKIN)
        else:
            assert SKIN not in masks
        np.testing.assert_array_equal(masks[5], lm == 5)
    import zipfile

    for folder in (v3, v2):
        out = tmp_path / f"cvat-{folder.name}"
        export_output(str(folder), out, "cvat")
        with zipfile.ZipFile(next(out.glob("*.zip"))) as archive:
            assert ("skin:0,170,150::" in archive.read("labelmap.txt").decode()) == (folder is v3)


def test_every_export_offers_only_the_classes_of_the_outputs_model(outputs, tmp_path):
    """A 9-class output's exports name no `skin` anywhere a tool offers classes: Label Studio's brush
    labels, CVAT's labelmap, the HF ClassLabel and card, FiftyOne's mask targets (read by the tools' own parsers)."""
    import json
    import zipfile

    from huggingface_hub import DatasetCard
    from label_studio_converter import Converter

    from batch_parse.export import export_output

    v3, v2, _ = outputs
    for folder, names in ((v3, CLASS_NAMES), (v2, CLASS_NAMES[:9])):
        ls = tmp_path / f"ls-{folder.name}"
        export_output(str(folder), ls, "labelstudio")
        converter = Converter(config=str(ls / "labeling_config.xml"), project_dir=str(tmp_path), download_resources=False)
        assert converter._schema["parts"]["labels"] == list(names[1:])
        cvat = tmp_path / f"cvat-{folder.name}"
        export_output(str(folder), cvat, "cvat")
        with zipfile.ZipFile(next(cvat.glob("*.zip"))) as archive:
            lines = [line for line in archive.read("labelmap.txt").decode().splitlines()[1:] if not line.startswith("#")]
        assert [line.split(":")[0] for line in lines] == list(names)
        hf = tmp_path / f"hf-{folder.name}"
        export_output(str(folder), hf, "hf")
        card = DatasetCard.load(hf / "README.md")
        (feature,) = [f for f in card.data.dataset_info["features"] if f["name"] == "classes"]
        assert list(feature["list"]["class_label"]["names"].values()) == list(names)
        assert ("`skin`" in card.text) == (folder is v3)
        fo = tmp_path / f"fo-{folder.name}"
        export_output(str(folder), fo, "fiftyone")
        targets = json.loads((fo / "metadata.json").read_text())["info"]["mask_targets"]["segmentation"]
        assert list(targets.values()) == list(names)


# ---- scoring ----

def test_skin_f1_is_scored_apart_from_the_parts():
    gt = _face_map()
    pred = gt.copy()
    pred[20:30] = np.where(pred[20:30] == SKIN, 0, pred[20:30])  # the forehead's top missed
    scores = f1_scores(confusion(pred, gt))
    assert scores["overall"] == 1.0
    tp = int((pred == SKIN).sum())
    assert scores["skin"] == pytest.approx(2 * tp / (tp + int((gt == SKIN).sum())))
    # A 9-class model's map scores the same parts; its skin F1 is 0 (it labels none).
    nine = np.where(gt == SKIN, 0, gt)
    scores9 = f1_scores(confusion(nine, gt))
    assert scores9["overall"] == 1.0 and scores9["skin"] == 0.0
    assert math.isnan(f1_scores(confusion(nine, nine))["skin"])


def test_facepool_scores_skin_per_pose(tmp_path):
    from batch_parse.train.facepool import FaceRecord
    from batch_parse.train.probes import format_scores, score_facepool
    from batch_parse.train.teacher import write_sample

    root = tmp_path / "pool"
    (root / "images").mkdir(parents=True)
    gt = _face_map()
    records = []
    for i, pose in enumerate(("frontal", "profile")):
        name = f"face-{i}"
        write_sample(root, name, np.full((*gt.shape, 3), 128, np.uint8), np.asarray(CLASS_TO_HELEN, np.uint8)[gt])
        records.append(FaceRecord(name=name, source="test", photo=f"{name}.jpg", split="test", face_index=0, box=[0, 0, 1, 1],
                                  score=1.0, landmarks=[[0, 0]] * 5, matrix=[[1, 0, 0], [0, 1, 0]], side=120, yaw=0.0, pose=pose,
                                  written=True, teacher="ok", flip_agreement=1.0, clean=True, probes=[("nose", [60.0, 65.0])]))
    (root / "faces.jsonl").write_text("".join(json.dumps(r.__dict__) + "\n" for r in records))

    def predict(images):
        # frontal: exact; profile: the skin's lower half missed
        out = [gt.copy(), gt.copy()][: len(images)]
        if len(out) == 2:
            out[1][65:] = np.where(out[1][65:] == SKIN, 0, out[1][65:])
        return out

    scores = score_facepool(predict, root, "test")
    f1 = scores.f1()
    assert f1[("all", "frontal")]["skin"] == 1.0
    assert 0.5 < f1[("all", "profile")]["skin"] < 1.0 and f1[("all", "profile")]["overall"] == 1.0
    assert "skin=100.00" in format_scores(scores)
    assert scores.to_json()["f1_vs_teacher"]["all/frontal"]["skin"] == 1.0
