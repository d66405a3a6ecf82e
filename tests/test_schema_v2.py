"""Schema v2 round trip: face results -> the job's face rows -> encoded table -> Parquet -> the same values back."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from batch_parse import load_detector, load_parser
from batch_parse.demo import IMAGES_DIR
from batch_parse.faces.align import Alignment
from batch_parse.labels import CLASS_NAMES, PART_NAMES
from batch_parse.pipeline import stages
from batch_parse.output.schema import BASE_SCHEMA, COLUMN_DOCS, MIGRATION_V1, SCHEMA_VERSION, output_schema, read_metadata

POLICY = {"faces": "all", "detector": "mtcnn", "min_face": 20, "detector_threshold": 0.9}


@pytest.fixture(scope="module")
def group(one_torch_thread):
    photo = np.asarray(Image.open(IMAGES_DIR / "group_canvas.jpg").convert("RGB"))
    detector, parser = load_detector("mtcnn", device="cpu"), load_parser("stn-icnn/default", device="cpu")
    return photo, parser.parse_faces([photo], detector.detect([photo]))


def _image_columns(photo: np.ndarray, code: str = "") -> dict:
    return {"id": np.int64(7), "key": "group.jpg", "size": np.int64(1234), "etag": "e", "width": np.int32(photo.shape[1]),
            "height": np.int32(photo.shape[0]), "error_code": code, "error": "group.jpg: broken" if code else ""}


def test_face_rows_survive_parquet(group, tmp_path):
    photo, results = group
    rows = [stages._face_row(_image_columns(photo), r, len(results)) for r in results]
    rows.append(stages._empty_face_row({**_image_columns(photo), "id": np.int64(8), "key": "sky.jpg"}, "no_face"))
    rows.append(stages._empty_face_row({**_image_columns(photo, "truncated"), "id": np.int64(9), "key": "bad.jpg"}, "error"))
    schema = output_schema("stn-icnn/default", "ab" * 32, "png", source="/photos", policy=POLICY)
    table = stages.encode_rows(stages._columns(rows), schema, "stn-icnn/default@abababab", "png", 90)
    pq.write_table(table, tmp_path / "part.parquet")
    back = pq.read_table(tmp_path / "part.parquet")
    assert back.schema.remove_metadata().equals(BASE_SCHEMA.remove_metadata())

    meta = read_metadata(back.schema)
    assert meta["schema_version"] == SCHEMA_VERSION == 2
    assert {k: meta[k] for k in POLICY} == POLICY and meta["source"] == "/photos"
    assert meta["columns"] == COLUMN_DOCS and meta["migration_from_v1"] == MIGRATION_V1
    assert meta["class_names"] == list(CLASS_NAMES)

    records = back.to_pylist()
    for r, rec in zip(results, records):
        assert (rec["status"], rec["face_index"], rec["face_count"]) == ("ok", r.face_index, len(results))
        labels = np.asarray(Image.open(io.BytesIO(rec["label_map"])))
        np.testing.assert_array_equal(labels, r.label_map)
        assert (rec["label_map_x"], rec["label_map_y"]) == r.label_map_offset
        np.testing.assert_allclose(rec["transform"], r.alignment.matrix.reshape(6))
        assert (rec["aligned_width"], rec["aligned_height"]) == (r.alignment.width, r.alignment.height)
        np.testing.assert_allclose(rec["landmarks"], r.landmarks.reshape(10), rtol=1e-6)
        np.testing.assert_allclose(rec["face_box"], r.face_box, rtol=1e-6)
        assert rec["face_score"] == pytest.approx(r.score, rel=1e-6)
        assert [rec[f"pixels_{c}"] for c in CLASS_NAMES] == r.class_pixels.tolist()
        for p, name in enumerate(PART_NAMES):
            np.testing.assert_allclose(np.reshape(rec[f"{name}_window"], (4, 2)), r.windows[p], rtol=1e-6)
            np.testing.assert_allclose(rec[f"{name}_box"], [*r.windows[p].min(0), *r.windows[p].max(0)], rtol=1e-6)
            assert rec[f"{name}_confidence"] == pytest.approx(float(r.confidences[p]), rel=1e-6)
            crop = r.part_crop(p)
            if crop.size:  # PNG crops are lossless: the aligned frame's pixels, exactly
                np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(rec[f"{name}_crop"]))), crop)
        # The transform in the row redoes the aligned frame from the original, with PIL.
        frame = Alignment(np.reshape(rec["transform"], (2, 3)), rec["aligned_width"], rec["aligned_height"])
        redone = np.asarray(Image.fromarray(photo).transform((frame.width, frame.height), Image.AFFINE, frame.pil_affine(),
                                                             resample=Image.BILINEAR)).astype(int)
        inner = (slice(8, -8), slice(8, -8))
        assert np.abs(redone[inner] - r.aligned[inner].astype(int)).mean() < 4  # the same picture (ours is antialiased when it shrinks)

    no_face, error = records[-2], records[-1]
    assert no_face["status"] == "no_face" and no_face["face_count"] == 0 and no_face["face_index"] is None
    assert no_face["label_map"] is None and no_face["width"] == photo.shape[1] and no_face["error_code"] is None
    assert error["status"] == "error" and error["error_code"] == "truncated" and error["width"] is None
    assert all(error[f"{p}_crop"] is None for p in PART_NAMES)
