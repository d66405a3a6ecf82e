"""The training pool: a labelled face set packed once into uint8 arrays that training reads by memory map.

Decoding JPEGs, merging eleven label PNGs per face and resizing them cost more than a training
step of the part networks, and a resumed stage used to pay it again for every face at every start
(and for the validation faces at every validation). Packed, a step reads only the rows of its
batch (the page cache shares them between stages and restarts), and a stage starts in a second.

Layout of a pool folder (numpy .npy files, so any tool can open them):

    pool.json                  format, canvas, sources, per split: count, faces with skin labels
    <split>_images.npy         (N, 3, S, S) uint8: each face squared (edge-padded) and resized to S
    <split>_labels.npy         (N, S, S) uint8 class indices of batch_parse.labels
    <split>_windows.npy        (N, P, 4) float32: each part's target window (augment.target_windows)
    <split>_names.json         the face names, in row order
    <split>_poses.npy          (N,) uint8 index into facerecord.POSES (frontal when unknown)

Train rows are the train split of every source in order, then (`turns` > 0) turned copies of the
first source's near-frontal train faces synthesised from their teacher meshes (synth_pose.py:
the teacher cannot label profiles, so they are made from frontal faces whose labels it got right),
then (`points`) its train faces with human points and no clean labels, labelled by the points only
(points.py; named NAME~points; only stage a learns from them);
val and test rows come from the first source only (the others are extra training labels, e.g.
self-training), never synthesised, so validation stays on real faces; with `points`, each split
ends with its own point faces (validation scores stage 1 on them). A pool is written into a
temporary folder and renamed into place, so a killed packing never leaves a half pool that looks
whole.

Usage: python -m batch_parse.train.pool DATA [EXTRA ...] POOL [--canvas 256] [--limit N] [--turns K] [--points]
       python -m batch_parse.train.pool --portable POOL DIR [--max-faces N]    (JPEG/PNG bytes that travel)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from batch_parse.train.datasets import SPLITS, open_dataset
from batch_parse.train.facerecord import POSES

FORMAT = "batch-parse-pool/1"
MARKER = "pool.json"


def is_pool(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def square_resize(image: np.ndarray, label: np.ndarray, canvas: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(H,W,3) uint8 image, (H,W) uint8 labels -> (3,S,S), (S,S) uint8: squared by edge padding
    (the image) and zero padding (the labels), then resized (antialiased bilinear / nearest)."""
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    lab = torch.from_numpy(np.ascontiguousarray(label))[None, None].float()
    h, w = label.shape
    side = max(h, w)
    if h != w:
        pads = ((side - w) // 2, side - w - (side - w) // 2, (side - h) // 2, side - h - (side - h) // 2)
        img, lab = F.pad(img, pads, mode="replicate"), F.pad(lab, pads)
    img = F.interpolate(img, size=(canvas, canvas), mode="bilinear", antialias=True, align_corners=False)
    lab = F.interpolate(lab, size=(canvas, canvas), mode="nearest")
    return img[0].round().clamp(0, 255).byte(), lab[0, 0].byte()


def _poses(root: Path) -> dict[str, int]:
    """Face name -> pose index from a face pool's faces.jsonl (empty for other datasets)."""
    path = root / "faces.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            out[record["name"]] = POSES.index(record["pose"])
    return out


def _log(msg: str) -> None:
    print(f"[pool {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# Synthetic turns: sources are faces the mesh sees within this many degrees of frontal, turned
# further the way they look to a yaw drawn uniformly in TURN_RANGE (degrees).
TURN_SOURCE_MAX_YAW = 15.0
TURN_RANGE = (25.0, 85.0)
PROFILE_FROM = 55.0  # a synthetic face turned at least this far is filed as a profile


def turn_plan(root: Path, names: list[str], turns: int, seed: int = 0) -> list[tuple[int, float]]:
    """(row in names, yaw) of each synthetic face: `turns` per near-frontal face with a mesh."""
    from batch_parse.train.synth_pose import mesh_yaw

    rng = np.random.default_rng(seed)
    plan = []
    for i, name in enumerate(names):
        mesh_path = root / "mesh" / f"{name}.npy"
        if turns < 1 or not mesh_path.is_file():
            continue
        own = mesh_yaw(np.load(mesh_path))
        if abs(own) > TURN_SOURCE_MAX_YAW:
            continue
        for _ in range(turns):
            side = np.sign(own) if abs(own) > 3 else rng.choice((-1.0, 1.0))
            plan.append((i, float(side * rng.uniform(*TURN_RANGE))))
    return plan


def point_faces(root: Path, split: str = "train") -> list:
    """The face pool's faces of `split` with human points and no clean teacher labels (points.py)."""
    from batch_parse.train.facerecord import read_records

    if not (root / "faces.jsonl").is_file():
        return []
    return [r for r in read_records(root) if r.split == split and r.written and not r.clean and r.probes
            and (root / "images" / f"{r.name}.jpg").is_file()]


def pack(sources: list[str | Path], dst: str | Path, canvas: int = 256, limit: int | None = None, turns: int = 0,
         points: bool = False) -> Path:
    """Packs the Helen-layout (or CelebAMask-HQ) folders into a pool at dst; returns dst.

    turns: synthetic turned copies per near-frontal train face of the first source (needs the
    face pool's meshes and the teacher's MediaPipe). points: add the first source's faces (every
    split) that have human points but no clean labels, labelled by their points only (points.py). An
    existing pool at dst is kept as it is (delete it to rebuild)."""
    from batch_parse.train.augment import target_windows

    dst = Path(dst)
    if is_pool(dst):
        return dst
    if not sources:
        raise ValueError("a pool needs at least one labelled folder")
    tmp = dst.with_name(dst.name + ".packing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    info: dict = {"format": FORMAT, "canvas": canvas, "sources": [str(Path(s).resolve()) for s in sources], "splits": {},
                  "turns": turns}
    for split in SPLITS:
        roots = [Path(s) for s in (sources if split == "train" else sources[:1])]
        datasets = [open_dataset(root, split) for root in roots]
        counts = [len(ds) if limit is None else min(limit, len(ds)) for ds in datasets]
        plan = turn_plan(roots[0], [datasets[0].names[i] for i in range(counts[0])], turns) if split == "train" and turns else []
        # In every split: the val split's point faces let a phase that learns from points be
        # selected on points of persons it never saw (train.validation_score).
        pointed = point_faces(roots[0], split)[:limit] if points else []
        n = sum(counts) + len(plan) + len(pointed)
        images = np.lib.format.open_memmap(tmp / f"{split}_images.npy", "w+", np.uint8, (n, 3, canvas, canvas))
        labels = np.lib.format.open_memmap(tmp / f"{split}_labels.npy", "w+", np.uint8, (n, canvas, canvas))
        poses = np.zeros(n, np.uint8)
        names: list[str] = []
        row, t0 = 0, time.time()
        for root, ds, count in zip(roots, datasets, counts):
            pose_of = _poses(root)
            for i in range(count):
                name, image, label = ds[i]
                images[row], labels[row] = (t.numpy() for t in square_resize(image, label, canvas))
                poses[row] = pose_of.get(name, 0)
                names.append(name)
                row += 1
                if row % 2000 == 0:
                    _log(f"{split}: {row}/{n} faces ({row / (time.time() - t0):.0f}/s)")
        if plan:
            from batch_parse.train.synth_pose import turn_face

            for i, yaw in plan:
                name, image, label = datasets[0][i]
                turned = turn_face(image, np.load(roots[0] / "mesh" / f"{name}.npy"), label, yaw)
                images[row], labels[row] = (t.numpy() for t in square_resize(turned.image, turned.labels, canvas))
                poses[row] = POSES.index("profile" if abs(yaw) >= PROFILE_FROM else "turned")
                names.append(f"{name}~yaw{yaw:+.0f}")
                row += 1
                if row % 1000 == 0:
                    _log(f"{split}: {row}/{n} faces, turned copies included ({row / (time.time() - t0):.0f}/s)")
            info["synthetic_turns"] = len(plan)
        if pointed:
            from batch_parse.train.datasets import read_rgb
            from batch_parse.train.points import POINT_NAME_SUFFIX, point_map

            for record in pointed:
                image = read_rgb(roots[0] / "images" / f"{record.name}.jpg")
                h, w = image.shape[:2]
                images[row] = square_resize(image, np.zeros((h, w), np.uint8), canvas)[0].numpy()
                # Drawn at the canvas' own scale (a frame is square), so every disc has the same size.
                labels[row] = point_map(canvas, canvas, record.probes, scale=canvas / max(h, w))
                poses[row] = POSES.index(record.pose)
                names.append(record.name + POINT_NAME_SUFFIX)
                row += 1
        windows = np.zeros((n, 6, 4), np.float32)
        dense = n - len(pointed)  # point faces come last and have no part shapes to window
        for start in range(0, dense, 512):  # in chunks: the whole split's label maps need not sit in memory
            stop = min(start + 512, dense)
            windows[start:stop] = target_windows(torch.from_numpy(np.asarray(labels[start:stop])).long()).numpy()
        images.flush()
        labels.flush()
        del images, labels
        np.save(tmp / f"{split}_windows.npy", windows)
        np.save(tmp / f"{split}_poses.npy", poses)
        (tmp / f"{split}_names.json").write_text(json.dumps(names))
        info["splits"][split] = {"count": n, **({"point_faces": len(pointed)} if points else {})}
        _log(f"{split}: {n} faces packed")
    (tmp / MARKER).write_text(json.dumps(info, indent=1))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


@dataclass
class PoolSplit:
    """One split of a pool, memory-mapped: rows are read when indexed."""

    images: np.ndarray  # (N,3,S,S) uint8 memmap
    labels: np.ndarray  # (N,S,S) uint8 memmap
    windows: np.ndarray  # (N,P,4) float32
    poses: np.ndarray  # (N,) uint8
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def rows(self, index: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (B,3,S,S) and labels (B,S,S) of the given rows, in the given order."""
        index = np.asarray(index)
        # Sorted reads keep the memory map's reads sequential; the batch order is restored after.
        order = np.argsort(index, kind="stable")
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        images = torch.from_numpy(self.images[index[order]][back])
        labels = torch.from_numpy(self.labels[index[order]][back])
        return images, labels


def open_pool(path: str | Path, split: str) -> PoolSplit:
    path = Path(path)
    if not is_pool(path):
        raise ValueError(f"{path} is not a training pool (no {MARKER}): pack one with python -m batch_parse.train.pool")
    info = json.loads((path / MARKER).read_text())
    if info.get("format") != FORMAT:
        raise ValueError(f"{path / MARKER}: pool format {info.get('format')!r}, this batch-parse reads {FORMAT!r}; repack it")
    return PoolSplit(
        images=np.load(path / f"{split}_images.npy", mmap_mode="r"),
        labels=np.load(path / f"{split}_labels.npy", mmap_mode="r"),
        windows=np.load(path / f"{split}_windows.npy"),
        poses=np.load(path / f"{split}_poses.npy"),
        names=json.loads((path / f"{split}_names.json").read_text()),
    )


def pool_canvas(path: str | Path) -> int:
    return int(json.loads((Path(path) / MARKER).read_text())["canvas"])


# A portable pool travels (to a GPU machine, in a checkout's ignored folder): faces as JPEG, label
# maps as PNG (lossless), each split's encoded rows in one byte file with an offsets array. It is
# unpacked once into a regular pool where it is used.
PORTABLE_FORMAT = "batch-parse-pool-portable/1"
PORTABLE_MARKER = "portable.json"
PORTABLE_JPEG_QUALITY = 92


def _write_blobs(path: Path, blobs: list[bytes]) -> None:
    path.write_bytes(b"".join(blobs))
    np.save(path.with_suffix(".offsets.npy"), np.cumsum([0, *map(len, blobs)]).astype(np.int64))


def _read_blobs(path: Path) -> list[bytes]:
    data, offsets = path.read_bytes(), np.load(path.with_suffix(".offsets.npy"))
    return [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def export_portable(pool: str | Path, dst: str | Path, max_faces: int | None = None, val_faces: int = 200,
                    seed: int = 0) -> Path:
    """A pool's faces as JPEG/PNG bytes in dst. Train: at most max_faces, a seeded random subset.
    Val and test: their first val_faces labelled faces and first val_faces point faces, which is
    all that validation reads (train.validation_split, at its default val_images) and keeps a
    portable pool of 3,000 train faces under 60 MB (all of val and test alone were 45 MB)."""
    import io

    from PIL import Image

    from batch_parse.train.points import is_point_face

    pool, dst = Path(pool), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    source = json.loads((pool / MARKER).read_text())
    info = {"format": PORTABLE_FORMAT, "canvas": pool_canvas(pool), "from": str(pool.resolve()), "splits": {}}
    for split in SPLITS:
        part = open_pool(pool, split)
        pointed = np.array([is_point_face(n) for n in part.names], bool)
        rows = np.arange(len(part))
        if split == "train" and max_faces is not None and max_faces < len(part):
            rows = np.sort(np.random.default_rng(seed).choice(len(part), max_faces, replace=False))
        elif split != "train":
            rows = np.concatenate([np.flatnonzero(~pointed)[:val_faces], np.flatnonzero(pointed)[:val_faces]])
        jpegs, pngs = [], []
        for i in rows:
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(part.images[i].transpose(1, 2, 0))).save(buf, "JPEG", quality=PORTABLE_JPEG_QUALITY)
            jpegs.append(buf.getvalue())
            buf = io.BytesIO()
            Image.fromarray(np.asarray(part.labels[i])).save(buf, "PNG", optimize=True)
            pngs.append(buf.getvalue())
        _write_blobs(dst / f"{split}_images.jpg.bin", jpegs)
        _write_blobs(dst / f"{split}_labels.png.bin", pngs)
        np.save(dst / f"{split}_windows.npy", part.windows[rows])
        np.save(dst / f"{split}_poses.npy", part.poses[rows])
        (dst / f"{split}_names.json").write_text(json.dumps([part.names[i] for i in rows]))
        info["splits"][split] = {"count": len(rows)}
        if "point_faces" in source["splits"][split]:
            info["splits"][split]["point_faces"] = int(pointed[rows].sum())
    (dst / PORTABLE_MARKER).write_text(json.dumps(info, indent=1))
    return dst


def unpack_portable(src: str | Path, dst: str | Path) -> Path:
    """A portable pool decoded into a regular (memory-mapped) pool at dst; kept if already there."""
    import io

    from PIL import Image

    src, dst = Path(src), Path(dst)
    if is_pool(dst):
        return dst
    marker = src / PORTABLE_MARKER
    if not marker.is_file():
        raise ValueError(f"{src} is not a portable pool (no {PORTABLE_MARKER}): make one with python -m batch_parse.train.pool --portable")
    info = json.loads(marker.read_text())
    if info.get("format") != PORTABLE_FORMAT:
        raise ValueError(f"{marker}: format {info.get('format')!r}, this batch-parse reads {PORTABLE_FORMAT!r}")
    tmp = dst.with_name(dst.name + ".packing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    canvas = info["canvas"]
    for split in SPLITS:
        jpegs, pngs = _read_blobs(src / f"{split}_images.jpg.bin"), _read_blobs(src / f"{split}_labels.png.bin")
        images = np.lib.format.open_memmap(tmp / f"{split}_images.npy", "w+", np.uint8, (len(jpegs), 3, canvas, canvas))
        labels = np.lib.format.open_memmap(tmp / f"{split}_labels.npy", "w+", np.uint8, (len(jpegs), canvas, canvas))
        for i, (jpeg, png) in enumerate(zip(jpegs, pngs)):
            images[i] = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).transpose(2, 0, 1)
            labels[i] = np.asarray(Image.open(io.BytesIO(png)))
        images.flush()
        labels.flush()
        del images, labels
        for name in (f"{split}_windows.npy", f"{split}_poses.npy", f"{split}_names.json"):
            shutil.copyfile(src / name, tmp / name)
    pool_info = {"format": FORMAT, "canvas": canvas, "sources": [info["from"]], "portable": str(src.resolve()),
                 "splits": info["splits"]}
    (tmp / MARKER).write_text(json.dumps(pool_info, indent=1))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--portable"]:
        portable = argparse.ArgumentParser(prog="python -m batch_parse.train.pool --portable",
                                           description="A pool as JPEG/PNG bytes that travel (e.g. to a GPU machine).")
        portable.add_argument("pool")
        portable.add_argument("dst")
        portable.add_argument("--max-faces", type=int, default=None, help="train faces kept (a seeded random subset)")
        portable.add_argument("--val-faces", type=int, default=200,
                              help="labelled faces, and faces with points, kept of val and of test (their first ones)")
        args = portable.parse_args(argv[1:])
        try:
            out = export_portable(args.pool, args.dst, args.max_faces, args.val_faces)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        size = sum(p.stat().st_size for p in out.iterdir())
        print(f"{out}: {size / 2**20:.1f} MiB, {json.loads((out / PORTABLE_MARKER).read_text())['splits']}")
        return 0
    parser = argparse.ArgumentParser(prog="python -m batch_parse.train.pool", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="DATA [EXTRA ...] POOL: labelled folders, then the pool to write")
    parser.add_argument("--canvas", type=int, default=256, help="side of the packed faces (the training 'photo' size)")
    parser.add_argument("--limit", type=int, default=None, help="at most N faces of each folder and split")
    parser.add_argument("--turns", type=int, default=0, help="synthetic turned copies per near-frontal train face (face pools)")
    parser.add_argument("--points", action="store_true",
                        help="add the faces with human points but no clean labels, labelled by their points (face pools)")
    args = parser.parse_args(argv)
    if len(args.folders) < 2:
        parser.error("give at least one labelled folder and the pool folder")
    try:
        out = pack(args.folders[:-1], args.folders[-1], args.canvas, args.limit, args.turns, args.points)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(json.loads((out / MARKER).read_text())["splits"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
