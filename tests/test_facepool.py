"""The face pool on real photos: one small folder built once (MTCNN + alignment + MediaPipe teacher),
then its records, splits, probes, scoring, self-labelling, the CLI on it, and the helpers."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from batch_parse.labels import F1_GROUPS, HELEN_LABELS, HELEN_TO_CLASS, NUM_CLASSES
from batch_parse.train.datasets import HELEN_SPLIT_FILES, SPLITS, hash_split, open_dataset
from batch_parse.train.facepool import (
    CALTECH_PROBES,
    CFP_PROBES,
    FLIP_KEEP,
    MIN_FRAME,
    POSES,
    SOURCES,
    UTKFACE,
    agreement,
    build,
    caltech_probes,
    cfp_probes,
    list_photos,
    main,
    mirror_labels,
    pose_bucket,
    read_records,
    summarise,
    yaw_proxy,
)
from batch_parse.train.probes import Scores, format_scores, probe_hits, read_face, read_teacher, score_facepool
from corpus import shared_dir, utkface_dir

FACEPOOL = shared_dir() / "data" / "facepool"
UTK = utkface_dir()
LIMIT = 2  # photos per source: 14 photos, a few seconds on one worker


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory) -> tuple[Path, dict]:
    """One small face-pool folder for the whole module: (folder, the summary build returned)."""
    pytest.importorskip("mediapipe")
    dst = tmp_path_factory.mktemp("facepool")
    summary = build(FACEPOOL, dst, utkface=UTK, limit=LIMIT, workers=1)
    return dst, summary


@pytest.fixture(scope="module")
def records(pool_dir):
    return read_records(pool_dir[0])


def _group(record) -> str:
    """What the split must hash, worked out from the record's photo path independently of the code."""
    path = Path(record.photo)
    if record.source == "cfp":  # cfp/images/PERSON/{frontal,profile}/NN.jpg
        return f"cfp-{path.parts[-3]}"
    if record.source == UTKFACE:  # the bare name, as the teacher's UTKFace folder split it
        return path.name.split(".")[0]
    return f"{record.source}-{path.name.split('.')[0]}"


def _to_frame(matrix, points) -> np.ndarray:
    m = np.asarray(matrix, np.float64)
    return np.asarray(points, np.float64) @ m[:, :2].T + m[:, 2]


def _split_names(root: Path, split: str) -> list[str]:
    return [n for n in (root / HELEN_SPLIT_FILES[split]).read_text().splitlines() if n.strip()]


# --- build output -------------------------------------------------------------------------------


def test_every_photo_is_listed_and_some_faces_are_labelled(pool_dir, records):
    _, summary = pool_dir
    assert summary["photos"] == len(list_photos(FACEPOOL, UTK, LIMIT)) == LIMIT * (len(SOURCES) + 1)
    assert summary["unreadable"] == []
    assert {r.source for r in records} >= {"cfp", "caltech", UTKFACE}
    # Real, mostly frontal portraits: the teacher labels many of them cleanly, so later checks have data.
    assert sum(r.clean for r in records) >= 5
    assert len({r.name for r in records}) == len(records)


def test_written_faces_have_their_frame_and_labels(pool_dir, records):
    root, _ = pool_dir
    for r in records:
        native = r.side / math.sqrt(abs(np.linalg.det(np.asarray(r.matrix)[:, :2])))  # frame side in photo pixels
        assert r.written == (native >= MIN_FRAME), r.name
        image = root / "images" / f"{r.name}.jpg"
        assert image.is_file() == r.written, r.name
        if r.written:
            with Image.open(image) as im:
                assert im.size == (r.side, r.side), r.name
        else:
            assert r.teacher == "skipped" and r.flip_agreement is None and not r.clean, r.name
        label_dir = root / "labels" / r.name
        assert label_dir.is_dir() == (r.teacher == "ok"), r.name
        if r.teacher == "ok":
            masks = sorted(label_dir.glob("*.png"))
            assert [m.name for m in masks] == [f"{r.name}_lbl{i:02d}.png" for i in range(len(HELEN_LABELS))]
            stack = np.stack([np.asarray(Image.open(m)) for m in masks])
            assert stack.shape == (len(HELEN_LABELS), r.side, r.side)
            assert ((stack == 255).sum(axis=0) == 1).all(), f"{r.name}: masks must partition the frame"
            assert 0.0 <= r.flip_agreement <= 1.0
        else:
            assert r.flip_agreement is None and not r.clean, r.name
    # Nothing else was written.
    assert {p.stem for p in (root / "images").iterdir()} == {r.name for r in records if r.written}
    assert {p.name for p in (root / "labels").iterdir()} == {r.name for r in records if r.teacher == "ok"}


def test_clean_means_teacher_agrees_with_itself_on_the_mirror(records):
    for r in records:
        assert r.clean == (r.teacher == "ok" and r.flip_agreement >= FLIP_KEEP), r.name


def test_pose_and_landmarks(records):
    for r in records:
        assert r.pose == pose_bucket(r.yaw) and r.pose in POSES, r.name
        assert r.yaw == pytest.approx(yaw_proxy(np.asarray(r.landmarks)))
        assert np.asarray(r.landmarks).shape == (5, 2) and np.asarray(r.matrix).shape == (2, 3)


def test_faces_of_a_photo_are_numbered_largest_first(records):
    by_photo: dict[str, list] = {}
    for r in records:
        by_photo.setdefault(r.photo, []).append(r)
    for photo, faces in by_photo.items():
        faces.sort(key=lambda r: r.face_index)
        assert [r.face_index for r in faces] == list(range(len(faces))), photo
        one_face = faces[0].source == UTKFACE or SOURCES[faces[0].source][1]
        if one_face:
            assert len(faces) == 1, photo
        areas = [(r.box[2] - r.box[0]) * (r.box[3] - r.box[1]) for r in faces]
        assert areas == sorted(areas, reverse=True), photo


def test_split_files_list_exactly_the_clean_faces(pool_dir, records):
    root, _ = pool_dir
    listed_anywhere = []
    for split in SPLITS:
        names = _split_names(root, split)
        assert names == sorted({r.name for r in records if r.clean and r.split == split}), split
        for name in names:
            assert (root / "labels" / name).is_dir() and (root / "images" / f"{name}.jpg").is_file()
        listed_anywhere += names
    assert len(listed_anywhere) == len(set(listed_anywhere)) == sum(r.clean for r in records)
    # The folder is a Helen-layout training set as it stands.
    train = open_dataset(root, "train")
    name, image, label = train[0]
    assert image.shape[:2] == label.shape and label.max() < NUM_CLASSES and (label > 0).any()


def test_summary_counts_agree_with_the_records(pool_dir, records):
    root, returned = pool_dir
    summary = json.loads((root / "summary.json").read_text())
    assert summary == json.loads(json.dumps(returned))
    table = summary["by_source_and_pose"]
    sources = sorted(r.source for r in records)
    assert sorted(s for s in table if s != "all") == sorted(set(sources))
    for source in set(sources):
        assert sum(c["faces"] for c in table[source].values()) == sources.count(source), source
    for pose, c in table["all"].items():
        for key, value in c.items():
            assert value == sum(table[s].get(pose, {}).get(key, 0) for s in table if s != "all"), (pose, key)
    for source, poses in table.items():
        for pose, c in poses.items():
            assert pose in POSES
            assert c["teacher_ok"] + c["teacher_no_face"] <= c["written"] <= c["faces"], (source, pose)
            assert c["clean"] + c["flip_dropped"] == c["teacher_ok"], (source, pose)
    assert sum(c["clean"] for c in table["all"].values()) == sum(len(_split_names(root, s)) for s in SPLITS)
    assert sum(c["faces"] for c in table["all"].values()) == len(records)
    # Every annotated face either gave its probes to one detection or was counted as missed.
    annotated = sum(len(p.probes) for p in list_photos(FACEPOOL, UTK, LIMIT))
    assert summary["annotated_faces_missed_by_detector"] == annotated - sum(bool(r.probes) for r in records)
    assert summarise(records) == table


# --- splits ----------------------------------------------------------------------------------------


def test_split_is_fixed_by_person_or_photo(records):
    for r in records:
        if r.source != UTKFACE:  # UTKFace: see test_utkface_faces_keep_the_split_the_shipped_weights_were_trained_with
            assert r.split == hash_split(_group(r)), r.name
    by_group: dict[str, set[str]] = {}
    for r in records:
        by_group.setdefault(_group(r), set()).add(r.split)
    assert all(len(splits) == 1 for splits in by_group.values())
    # And over more photos than were built: every CFP person (frontal and profile) is one group.
    photos = [p for p in list_photos(FACEPOOL, limit=40) if p.source == "cfp"]
    persons: dict[str, set[str]] = {}
    for p in photos:
        parts = Path(p.path).parts  # cfp/images/PERSON/VIEW/NN.jpg
        assert p.group == f"cfp-{parts[2]}", p.path
        persons.setdefault(parts[2], set()).add(parts[3])
    assert any(views == {"frontal", "profile"} for views in persons.values())


def test_utkface_faces_keep_the_split_the_shipped_weights_were_trained_with():
    photos = [p for p in list_photos(FACEPOOL, UTK) if p.source == UTKFACE]
    assert len(photos) > 1000
    moved = [p.path for p in photos if hash_split(p.group) != hash_split(Path(p.path).name.split(".")[0])]
    assert moved == [], f"{len(moved)} of {len(photos)} UTKFace photos change split, e.g. {moved[:2]}"


# --- probes ----------------------------------------------------------------------------------------


def test_cfp_probes_are_the_fiducials_mapped_into_the_frame(records):
    cfp = [r for r in records if r.source == "cfp"]
    assert cfp and all(r.probes for r in cfp), "the first CFP photos are annotated and their faces found"
    for r in cfp:
        _, _, person, view, file = Path(r.photo).parts
        fiducials = FACEPOOL / "cfp" / "fiducials" / person / view / f"{Path(file).stem}.txt"
        expected = cfp_probes(fiducials)
        assert [part for part, _ in r.probes] == [part for part, _ in expected] == list(CFP_PROBES)
        photo_points = np.array([p for _, p in expected])
        assert np.allclose(np.array([p for _, p in r.probes]), _to_frame(r.matrix, photo_points)), r.name
        # The probes follow the 30-point layout: on a frontal face brows, eyes, nose and lips run top to bottom,
        # and the eye contour's mean sits on one of the detector's eyes.
        v = {part: p[1] for part, p in r.probes}
        if r.pose == "frontal":
            assert v["brows"] < v["eyes"] < v["nose"] < v["upper_lip"] < v["lower_lip"], r.name
        lm = np.asarray(r.landmarks)
        eye = np.array(dict(r.probes)["eyes"])
        span = np.linalg.norm(lm[1] - lm[0])
        assert min(np.linalg.norm(eye - lm[0]), np.linalg.norm(eye - lm[1])) < 0.2 * span, r.name


def test_caltech_probes_are_zero_based_and_four_per_face():
    faces = caltech_probes(FACEPOOL)
    lines = [l.split() for l in (FACEPOOL / "caltech_webfaces" / "faces.txt").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert sum(len(v) for v in faces.values()) == len(lines)
    first = lines[0]
    probes = faces[first[0]][0]
    assert [part for part, _ in probes] == list(CALTECH_PROBES) == ["eyes", "eyes", "nose", "mouth"]
    assert np.allclose([p for _, p in probes], np.array(first[1:], float).reshape(4, 2) - 1)
    for photo_faces in faces.values():
        for face in photo_faces:
            assert [part for part, _ in face] == list(CALTECH_PROBES)
            assert all(part in F1_GROUPS for part, _ in face)


def test_caltech_probes_in_records_are_a_face_of_their_photo_mapped(records):
    annotated = caltech_probes(FACEPOOL)
    probed = [r for r in records if r.source == "caltech" and r.probes]
    assert probed, "the first Caltech photos have annotated faces the detector finds"
    for r in probed:
        got = np.array([p for _, p in r.probes])
        assert [part for part, _ in r.probes] == list(CALTECH_PROBES)
        candidates = [_to_frame(r.matrix, [p for _, p in face]) for face in annotated[Path(r.photo).name]]
        assert any(np.allclose(got, c) for c in candidates), r.name
        # Matched to the right detection: the annotated eyes sit on the detector's eyes (image left to left).
        lm = np.asarray(r.landmarks)
        span = np.linalg.norm(lm[1] - lm[0])
        assert np.linalg.norm(got[0] - lm[0]) < 0.25 * span and np.linalg.norm(got[1] - lm[1]) < 0.25 * span, r.name
    # One annotated face goes to at most one detection.
    for photo in {r.photo for r in probed}:
        faces = [tuple(map(tuple, np.round([p for _, p in r.probes], 6))) for r in probed if r.photo == photo]
        assert len(faces) == len(set(faces))


# --- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_map(pool_dir, records) -> np.ndarray:
    """The teacher's 9-class map of the first cleanly labelled face."""
    clean = [r for r in records if r.clean]
    assert clean
    return read_teacher(pool_dir[0], clean[0].name)


def test_agreement_identical_and_disjoint(teacher_map):
    real = teacher_map
    assert (real > 0).any()
    assert agreement(real, real) == 1.0
    a = np.zeros((8, 8), np.uint8)
    b = np.zeros((8, 8), np.uint8)
    a[:, :4] = 3
    b[:, 4:] = 3
    assert agreement(a, b) == 0.0  # same class, no shared pixel
    assert agreement(a, np.where(a == 3, 4, 0).astype(np.uint8)) == 0.0  # same pixels, other class
    half = a.copy()
    half[:4] = 0
    assert agreement(a, half) == pytest.approx(2 * 16 / (32 + 16))


def test_mirror_labels_reverses_columns_and_swaps_sides(teacher_map):
    m = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8]], np.uint8)
    assert mirror_labels(m).tolist() == [[8, 7, 6, 5, 3, 4, 1, 2, 0]]
    real = teacher_map
    mirrored = mirror_labels(real)
    assert np.array_equal(mirror_labels(mirrored), real)
    assert np.array_equal(mirrored == 1, (real == 2)[:, ::-1]) and np.array_equal(mirrored == 4, (real == 3)[:, ::-1])
    assert np.array_equal(mirrored == 5, (real == 5)[:, ::-1])


def test_yaw_proxy_symmetric_layout_and_mirror():
    frontal = np.array([[30.0, 40], [70, 40], [50, 60], [35, 80], [65, 80]])
    assert yaw_proxy(frontal) == 0.0
    assert pose_bucket(yaw_proxy(frontal)) == "frontal"
    turned = frontal.copy()
    turned[2, 0] = 62  # the nose moves towards image right
    width = 100
    mirrored = turned.copy()
    mirrored[:, 0] = width - 1 - mirrored[:, 0]
    mirrored = mirrored[[1, 0, 2, 4, 3]]  # image-left points first again
    assert yaw_proxy(turned) == pytest.approx(0.3)
    assert yaw_proxy(mirrored) == pytest.approx(-yaw_proxy(turned))
    assert pose_bucket(0.3) == pose_bucket(-0.3) == "turned"
    assert pose_bucket(0.9) == pose_bucket(-0.9) == "profile"


def test_probe_hits_on_a_hand_made_map():
    label = np.zeros((10, 12), np.uint8)
    label[2, 3] = 3  # eye_1
    label[6, 5] = 7  # inner mouth
    probes = [
        ("eyes", [3.2, 1.8]),  # rounds to (3, 2): hit
        ("nose", [3.0, 2.0]),  # an eye pixel, not the nose: miss
        ("eyes", [3.6, 2.0]),  # rounds to (4, 2): background, miss
        ("mouth", [5.0, 6.0]),  # inner mouth is part of the mouth group: hit
        ("eyes", [-3.0, 2.0]),  # left of the frame: miss
        ("eyes", [12.0, 2.0]),  # x == width is outside: miss
        ("eyes", [3.0, 10.0]),  # y == height is outside: miss
    ]
    assert probe_hits(label, probes) == [("eyes", True), ("nose", False), ("eyes", False), ("mouth", True),
                                         ("eyes", False), ("eyes", False), ("eyes", False)]
    assert probe_hits(label, []) == []


# --- scoring ---------------------------------------------------------------------------------------


def _teacher_predict(root: Path, records):
    """predict() that returns the teacher's own map for each face (background where it gave none)."""
    by_pixels = {}
    for r in records:
        if r.written:
            face = read_face(root, r.name)
            teacher = read_teacher(root, r.name)
            key = hashlib.sha1(face.tobytes()).hexdigest() + str(face.shape)
            by_pixels[key] = teacher if teacher is not None else np.zeros(face.shape[:2], np.uint8)

    def predict(faces):
        return [by_pixels[hashlib.sha1(f.tobytes()).hexdigest() + str(f.shape)] for f in faces]

    return predict


def test_scoring_the_teacher_against_itself(pool_dir, records):
    root, _ = pool_dir
    predict = _teacher_predict(root, records)
    scored_splits = 0
    for split in SPLITS:
        faces = [r for r in records if r.written and r.split == split]
        if not faces:
            continue
        scored_splits += 1
        scores = score_facepool(predict, root, split, batch_size=3)
        assert sum(scores.faces.values()) == len(faces)
        clean = [r for r in faces if r.clean]
        assert bool(scores.hist) == bool(clean)
        if clean:
            # Only clean faces are scored against the teacher, every pixel of each once per key.
            assert scores.hist[("all", "all")].sum() == sum(r.side**2 for r in clean)
        for key, f1 in scores.f1().items():
            assert f1["overall"] == 1.0, key
            assert all(v == 1.0 or math.isnan(v) for v in f1.values()), key
        model = {k[1:]: v for k, v in scores.probes.items() if k[0] == "model"}
        teacher = {k[1:]: v for k, v in scores.probes.items() if k[0] == "teacher"}
        assert model == teacher
        n_probes = sum(len(r.probes) for r in faces)
        assert model.get(("all", "all"), [0, 0])[1] == n_probes
        text = format_scores(scores)
        assert text.splitlines()[0].startswith("F1 vs teacher")
        as_json = json.loads(json.dumps(scores.to_json()))
        assert set(as_json) == {"faces_by_pose", "f1_vs_teacher", "probe_hits"}
        if n_probes:
            assert as_json["probe_hits"]["model/all/all"] == as_json["probe_hits"]["teacher/all/all"]
            assert as_json["probe_hits"]["teacher/all/all"]["probes"] == n_probes
    assert scored_splits >= 2
    train_scores = score_facepool(predict, root, "train")
    assert train_scores.probes[("teacher", "all", "all")][1] > 0, "the train split carries human points"
    limited = score_facepool(predict, root, "train", limit=2, sources=("cfp",))
    assert sum(limited.faces.values()) == min(2, sum(r.written and r.split == "train" and r.source == "cfp" for r in records))


def test_scores_json_of_an_empty_tally_is_serialisable():
    assert json.loads(json.dumps(Scores().to_json())) == {"faces_by_pose": {}, "f1_vs_teacher": {}, "probe_hits": {}}


# --- self-training ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_labelled(pool_dir, one_torch_thread, tmp_path_factory):
    from batch_parse.train.selftrain import self_label

    root, _ = pool_dir
    dst = tmp_path_factory.mktemp("selftrain")
    report = self_label(root, dst, limit=4)
    # keep=0 keeps every candidate: the written labels can then be checked whatever the student decides.
    dst_all = tmp_path_factory.mktemp("selftrain_all")
    report_all = self_label(root, dst_all, keep=0.0, limit=4)
    return root, (dst, report), (dst_all, report_all)


def _candidates(records) -> list:
    return [r for r in records if r.split == "train" and r.written and not r.clean][:4]


def test_self_label_lists_only_kept_faces(self_labelled, records):
    _, (dst, report), _ = self_labelled
    candidates = _candidates(records)
    assert candidates, "the small folder has a training face the teacher could not label cleanly"
    assert sum(c["faces"] for c in report["by_pose"].values()) == len(candidates)
    for pose, c in report["by_pose"].items():
        assert pose in POSES and 0 <= c["kept"] <= c["faces"], pose
    kept = _split_names(dst, "train")
    assert kept == sorted(kept) and len(kept) == sum(c["kept"] for c in report["by_pose"].values())
    assert set(kept) <= {r.name for r in candidates}
    assert {p.stem for p in (dst / "images").iterdir()} == set(kept)
    assert {p.name for p in (dst / "labels").iterdir()} == set(kept)
    assert _split_names(dst, "val") == _split_names(dst, "test") == []
    assert json.loads((dst / "selftrain.json").read_text()) == json.loads(json.dumps(report))
    assert len(open_dataset(dst, "train")) == len(kept)


def test_self_labels_are_the_students_maps(self_labelled, records):
    from batch_parse.model.parser import load_parser
    from batch_parse.labels import CLASS_TO_HELEN

    root, _, (dst, report) = self_labelled
    candidates = _candidates(records)
    assert report["keep"] == 0.0
    assert sum(c["kept"] for c in report["by_pose"].values()) == len(candidates)
    assert _split_names(dst, "train") == sorted(r.name for r in candidates)
    parser = load_parser("stn-icnn/v1", device="cpu")
    faces = [read_face(root, r.name) for r in candidates]
    expected = {r.name: np.asarray(p.label_map) for r, p in zip(candidates, parser.parse(faces))}
    dataset = open_dataset(dst, "train")
    assert len(dataset) == len(candidates)
    for name, image, label in dataset:
        assert image.shape == (*label.shape, 3)
        assert len(list((dst / "labels" / name).glob("*.png"))) == len(HELEN_LABELS)
        # Our classes -> Helen indices on disk -> our classes again: nothing lost or swapped.
        assert np.array_equal(label, expected[name]), name
    assert [HELEN_TO_CLASS[h] for h in CLASS_TO_HELEN] == list(range(NUM_CLASSES))


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_eval_scores_a_face_pool_folder(pool_dir, records, one_torch_thread, tmp_path):
    from batch_parse.cli.main import cli

    root, _ = pool_dir
    out = tmp_path / "out.json"
    result = CliRunner().invoke(cli, ["eval", str(root), "--split", "train", "--json", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "probe hits" in result.output
    data = json.loads(out.read_text())
    assert {"probe_hits", "f1_vs_teacher", "faces_by_pose", "model", "split"} <= set(data)
    assert data["split"] == "train" and data["model"].startswith("stn-icnn/default@")
    train = [r for r in records if r.written and r.split == "train"]
    assert sum(data["faces_by_pose"].values()) == len(train)
    n_probes = sum(len(r.probes) for r in train)
    assert data["probe_hits"]["model/all/all"]["probes"] == data["probe_hits"]["teacher/all/all"]["probes"] == n_probes
    for key, value in data["probe_hits"].items():
        assert 0.0 <= value["rate"] <= 1.0, key
    assert "all/all" in data["f1_vs_teacher"]
    assert 0.0 <= data["f1_vs_teacher"]["all/all"]["overall"] <= 1.0


def test_cli_train_rejects_a_missing_extra_folder(pool_dir, tmp_path):
    from batch_parse.cli.main import cli

    root, _ = pool_dir
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", str(root), str(run_dir), "--extra", str(tmp_path / "missing")])
    assert result.exit_code != 0
    assert "--extra" in result.output and "does not exist" in result.output
    assert not run_dir.exists(), "nothing may start training"


# --- registry --------------------------------------------------------------------------------------


def test_registry_every_version_resolves_and_loads():
    import dataclasses

    from batch_parse.labels import NUM_CLASSES, NUM_PART_CLASSES
    from batch_parse.model.stn_icnn import STNiCNN
    from batch_parse.model.weights import REGISTRY, load_weights, resolve

    versions = ("stn-icnn/v1", "stn-icnn/v2", "stn-icnn/v3", "stn-icnn/v4")
    assert {"stn-icnn/default", *versions} <= set(REGISTRY)
    paths = {}
    for version in versions:
        name, paths[version] = resolve(version)
        assert name == version and paths[version].is_file()
    assert len(set(paths.values())) == len(versions), "each version is its own file"
    # The default is v4; the earlier versions stay loadable, so earlier outputs can be reproduced.
    assert resolve("stn-icnn/default")[1] == paths["stn-icnn/v4"]
    v1, info = load_weights(paths["stn-icnn/v1"])
    assert isinstance(v1, STNiCNN) and not v1.training and isinstance(info, dict)
    v4, _ = load_weights(paths["stn-icnn/v4"])
    assert (v1.cfg.num_classes, v4.cfg.num_classes) == (NUM_PART_CLASSES, NUM_CLASSES)  # v4 labels skin
    # Same architecture and geometry otherwise: v4 descends from v1 through v2 and v3.
    assert dataclasses.replace(v4.cfg, num_classes=v1.cfg.num_classes) == v1.cfg


# --- errors ----------------------------------------------------------------------------------------


def test_build_refuses_a_missing_pool(tmp_path):
    dst = tmp_path / "dst"
    with pytest.raises(ValueError) as error:
        build(tmp_path / "no-such-pool", dst, limit=1, workers=1)
    message = str(error.value)
    assert "\n" not in message and "no-such-pool" in message
    assert not dst.exists()
    with pytest.raises(ValueError, match="workers"):
        build(FACEPOOL, dst, limit=1, workers=0)
    with pytest.raises(ValueError, match="UTKFace"):
        build(FACEPOOL, dst, utkface=tmp_path / "no-utk", limit=1, workers=1)


def test_main_returns_2_on_bad_arguments(tmp_path, capsys):
    assert main([str(FACEPOOL), str(tmp_path / "dst"), "--limit", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--limit" in err and "\n" not in err
    assert main([str(tmp_path / "no-such-pool"), str(tmp_path / "dst")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: face pool folder not found")
    assert not (tmp_path / "dst").exists()
