"""Rebuild the bundled demo photos from two public-domain portraits (run by hand, not at import).

Sources (both public domain, see images/ATTRIBUTION.md):
  - Grace Hopper, US Navy photo: matplotlib's sample data (mpl-data/sample_data/grace_hopper.jpg).
  - Eileen Collins, NASA photo: scikit-image's `astronaut.png`. Get it without installing
    scikit-image:  pip download scikit-image --no-deps -d /tmp/skimage
    and pass the wheel (or the PNG unzipped from skimage/data/) as --astronaut.

    python -m batch_parse.demo.make_images --astronaut /tmp/skimage/scikit_image-*.whl

The variants exercise what a real corpus throws at the job: tight and loose face crops, a wide
shot with a small face, a mirrored face, a tiny image, greyscale and tinted colour, an in-plane
rotation, and a JPEG whose pixels are stored sideways with an EXIF orientation tag.
"""

from __future__ import annotations

import argparse
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

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
