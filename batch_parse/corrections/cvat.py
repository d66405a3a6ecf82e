"""CVAT's "Segmentation mask 1.1" archive of corrected labels, read back: one class map per item.

The zip CVAT writes under Export task dataset > Segmentation mask 1.1 (and `batch-parse export
--to cvat` writes): labelmap.txt (`name:r,g,b:parts:actions`) and SegmentationClass/<item>.png,
RGB or paletted, each colour one label. Classes are read by colour through the archive's own
labelmap.txt and then by label name, so a task whose labels CVAT reordered reads the same. Items
are matched to the original output's images by name (the key without its extension, or the
`--copy-images` copy's name). SegmentationObject is not needed: faces are found by split.py. The
archive does not say who corrected what, or when.
"""

from __future__ import annotations

import io
import posixpath
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_DIR = "SegmentationClass/"
LABELMAP = "labelmap.txt"


@dataclass
class Item:
    where: str  # the PNG's name in the archive, for messages
    name: str  # the item: its path under SegmentationClass/ without the extension
    png: bytes


def read_archive(path: Path, class_names: list[str]) -> tuple[list[Item], dict[int, int]]:
    """The archive's class PNGs and its colour -> class index map (colour as 0xRRGGBB)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{path} is not a zip archive ({exc}): give the zip of CVAT's Export > Segmentation mask 1.1") from None
    with archive:
        names = archive.namelist()
        # CVAT puts everything at the root; an archive re-zipped from a folder has one level more.
        labelmaps = sorted((n for n in names if posixpath.basename(n) == LABELMAP), key=len)
        if not labelmaps:
            raise ValueError(f"{path} has no {LABELMAP}: not a CVAT Segmentation mask 1.1 archive")
        root = posixpath.dirname(labelmaps[0])
        root = root + "/" if root else ""
        colours = _labelmap(archive.read(labelmaps[0]).decode("utf-8", "replace"), class_names, path)
        prefix = root + CLASS_DIR
        items = [Item(n, posixpath.splitext(n[len(prefix):])[0], archive.read(n))
                 for n in names if n.startswith(prefix) and n.lower().endswith(".png")]  # fmt: skip
    if not items:
        raise ValueError(f"{path} has no {CLASS_DIR}*.png masks: not a CVAT Segmentation mask 1.1 archive")
    return items, colours


def _labelmap(text: str, class_names: list[str], path: Path) -> dict[int, int | str]:
    """colour -> our class index, or the label's name where it is no class of ours (an error if used)."""
    colours: dict[int, int | str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(":")
        try:
            r, g, b = (int(v) for v in fields[1].split(","))
        except (IndexError, ValueError):
            raise ValueError(f"{path}: {LABELMAP} line {number} is not `name:r,g,b:parts:actions`: {line!r}") from None
        name = fields[0]
        colours[(r << 16) | (g << 8) | b] = class_names.index(name) if name in class_names else name
    return colours


def unknown_labels(items: list[Item], colours: dict[int, int | str]) -> list[tuple[Item, str, int]]:
    """(item, label, pixels) for every label of labelmap.txt the output's model lacks that an item
    uses (e.g. `skin` painted on a 9-class output), checked before any row is read."""
    named = {colour: name for colour, name in colours.items() if isinstance(name, str)}
    found = []
    if not named:
        return found
    for item in items:
        packed = _packed(item)[0]
        values, counts = np.unique(packed, return_counts=True)
        found += [(item, named[v], int(n)) for v, n in zip(values.tolist(), counts.tolist()) if v in named]
    return found


def _packed(item: Item) -> tuple[np.ndarray, tuple[int, int]]:
    try:
        with Image.open(io.BytesIO(item.png)) as png:
            size = png.size
            rgb = np.asarray(png.convert("RGB"), np.uint32)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad bytes
        raise ValueError(f"{item.where}: not a readable PNG ({exc})") from None
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2], size


def classes(item: Item, colours: dict[int, int | str], width: int, height: int, skip_unknown: bool = False) -> np.ndarray:
    """The item's (height, width) class map; ValueError for another size or a colour that is no class.

    skip_unknown: pixels of a label the output's model lacks read as background (as not painted)."""
    packed, size = _packed(item)
    if size != (width, height):
        raise ValueError(f"{item.where}: the mask is {size[0]}x{size[1]}, the image in the original output is {width}x{height}")
    found, inverse = np.unique(packed, return_inverse=True)
    lut = np.zeros(len(found), np.uint8)
    for i, colour in enumerate(found.tolist()):
        cls = colours.get(colour)
        if cls is None:
            raise ValueError(f"{item.where}: colour {(colour >> 16, (colour >> 8) & 255, colour & 255)} is no label of {LABELMAP}")
        if isinstance(cls, str) and skip_unknown:
            cls = 0
        elif isinstance(cls, str):
            raise ValueError(f"{item.where}: label {cls!r} is no batch-parse class (background or a part: "
                             "the model has no other classes)")
        lut[i] = cls
    return lut[inverse.reshape(packed.shape)]
