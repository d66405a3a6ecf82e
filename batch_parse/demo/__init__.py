"""Bundled demo photos (public domain) that `batch-parse` can label without any data of one's own."""

from __future__ import annotations

from pathlib import Path

IMAGES_DIR = Path(__file__).parent / "images"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def demo_images() -> list[Path]:
    """The bundled demo photos, sorted by name (ATTRIBUTION.md and the like left out)."""
    return sorted(p for p in IMAGES_DIR.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
