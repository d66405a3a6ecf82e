"""Rebuild the bundled demo photos from two public-domain portraits (run by hand, not at import).

Sources (both public domain, see images/ATTRIBUTION.md):
  - Grace Hopper, US Navy photo: matplotlib's sample data (mpl-data/sample_data/grace_hopper.jpg).
  - Eileen Collins, NASA photo: scikit-image's `astronaut.png`. Get it without installing
    scikit-image:  pip download scikit-image --no-deps -d /tmp/skimage
    and pass the wheel (or the PNG unzipped from skimage/data/) as --astronaut.

    python -m batch_parse.demo.make_images --astronaut /tmp/skimage/scikit_image-*.whl

The variants exercise what a real corpus throws at the job: tight and loose face crops, a wide
shot with a small face, a mirrored face, a tiny image, greyscale and tinted colour, an in-plane
rotation, a JPEG whose pixels are stored sideways with an EXIF orientation tag, and
group_canvas.jpg, a composite group photo: four people cut from the two public-domain portraits
(two of each, at different sizes, one mirrored, one turned) on one canvas.
"""

from __future__ import annotations

import argparse
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from batch_parse.demo import IMAGES_DIR

ASTRONAUT_IN_WHEEL = "skimage/data/astronaut.png"
JPEG_QUALITY = 88
# EXIF tag 0x0112; value 6 = "rotate 90 degrees clockwise to display".
EXIF_ORIENTATION = 0x0112
ORIENTATION_ROTATE_CW = 6

# Face regions measured by eye on the originals (x0, y0, x1, y1).
HOPPER_FACE_TIGHT = (150, 120, 380, 350)  # 512x600 original
ASTRONAUT_FACE_LOOSE = (90, 0, 370, 280)  # 512x512 original
ASTRONAUT_UPPER_BODY = (0, 0, 512, 400)
# Brow-to-chin face boxes, also by eye; the group photo scales each person by these.
HOPPER_FACE = (160, 130, 375, 330)
ASTRONAUT_FACE = (172, 58, 275, 168)

GROUP_SIZE = (900, 500)
# One row per person, pasted back to front so no face is covered: portrait, face height (px),
# mirrored, in-plane rotation (degrees counter-clockwise), centre of the face on the canvas.
GROUP_PEOPLE = (
    ("astronaut", 90, False, 0.0, (832, 135)),
    ("hopper", 120, False, 8.0, (640, 160)),
    ("astronaut", 150, True, 0.0, (110, 195)),
    ("hopper", 200, False, 0.0, (377, 250)),
)


def _default_hopper() -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def _open_astronaut(path: Path) -> Image.Image:
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            return Image.open(io.BytesIO(wheel.read(ASTRONAUT_IN_WHEEL))).convert("RGB")
    return Image.open(path).convert("RGB")


def _save_jpeg(image: Image.Image, name: str, **kwargs) -> None:
    image.save(IMAGES_DIR / name, "JPEG", quality=JPEG_QUALITY, optimize=True, **kwargs)


def _warm(image: Image.Image) -> Image.Image:
    rgb = np.asarray(image, dtype=np.float32) * np.array([1.12, 1.0, 0.82], dtype=np.float32)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _wide_shot(image: Image.Image, size: tuple[int, int], face_scale: float) -> Image.Image:
    """The portrait shrunk onto a wider canvas filled with its own blurred enlargement."""
    canvas = ImageOps.fit(image, size).filter(ImageFilter.GaussianBlur(12))
    small = image.resize((round(image.width * face_scale), round(image.height * face_scale)), Image.LANCZOS)
    canvas.paste(small, ((size[0] - small.width) // 2, size[1] - small.height))
    return canvas


def _cutout(
    portrait: Image.Image, face: tuple[int, int, int, int], height: int, mirrored: bool, degrees: float
) -> tuple[Image.Image, np.ndarray]:
    """Head and body below it, scaled to a face `height` px tall, with feathered edges (RGBA).

    Returns the cutout and the face box's four corners in it (4x2, x and y), turned with it.
    """
    x0, y0, x1, y1 = face
    width = x1 - x0
    # Some room beside and above the face; down to the bottom of the photo so bodies fill the row.
    crop = (max(0, round(x0 - 0.4 * width)), max(0, round(y0 - 0.5 * (y1 - y0))),
            min(portrait.width, round(x1 + 0.4 * width)), portrait.height)  # fmt: skip
    scale = height / (y1 - y0)
    size = (round((crop[2] - crop[0]) * scale), round((crop[3] - crop[1]) * scale))
    cutout = portrait.crop(crop).resize(size, Image.LANCZOS)
    corners = (np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64) - crop[:2]) * scale

    # A blurred rounded rectangle as alpha, so the rectangle's hard edges do not read as a face edge.
    feather = max(4, size[0] // 14)
    alpha = Image.new("L", size, 0)
    ImageDraw.Draw(alpha).rounded_rectangle(
        (feather, feather, size[0] - feather, size[1] - feather), radius=3 * feather, fill=255
    )
    cutout.putalpha(alpha.filter(ImageFilter.GaussianBlur(feather / 2)))

    if mirrored:
        cutout = ImageOps.mirror(cutout)
        corners[:, 0] = size[0] - corners[:, 0]
    if degrees:
        # PIL turns counter-clockwise about the centre; with y pointing down that is this matrix.
        rad = np.deg2rad(degrees)
        turn = np.array([[np.cos(rad), np.sin(rad)], [-np.sin(rad), np.cos(rad)]])
        before = np.array(cutout.size) / 2
        cutout = cutout.rotate(degrees, Image.BICUBIC, expand=True)
        corners = (corners - before) @ turn.T + np.array(cutout.size) / 2
    return cutout, corners


def _group_canvas(hopper: Image.Image, astronaut: Image.Image) -> tuple[Image.Image, list[tuple[int, ...]]]:
    """Four people on a gradient backdrop; returns the photo and each face's box (x0, y0, x1, y1)."""
    ramp = np.linspace(0.0, 1.0, GROUP_SIZE[1], dtype=np.float32)[:, None, None]
    upper, lower = np.array([196, 206, 218], np.float32), np.array([112, 104, 98], np.float32)
    backdrop = np.broadcast_to(upper + (lower - upper) * ramp, (GROUP_SIZE[1], GROUP_SIZE[0], 3))
    canvas = Image.fromarray(backdrop.round().astype(np.uint8))

    portraits = {"hopper": (hopper, HOPPER_FACE), "astronaut": (astronaut, ASTRONAUT_FACE)}
    boxes = []
    for name, height, mirrored, degrees, (cx, cy) in GROUP_PEOPLE:
        portrait, face = portraits[name]
        cutout, corners = _cutout(portrait, face, height, mirrored, degrees)
        left, top = (int(v) for v in np.round(np.array([cx, cy]) - corners.mean(axis=0)))
        canvas.paste(cutout, (left, top), cutout)
        placed = corners + (left, top)
        boxes.append(tuple(int(v) for v in np.round([*placed.min(axis=0), *placed.max(axis=0)])))
    return canvas, boxes


def make_images(hopper_path: Path, astronaut_path: Path) -> list[Path]:
    """Write every demo image into IMAGES_DIR; returns their paths."""
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    hopper = Image.open(hopper_path).convert("RGB")
    astronaut = _open_astronaut(astronaut_path)

    # The original as published, byte for byte.
    shutil.copyfile(hopper_path, IMAGES_DIR / "hopper.jpg")
    _save_jpeg(hopper.crop(HOPPER_FACE_TIGHT), "hopper_face_tight.jpg")
    _save_jpeg(ImageOps.mirror(hopper).resize((384, 450), Image.LANCZOS), "hopper_mirrored.jpg")
    _save_jpeg(hopper.convert("L"), "hopper_grey.jpg")
    _save_jpeg(hopper.rotate(10, Image.BICUBIC, expand=False, fillcolor=(128, 128, 128)), "hopper_rotated10.jpg")

    _save_jpeg(astronaut.crop(ASTRONAUT_FACE_LOOSE).resize((400, 400), Image.LANCZOS), "astronaut_face_loose.jpg")
    _save_jpeg(_wide_shot(astronaut, (800, 560), 0.8), "astronaut_wide.jpg")
    _save_jpeg(astronaut.resize((150, 150), Image.LANCZOS), "astronaut_small.jpg")
    _save_jpeg(_warm(astronaut), "astronaut_warm.jpg")

    group, faces = _group_canvas(hopper, astronaut)
    _save_jpeg(group, "group_canvas.jpg")
    # ATTRIBUTION.md and the tests quote these boxes: show them, so a new layout gets them updated.
    print("group_canvas.jpg face boxes (x0, y0, x1, y1):", *faces)

    # Stored sideways; a reader that honours EXIF shows it upright (512x400).
    upright = astronaut.crop(ASTRONAUT_UPPER_BODY)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ORIENTATION_ROTATE_CW
    _save_jpeg(upright.transpose(Image.Transpose.ROTATE_90), "astronaut_exif_rotated.jpg", exif=exif.tobytes())

    return sorted(IMAGES_DIR.glob("*.jpg"))


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--hopper", type=Path, default=_default_hopper(), help="grace_hopper.jpg (default: matplotlib's copy)")
    cli.add_argument("--astronaut", type=Path, required=True, help="astronaut.png or a scikit-image wheel holding it")
    args = cli.parse_args()
    if args.hopper is None or not args.hopper.is_file():
        cli.error("grace_hopper.jpg not found: install matplotlib or pass --hopper")
    if not args.astronaut.is_file():
        cli.error(f"{args.astronaut} not found")
    for path in make_images(args.hopper, args.astronaut):
        with Image.open(path) as image:
            print(f"{path.name:28s} {image.width}x{image.height} {image.mode:4s} {path.stat().st_size / 1024:6.1f} KiB")


if __name__ == "__main__":
    main()
