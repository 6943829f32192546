"""Small synthetic image datasets that even a randomly initialised backbone can separate."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

# Each class has its own background hue and shape, with noise so no two images are alike.
_STYLES = [((200, 60, 50), "ellipse"), ((40, 80, 200), "rectangle"), ((60, 170, 70), "triangle")]


def make_image(label: int, rng: random.Random, size: int = 96) -> Image.Image:
    base, shape = _STYLES[label % len(_STYLES)]
    jitter = tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in base)
    img = Image.new("RGB", (size + rng.randint(0, 40), size + rng.randint(0, 40)), jitter)
    draw = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(3):
        x0, y0 = rng.randint(0, w // 2), rng.randint(0, h // 2)
        x1, y1 = x0 + rng.randint(w // 6, w // 2), y0 + rng.randint(h // 6, h // 2)
        fill = tuple(rng.randint(150, 255) for _ in range(3))
        if shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=fill)
    return img


def make_dataset(
    root: Path,
    *,
    classes: tuple[str, ...] = ("cats", "dogs"),
    per_class: int = 30,
    val_per_class: int = 0,
    seed: int = 0,
    size: int = 96,
) -> Path:
    """Write JPEGs under ``root``: ``root/<class>/`` (val_per_class=0) or ``root/train|validation/<class>/``."""
    rng = random.Random(seed)
    splits = [("train", per_class), ("validation", val_per_class)] if val_per_class else [("", per_class)]
    for split, count in splits:
        for label, name in enumerate(classes):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                make_image(label, rng, size).save(folder / f"{name}.{i}.jpg", quality=90)
    return root


def make_others(root: Path, *, count: int = 40, seed: int = 1, size: int = 96) -> Path:
    """Write ``count`` JPEGs of a kind no two-class dataset above holds (the third style) into ``root``."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        make_image(2, rng, size).save(root / f"other.{i}.jpg", quality=90)
    return root
