"""Human points as a weak label (batch_parse/train/points.py): packed, augmented, scored, and kept
away from the stages that need part shapes. Real face crops with ellipse labels (helenfiles.py)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from batch_parse.labels import F1_GROUPS, NUM_CLASSES
from batch_parse.train import augment
from batch_parse.train.facerecord import FaceRecord
from batch_parse.train.points import IGNORE, POINT_BASE, POINT_GROUPS, is_point_face, point_loss, point_map
from batch_parse.train.pool import open_pool, pack
from batch_parse.train.train import Batches, TrainOptions, stage1_loss, train_stage
from helenfiles import write_helen

V3 = str(Path(__file__).resolve().parents[1] / "batch_parse" / "model" / "weights" / "stn-icnn-v3.safetensors")
PROBES = [("eyes", [30.0, 40.0]), ("nose", [52.0, 60.0]), ("lower_lip", [50.0, 80.0]), ("ears", [5.0, 50.0])]


def _record(name: str, clean: bool, probes: list, split: str = "train") -> dict:
    return asdict(FaceRecord(name=name, source="cfp", photo=f"{name}.jpg", split=split, face_index=0, box=[0, 0, 1, 1],
                             score=1.0, landmarks=[[0, 0]] * 5, matrix=[[1, 0, 0], [0, 1, 0]], side=100, yaw=0.6,
                             pose="profile", written=True, teacher="no_face", flip_agreement=None, clean=clean, probes=probes))


@pytest.fixture(scope="module")
def pointed_pool(tmp_path_factory) -> Path:
    """A face pool of 8 clean train faces plus 3 with human points only (one of them with no point
    of a known part); its val split 2 clean faces and 1 with points only."""
    root = write_helen(tmp_path_factory.mktemp("fp") / "facepool", {"train": 11, "val": 3, "test": 1})
    train = (root / "exemplars.txt").read_text().split()
    val = (root / "tuning.txt").read_text().split()
    records = [_record(n, True, [("nose", [50.0, 50.0])]) for n in train[:8]]
    for n, split in [(n, "train") for n in train[8:]] + [(val[2], "val")]:
        with Image.open(root / "images" / f"{n}.jpg") as im:
            im.resize((100, 100)).save(root / "images" / f"{n}.jpg")  # a face frame is square
        records.append(_record(n, False, PROBES, split))
    # The clean ones, as facepool.py lists them
    (root / "exemplars.txt").write_text("".join(f"{n}\n" for n in train[:8]))
    (root / "tuning.txt").write_text("".join(f"{n}\n" for n in val[:2]))
    (root / "faces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return pack([root], root.parent / "pool", canvas=128, points=True)


def test_point_map_draws_a_disc_per_known_part_and_nothing_else():
    m = point_map(100, 100, PROBES)
    assert m[40, 30] == POINT_BASE + POINT_GROUPS.index("eyes") and m[60, 52] == POINT_BASE + POINT_GROUPS.index("nose")
    assert m[50, 5] == IGNORE  # "ears" is no part of ours
    values, counts = np.unique(m, return_counts=True)
    assert set(values.tolist()) == {IGNORE, *(POINT_BASE + POINT_GROUPS.index(g) for g in ("eyes", "nose", "lower_lip"))}
    assert all(12 <= c <= 30 for v, c in zip(values, counts) if v != IGNORE)  # discs of radius 2.5 px
    scaled = point_map(200, 200, PROBES, scale=2.0)
    assert scaled[80, 60] == POINT_BASE + POINT_GROUPS.index("eyes")


def test_point_loss_is_minus_log_of_the_part_s_probability():
    logits = torch.randn(1, NUM_CLASSES, 4, 4)
    target = torch.full((1, 4, 4), IGNORE)
    assert point_loss(logits.log_softmax(1), target) is None
    target[0, 1, 2] = POINT_BASE + POINT_GROUPS.index("eyes")
    p = logits.softmax(1)[0, :, 1, 2]
    want = -math.log(float(p[list(F1_GROUPS["eyes"])].sum()))
    assert point_loss(logits.log_softmax(1), target).item() == pytest.approx(want, rel=1e-5)  # one face
    # The whole stage-1 loss of a face with points only is that, whatever its other pixels predict.
    assert stage1_loss(logits, target, torch.tensor([False])).item() == pytest.approx(want, rel=1e-5)
    # A 9-class model (no skin) is scored the same way.
    assert point_loss(logits[:, :9].log_softmax(1), target).item() > 0


def test_a_face_of_points_weighs_as_much_as_a_face_of_pixels():
    """Not as much as the whole batch: points say where a part is, never where it is not."""
    logits = torch.randn(4, NUM_CLASSES, 4, 4)
    target = torch.randint(0, NUM_CLASSES, (4, 4, 4))
    target[3] = IGNORE
    target[3, 0, 0] = POINT_BASE + POINT_GROUPS.index("nose")
    logp = logits.log_softmax(1)
    dense = torch.nn.functional.nll_loss(logp[:3], target[:3])  # three faces of pixels: their mean
    weak = point_loss(logp, target)
    assert weak.shape == (4,) and weak[:3].eq(0).all()
    want = (3 * dense + weak[3]) / 4
    assert stage1_loss(logits, target, torch.ones(4, dtype=torch.bool)).item() == pytest.approx(want.item(), rel=1e-5)


def test_the_pool_holds_point_faces_last_and_only_stage_a_reads_them(pointed_pool):
    info = json.loads((pointed_pool / "pool.json").read_text())
    train = open_pool(pointed_pool, "train")
    assert info["splits"]["train"]["point_faces"] == 3 and info["splits"]["val"]["point_faces"] == 1 and len(train) == 11
    assert [is_point_face(n) for n in train.names] == [False] * 8 + [True] * 3
    _, labels = train.rows(np.arange(8, 11))
    assert set(np.unique(labels.numpy()).tolist()) <= {IGNORE, *range(POINT_BASE, POINT_BASE + len(POINT_GROUPS))}
    assert (labels >= POINT_BASE).any() and not train.windows[8:].any()
    seen_a = set()
    a = Batches(train, 4, seed=0, zoom_min=0.6)
    c = Batches(train, 4, seed=0, zoom_min=0.6, dense_only=True)
    for _ in range(12):
        _, lab, _ = c.next()
        assert int(lab.max()) < NUM_CLASSES  # b, c and e2e never see a point face
        _, lab, _ = a.next()
        seen_a.add(bool((lab >= POINT_BASE).any()))
    assert True in seen_a


def test_augmentation_moves_points_with_the_face_and_keeps_their_values(pointed_pool):
    train = open_pool(pointed_pool, "train")
    images, labels = train.rows(np.array([8, 9, 10] * 6))
    gen = torch.Generator().manual_seed(3)
    _, out = augment.augment(images.float() / 255, labels.long(), gen, zoom_min=0.6)
    allowed = {0, IGNORE, *range(POINT_BASE, POINT_BASE + len(POINT_GROUPS))}  # background: outside, letterbox
    assert set(torch.unique(out).tolist()) <= allowed
    assert sum(bool((o >= POINT_BASE).any() & (o < IGNORE).any()) for o in out) >= 15  # points survive warps and mirrors


def test_stage_a_trains_on_a_pool_with_point_faces(pointed_pool, tmp_path):
    best = train_stage(TrainOptions(str(pointed_pool), str(tmp_path / "run"), "a", 3, 4, val_every=3, init=V3, canvas=128))
    curve = json.loads((tmp_path / "run" / "curve_a.json").read_text())["curve"]
    assert best.is_file() and all(math.isfinite(p["score"]) for p in curve)
    assert all(0 <= p["metrics"]["point hits"] <= 1 for p in curve)  # selected on the val persons' points too


def test_validation_scores_stage_1_on_the_val_split_s_point_faces(pointed_pool):
    """The val split ends with its point faces; stage a is scored on them as well, the others never see them."""
    from batch_parse.model.weights import load_weights
    from batch_parse.train.points import point_hits
    from batch_parse.train.train import stage1_batch, validation_score, validation_split

    val = open_pool(pointed_pool, "val")
    assert [is_point_face(n) for n in val.names] == [False, False, True]
    images, labels = validation_split(TrainOptions(str(pointed_pool), "", "a", 1), pointed_pool)
    assert len(images) == 3 and int(labels[2].max()) == IGNORE and int(labels[:2].max()) < NUM_CLASSES
    model, _ = load_weights(V3)
    model.eval()
    score, text, metrics = validation_score(model, "a", images, labels)
    with torch.no_grad():
        logits = model.stage1(stage1_batch(images[2:], model.cfg))
    pred = torch.nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
    hits, n = point_hits(pred, labels[2:])
    assert n > 0 and metrics["point hits"] == hits / n and "point hits" in text
    assert score == sum(metrics.values()) / 3  # part IoU, skin IoU, point hits
    dense_only = validation_score(model, "a", images[:2], labels[:2])
    assert dense_only[2]["part IoU"] == metrics["part IoU"] and "point hits" not in dense_only[2]
    for stage in ("b", "c"):  # they learn windows and shapes, which points do not give
        assert validation_score(model, stage, images, labels)[0] == validation_score(model, stage, images[:2], labels[:2])[0]


def test_point_hits_counts_point_pixels_inside_their_part():
    from batch_parse.train.points import point_hits

    target = torch.from_numpy(point_map(40, 40, [("eyes", [10.0, 10.0]), ("nose", [30.0, 30.0])])).long()[None]
    pred = torch.zeros_like(target)
    pred[0, :20] = min(F1_GROUPS["eyes"])  # the eye's disc falls on an eye, the nose's on background
    hits, n = point_hits(pred, target)
    eye_pixels = int((target == POINT_BASE + POINT_GROUPS.index("eyes")).sum())
    assert hits == eye_pixels and n == int((target != IGNORE).sum()) > hits
    assert point_hits(pred, torch.full_like(target, IGNORE)) == (0, 0)


def test_a_pool_without_point_faces_draws_the_same_batches_either_way(pointed_pool, tmp_path):
    """dense_only changes nothing where there is nothing to leave out (a resumed stage draws as before)."""
    root = Path(json.loads((pointed_pool / "pool.json").read_text())["sources"][0])
    plain = open_pool(pack([root], tmp_path / "plain", canvas=128), "train")
    a, b = Batches(plain, 4, seed=1), Batches(plain, 4, seed=1, dense_only=True)
    for _ in range(4):
        for x, y in zip(a.next(), b.next()):
            assert torch.equal(x, y)


def test_the_localiser_learns_no_window_for_a_part_the_face_hides(pointed_pool):
    """Stage b's loss ignores a hidden part's window (its target would be mid-image), and only that."""
    from batch_parse.model.weights import load_weights
    from batch_parse.train.train import stage_loss

    model, _ = load_weights(V3)
    model.eval()
    images, labels = open_pool(pointed_pool, "train").rows(np.arange(4))
    images, labels = images.float() / 255, labels.long()
    hidden = labels.clone()
    hidden[0][torch.isin(hidden[0], torch.tensor([3]))] = 0  # face 0's first eye gone (class 3)
    assert augment.present_parts(hidden)[0].tolist().count(False) == 1 and augment.present_parts(labels).all()
    gen = torch.Generator()
    base = stage_loss(model, "b", images, hidden, gen)
    original = model.localise

    def moved(part: int, face: int = 0):
        def localise(probs):
            theta = original(probs).clone()
            theta[face, part] += 0.5
            return theta
        return localise

    eye = [i for i, present in enumerate(augment.present_parts(hidden)[0].tolist()) if not present][0]
    model.localise = moved(eye)
    assert stage_loss(model, "b", images, hidden, gen).item() == pytest.approx(base.item(), rel=1e-6)
    model.localise = moved((eye + 1) % 6)
    assert stage_loss(model, "b", images, hidden, gen).item() > base.item()


def test_a_portable_pool_travels_what_training_reads(pointed_pool, tmp_path):
    """A portable pool (for a GPU machine) keeps a train subset and the val faces validation reads,
    point faces included, with the label maps bit for bit; unpacked, it trains like the pool it came from."""
    from batch_parse.train.pool import export_portable, unpack_portable

    portable = export_portable(pointed_pool, tmp_path / "portable", max_faces=6, val_faces=1)
    info = json.loads((portable / "portable.json").read_text())["splits"]
    assert info["train"]["count"] == 6 and info["val"] == {"count": 2, "point_faces": 1}
    pool = unpack_portable(portable, tmp_path / "pool")
    source_val, val = open_pool(pointed_pool, "val"), open_pool(pool, "val")
    assert val.names == [source_val.names[0], source_val.names[2]]  # first labelled face, first point face
    for split, source in (("val", source_val), ("train", open_pool(pointed_pool, "train"))):
        part = open_pool(pool, split)
        rows = np.array([source.names.index(n) for n in part.names])
        assert (part.labels[:] == source.labels[rows]).all() and (part.windows == source.windows[rows]).all()
        error = np.abs(part.images[:].astype(int) - source.images[rows].astype(int)).mean()
        assert error < 3, f"{split}: JPEG changed the faces by {error:.1f} levels on average"
    assert json.loads((pool / "pool.json").read_text())["splits"]["val"]["point_faces"] == 1
    best = train_stage(TrainOptions(str(pool), str(tmp_path / "run"), "a", 2, 4, val_every=2, init=V3, canvas=128))
    assert best.is_file() and "point hits" in json.loads((tmp_path / "run" / "curve_a.json").read_text())["curve"][-1]["metrics"]
