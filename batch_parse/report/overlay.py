"""Pictures of labelled images: coloured label maps, overlays with outlines, a legend, a face panel, a group photo panel.

Pure functions on numpy arrays and Pillow images; fetching and decoding live in render.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from batch_parse.labels import BACKGROUND, CLASS_COLORS, CLASS_NAMES, COARSE_CLASSES, NUM_CLASSES, PART_NAMES, PARTS

# Pixel values past the last class mean a corrupt map: white makes them stand out.
_PALETTE = np.full((256, 3), 255, dtype=np.uint8)
_PALETTE[:NUM_CLASSES] = CLASS_COLORS
# A part's box takes the colour of its first class (mouth: upper_lip).
PART_COLORS: tuple[tuple[int, int, int], ...] = tuple(CLASS_COLORS[p.classes[0]] for p in PARTS)
NO_IMAGE_GREY = 128
# Coarse regions (skin) cover the whole face: blended this much lighter than the parts, so the
# face stays visible under them and the parts stand out over them.
COARSE_ALPHA_SCALE = 0.5
_IS_COARSE = np.zeros(256, bool)
_IS_COARSE[list(COARSE_CLASSES)] = True

TILE = 256  # panel tiles are TILE x TILE
GAP = 8
FONT_SIZE = 13
CROP_COLUMNS = 3
CROP_CELL = (120, 96)
_INK = (20, 20, 20)
_NOTE_INK = (190, 0, 0)
_PANEL_BG = (255, 255, 255)
_TILE_BG = (235, 235, 235)


def _font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def colorize(label_map: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 RGB in labels.CLASS_COLORS."""
    return _PALETTE[np.asarray(label_map, dtype=np.uint8)]


def outline_mask(label_map: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour of another class: each region's inner edge."""
    lm = np.asarray(label_map)
    edge = np.zeros(lm.shape, dtype=bool)
    edge[1:, :] |= lm[1:, :] != lm[:-1, :]
    edge[:-1, :] |= lm[:-1, :] != lm[1:, :]
    edge[:, 1:] |= lm[:, 1:] != lm[:, :-1]
    edge[:, :-1] |= lm[:, :-1] != lm[:, 1:]
    return edge & (lm != BACKGROUND)


def overlay(image: np.ndarray, label_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Class colours blended over the image (background left untouched), outlines fully opaque."""
    image = np.asarray(image, dtype=np.uint8)
    if image.shape[:2] != np.shape(label_map):
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but the label map is {label_map.shape[1]}x{label_map.shape[0]}")
    colors = colorize(label_map)
    foreground = (np.asarray(label_map) != BACKGROUND)[..., None]
    a = np.where(_IS_COARSE[np.asarray(label_map, dtype=np.uint8)], alpha * COARSE_ALPHA_SCALE, alpha)[..., None]
    blended = np.where(foreground, (1 - a) * image + a * colors, image)
    out = blended.round().astype(np.uint8)
    edge = outline_mask(label_map)
    out[edge] = colors[edge]
    return out


def legend(font_size: int = FONT_SIZE, class_names: Sequence[str] = CLASS_NAMES) -> Image.Image:
    """Class names next to their colour swatches, one per line, on white.

    class_names: the classes of the labels shown (a file's `class_names` metadata; 9 for v1/v2 outputs).
    """
    font = _font(font_size)
    line = font_size + 7
    width = 2 * line + max(int(font.getlength(name)) for name in class_names) + 6
    image = Image.new("RGB", (width, line * len(class_names) + 4), _PANEL_BG)
    draw = ImageDraw.Draw(image)
    for i, (name, color) in enumerate(zip(class_names, CLASS_COLORS)):
        y = 2 + i * line
        draw.rectangle((2, y + 2, line - 2, y + line - 4), fill=color, outline=(110, 110, 110))
        draw.text((line + 4, y + 2), name, fill=_INK, font=font)
    return image


def _fit(image: Image.Image, size: tuple[int, int], resample: int) -> tuple[Image.Image, float]:
    """Scaled to fit inside size, never up by more than 4x (tiny crops stay recognisable)."""
    scale = min(size[0] / image.width, size[1] / image.height, 4.0)
    new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new, resample), scale


def _tile(image: Image.Image) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE), _TILE_BG)
    tile.paste(image, ((TILE - image.width) // 2, (TILE - image.height) // 2))
    return tile


def _draw_boxes(image: Image.Image, boxes: np.ndarray, scale: float) -> None:
    draw = ImageDraw.Draw(image)
    font = _font(FONT_SIZE - 2)
    for name, box, color in zip(PART_NAMES, np.asarray(boxes, dtype=np.float64), PART_COLORS):
        if not np.all(np.isfinite(box)):
            continue
        x0, y0, x1, y1 = (box * scale).tolist()
        draw.rectangle((x0, y0, x1, y1), outline=color, width=2)
        draw.text((x0 + 2, max(0.0, y0 - FONT_SIZE)), name, fill=color, font=font)


def _draw_face(image: Image.Image, face_box: np.ndarray | None, landmarks: np.ndarray | None, scale: float) -> None:
    """The detector's box (white) and five landmarks (dots), so a reviewer sees which face this row is."""
    draw = ImageDraw.Draw(image)
    if face_box is not None and np.all(np.isfinite(face_box)):
        draw.rectangle(tuple((np.asarray(face_box) * scale).tolist()), outline=(255, 255, 255), width=1)
    if landmarks is not None:
        for x, y in np.asarray(landmarks) * scale:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(255, 255, 255), outline=(0, 0, 0))


def _crop_grid(crops: Sequence[Image.Image | None], confidences: Sequence[float]) -> Image.Image:
    font = _font()
    cell_w, cell_h = CROP_CELL
    caption = FONT_SIZE + 6
    rows = -(-len(PART_NAMES) // CROP_COLUMNS)
    grid = Image.new("RGB", (CROP_COLUMNS * (cell_w + GAP), rows * (cell_h + caption + GAP)), _PANEL_BG)
    draw = ImageDraw.Draw(grid)
    for i, (name, crop, confidence) in enumerate(zip(PART_NAMES, crops, confidences)):
        x = (i % CROP_COLUMNS) * (cell_w + GAP)
        y = (i // CROP_COLUMNS) * (cell_h + caption + GAP)
        draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=_TILE_BG)
        if crop is None:
            draw.text((x + 6, y + cell_h // 2 - 6), "no crop", fill=_NOTE_INK, font=font)
        else:
            fitted, _ = _fit(crop.convert("RGB"), (cell_w, cell_h), Image.BILINEAR)
            grid.paste(fitted, (x + (cell_w - fitted.width) // 2, y + (cell_h - fitted.height) // 2))
        text = name if confidence is None or not np.isfinite(confidence) else f"{name}  {confidence:.2f}"
        # The swatch ties the crop to its box on the original tile.
        draw.rectangle((x + 1, y + cell_h + 4, x + 11, y + cell_h + 14), fill=PART_COLORS[i])
        draw.text((x + 15, y + cell_h + 2), text, fill=_INK, font=font)
    return grid


def panel(
    image: np.ndarray | None,
    label_map: np.ndarray,
    boxes: np.ndarray,
    confidences: Sequence[float],
    crops: Sequence[Image.Image | None],
    title: str,
    note: str | None = None,
    face_box: np.ndarray | None = None,
    landmarks: np.ndarray | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
) -> Image.Image:
    """One face to review: original + face box, landmarks, part boxes | overlay | legend | the six part crops.

    image None (source unreadable): both tiles are drawn on flat grey from the label map alone;
    say why in `note`, which is printed in red under the title.
    """
    label_map = np.asarray(label_map, dtype=np.uint8)
    alpha = 0.5
    if image is None:
        image = np.full((*label_map.shape, 3), NO_IMAGE_GREY, dtype=np.uint8)
        alpha = 1.0  # nothing underneath worth seeing through
    original, scale = _fit(Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB"), (TILE, TILE), Image.BILINEAR)
    # Blend at display size so outlines stay one visible pixel wide whatever the image size.
    small_map = np.asarray(Image.fromarray(label_map).resize(original.size, Image.NEAREST))
    overlaid = Image.fromarray(overlay(np.asarray(original), small_map, alpha))
    _draw_boxes(original, boxes, scale)
    _draw_face(original, face_box, landmarks, scale)

    return _row_of_pictures(title, note, [_tile(original), _tile(overlaid), legend(class_names=class_names), _crop_grid(crops, confidences)])


def _row_of_pictures(title: str, note: str | None, pictures: list[Image.Image]) -> Image.Image:
    """A panel: the title (and a red note) over the pictures side by side."""
    font = _font(FONT_SIZE + 1)
    header = (FONT_SIZE + 8) * (2 if note else 1) + 4
    width = GAP + sum(p.width + GAP for p in pictures)
    height = header + max(p.height for p in pictures) + GAP
    out = Image.new("RGB", (width, height), _PANEL_BG)
    draw = ImageDraw.Draw(out)
    draw.text((GAP, 3), title, fill=_INK, font=font)
    if note:
        draw.text((GAP, 3 + FONT_SIZE + 8), note, fill=_NOTE_INK, font=font)
    x = GAP
    for picture in pictures:
        out.paste(picture, (x, header))
        x += picture.width + GAP
    return out


PHOTO_TILE = 512  # the whole photo of a group: each face must stay big enough to tell apart


def _draw_numbered_faces(image: Image.Image, faces: Sequence[tuple[int, np.ndarray | None, np.ndarray | None]], scale: float) -> None:
    """Each face's box and landmarks, its face_index written above the box (on a dark patch to read on any photo)."""
    draw = ImageDraw.Draw(image)
    font = _font(FONT_SIZE)
    for number, face_box, landmarks in faces:
        _draw_face(image, face_box, landmarks, scale)
        if face_box is None or not np.all(np.isfinite(face_box)):
            continue
        x0, y0 = float(face_box[0]) * scale, float(face_box[1]) * scale
        text = str(number)
        y = max(0.0, y0 - FONT_SIZE - 4)
        draw.rectangle((x0, y, x0 + font.getlength(text) + 5, y + FONT_SIZE + 3), fill=(0, 0, 0))
        draw.text((x0 + 3, y + 1), text, fill=(255, 255, 255), font=font)


def photo_panel(
    image: np.ndarray | None,
    label_map: np.ndarray,
    faces: Sequence[tuple[int, np.ndarray | None, np.ndarray | None]],
    title: str,
    note: str | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
) -> Image.Image:
    """A photo with several faces, once: original + every face's box (numbered by face_index) and landmarks | overlay.

    faces: (face_index, face box [x0, y0, x1, y1] or None, (5, 2) landmarks or None), original pixels.
    image None: drawn on flat grey from the label map alone (say why in `note`).
    """
    label_map = np.asarray(label_map, dtype=np.uint8)
    alpha = 0.5
    if image is None:
        image = np.full((*label_map.shape, 3), NO_IMAGE_GREY, dtype=np.uint8)
        alpha = 1.0
    original, scale = _fit(Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB"), (PHOTO_TILE, PHOTO_TILE), Image.BILINEAR)
    small_map = np.asarray(Image.fromarray(label_map).resize(original.size, Image.NEAREST))
    overlaid = Image.fromarray(overlay(np.asarray(original), small_map, alpha))
    _draw_numbered_faces(original, faces, scale)
    _draw_numbered_faces(overlaid, faces, scale)

    return _row_of_pictures(title, note, [original, overlaid, legend(class_names=class_names)])
