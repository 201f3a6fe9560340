"""A confusion matrix as a PNG heatmap, drawn with Pillow (no plotting library needed).

Rows are true classes, columns predicted classes, both in the manifest's class order.
Each cell's shade is the share of its row (so a class's recall is its diagonal cell,
whatever the class sizes); a colour bar on the right gives the scale. Class names are
written along the axes when the cells are large enough to hold text, and counts inside
the cells when there are few classes.
"""
from __future__ import annotations

import os

import torch
from PIL import Image, ImageDraw, ImageFont

WHITE = (255, 255, 255)
INK = (30, 30, 30)
FULL = (8, 48, 107)      # colour of a cell holding its whole row
MAX_SIDE = 900           # the matrix part fits in this many pixels
MAX_CELL = 48
MIN_CELL_FOR_NAMES = 11  # the default bitmap font is about 11 px high
MAX_CLASSES_FOR_COUNTS = 20
LABEL_CHARS = 18
BAR_WIDTH, BAR_GAP = 18, 24


def _shade(fraction: float) -> tuple[int, int, int]:
    """White at 0, FULL at 1, linear in between."""
    return tuple(round(w + (f - w) * fraction) for w, f in zip(WHITE, FULL))


def _short(name: str) -> str:
    return name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1] + "~"


def write_confusion_png(confusion: torch.Tensor, classes: list[str], path: str, title: str = "") -> str:
    """Draw ``confusion`` (``[true, predicted]`` counts) to ``path``; returns ``path``."""
    n = len(classes)
    counts = confusion.to(torch.float64)
    fractions = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    cell = max(1, min(MAX_CELL, MAX_SIDE // max(n, 1)))
    font = ImageFont.load_default()
    names = cell >= MIN_CELL_FOR_NAMES
    label_px = (max(round(font.getlength(_short(c))) for c in classes) + 8) if names else 8
    top, left = label_px + 34, label_px + 24
    side = cell * n
    width = max(left + side + BAR_GAP + BAR_WIDTH + 40, 400)  # room for the footnote
    height = top + side + 34
    img = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(img)
    draw.text((8, 6), title or "confusion matrix", fill=INK, font=font)
    draw.text((left, 20), "predicted class ->", fill=INK, font=font)
    for i in range(n):
        for j in range(n):
            x0, y0 = left + j * cell, top + i * cell
            colour = _shade(float(fractions[i, j]))
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour)
            if n <= MAX_CLASSES_FOR_COUNTS and cell >= 24:
                text_colour = WHITE if fractions[i, j] > 0.5 else INK
                draw.text((x0 + 3, y0 + cell // 2 - 6), str(int(counts[i, j])), fill=text_colour, font=font)
    draw.rectangle([left - 1, top - 1, left + side, top + side], outline=INK)
    if names:
        for i, name in enumerate(classes):
            y = top + i * cell + (cell - 11) // 2
            draw.text((8, y), _short(name), fill=INK, font=font)
            column = Image.new("RGB", (label_px, 11), WHITE)
            ImageDraw.Draw(column).text((0, 0), _short(name), fill=INK, font=font)
            img.paste(column.rotate(90, expand=True), (left + i * cell + (cell - 11) // 2, 34))
    draw.text((8, top + side + 10), "rows: true class (manifest order); shade: share of the row", fill=INK, font=font)
    _colour_bar(draw, left + side + BAR_GAP, top, side, font)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path, format="PNG")
    return path


def _colour_bar(draw: ImageDraw.ImageDraw, x: int, top: int, height: int, font) -> None:
    """Vertical legend: 1.0 (FULL) at the top down to 0.0 (white)."""
    height = max(height, 40)
    for y in range(height):
        draw.line([x, top + y, x + BAR_WIDTH - 1, top + y], fill=_shade(1.0 - y / max(height - 1, 1)))
    draw.rectangle([x - 1, top - 1, x + BAR_WIDTH, top + height], outline=INK)
    draw.text((x + BAR_WIDTH + 4, top - 5), "1.0", fill=INK, font=font)
    draw.text((x + BAR_WIDTH + 4, top + height // 2 - 5), "0.5", fill=INK, font=font)
    draw.text((x + BAR_WIDTH + 4, top + height - 6), "0.0", fill=INK, font=font)
