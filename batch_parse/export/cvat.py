"""CVAT "Segmentation mask 1.1" archive (Pascal VOC segmentation layout), importable into a CVAT task as is.

    labelmap.txt                          the output's classes and colours (its metadata), background first
    ImageSets/Segmentation/default.txt    one item per image: its key without the extension
    SegmentationClass/<item>.png          paletted PNG: pixel index = class index, palette = class colours
    SegmentationObject/<item>.png         paletted PNG: pixel index = instance (one per part class per face), VOC palette

CVAT matches items to a task's frames by name, so create the task from the same images
(the source folder, or OUT/images with --copy-images), then Actions > Upload annotations >
"Segmentation mask 1.1" with the zip.
"""

from __future__ import annotations

import io
import posixpath
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from batch_parse.export.faces import IMAGES_DIR, Originals, Photo, safe_relative
from batch_parse.labels import CLASS_COLORS

COLUMNS: tuple[str, ...] = ()
ARCHIVE = "segmentation-mask-1.1.zip"
LABELMAP_HEADER = "# label:color_rgb:parts:actions"
LICENCE_FILE = "LICENCE.txt"
MAX_INSTANCES = 255  # SegmentationObject is an 8-bit paletted PNG; 0 is background


def check_installed() -> None:
    """Nothing beyond Pillow: the archive is PNGs and text."""


def labelmap(class_names: tuple[str, ...], class_colors: tuple[tuple[int, int, int], ...], licence=None) -> str:
    # CVAT and Datumaro skip '#' lines: the licence rides along as a comment, and in LICENCE.txt.
    notes = [f"# licence: {licence.line()}"] if licence else []
    lines = [LABELMAP_HEADER, *notes] + [f"{name}:{','.join(map(str, color))}::" for name, color in zip(class_names, class_colors)]
    return "\n".join(lines) + "\n"


def voc_palette(n: int = 256) -> np.ndarray:
    """Pascal VOC's colour map: the palette CVAT and Datumaro give instance ids in SegmentationObject."""
    palette = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


# Every class any model has: an output's label maps index a prefix of them.
_CLASS_PALETTE = np.zeros((256, 3), np.uint8)
_CLASS_PALETTE[: len(CLASS_COLORS)] = CLASS_COLORS
_INSTANCE_PALETTE = voc_palette()


def _paletted_png(indices: np.ndarray, palette: np.ndarray) -> bytes:
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=False)
    return buffer.getvalue()


def export(photos: Iterable[Photo], out: Path, originals: Originals | None, result, labels) -> None:
    items: dict[str, str] = {}  # item name -> key, to refuse two images CVAT would take for one
    with zipfile.ZipFile(out / ARCHIVE, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("labelmap.txt", labelmap(labels.class_names, labels.class_colors, labels.licence))
        archive.writestr(LICENCE_FILE, labels.licence.line() + "\n")
        for photo in photos:
            if originals is not None:
                # The task is made from OUT/images: items are named as the copies are (unique already).
                item = posixpath.splitext(originals.copy(photo, out).removeprefix(f"{IMAGES_DIR}/"))[0]
                result.copied += 1
            else:
                item = posixpath.splitext(safe_relative(photo.key))[0]
            if item in items:
                raise ValueError(f"{items[item]} and {photo.key} would be the same CVAT item {item!r}: export them apart (--where key ...)")
            items[item] = photo.key
            label_map, _ = photo.label_maps()
            instances = np.zeros(label_map.shape, np.uint8)
            count = 0
            for _, _, mask in photo.parts():
                count += 1
                if count <= MAX_INSTANCES:
                    instances[mask] = count
            if count > MAX_INSTANCES:
                result.notes.append(f"{photo.key}: {count} part instances, SegmentationObject holds the first {MAX_INSTANCES} "
                                    "(SegmentationClass has them all)")  # fmt: skip
            # PNGs are compressed already: storing them is as small and faster.
            archive.writestr(f"SegmentationClass/{item}.png", _paletted_png(label_map, _CLASS_PALETTE), zipfile.ZIP_STORED)
            archive.writestr(f"SegmentationObject/{item}.png", _paletted_png(instances, _INSTANCE_PALETTE), zipfile.ZIP_STORED)
            result.images += 1
            result.faces += len(photo.faces)
            result.parts += min(count, MAX_INSTANCES)
        archive.writestr("ImageSets/Segmentation/default.txt", "".join(f"{item}\n" for item in items))
    result.files.append(ARCHIVE)
