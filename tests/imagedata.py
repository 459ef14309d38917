"""Data files written by tests: PNG images whose class shows in their colour, torchvision's
IDX files, and CSV tables. Nothing is downloaded."""

import struct
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": 0, "green": 1, "blue": 2}


def colour_image(colour: str, rng: np.random.Generator, size: int = 12) -> Image.Image:
    """A noisy RGB image whose `colour` channel is the bright one."""
    pixels = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
    pixels[..., COLOURS[colour]] += rng.integers(120, 165, size=(size, size), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def write_image_files(directory: Path, per_class: int, seed: int, size: int = 12) -> Path:
    """`red_000.png`, `green_000.png`, ...: the label is in the file name."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for colour in COLOURS:
        for i in range(per_class):
            colour_image(colour, rng, size).save(directory / f"{colour}_{i:03d}.png")
    return directory


def write_image_folder(directory: Path, per_class: int, seed: int, size: int = 12) -> Path:
    """`red/000.png`, `green/000.png`, ...: the label is the folder (JPEG for blue)."""
    rng = np.random.default_rng(seed)
    for colour in COLOURS:
        (directory / colour).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix = "jpg" if colour == "blue" else "png"
            colour_image(colour, rng, size).save(directory / colour / f"{i:03d}.{suffix}")
    return directory


def bar_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 uint8 images with a bright bar at row 2 * label + 4: an easy 10-class task."""
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels, strict=True):
        image[2 * label + 4 : 2 * label + 6, 3:25] = 255
    return images


def write_fashion_mnist(root: Path, train: int, test: int, seed: int) -> Path:
    """A FashionMNIST root in torchvision's layout and the IDX format: <root>/FashionMNIST/raw."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.arange(count, dtype=np.uint8) % 10
        images = bar_images(labels, rng)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, count) + labels.tobytes()
        )
    return root


def write_regression_csv(path: Path, rows: int, seed: int) -> Path:
    """Columns x1, x2, city (text, not a feature) and y = 2 x1 - x2 + 0.5."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2))
    y = 2 * x[:, 0] - x[:, 1] + 0.5
    lines = ["x1,x2,city,y"] + [
        f"{a:.6f},{b:.6f},{'oslo' if i % 2 else 'lima'},{t:.6f}"
        for i, (a, b, t) in enumerate(zip(x[:, 0], x[:, 1], y, strict=True))
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_binary_csv(path: Path, rows: int, seed: int) -> Path:
    """Columns a, b and label: "yes" when a + b > 0, else "no"."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2))
    lines = ["a,b,label"] + [f"{a:.6f},{b:.6f},{'yes' if a + b > 0 else 'no'}" for a, b in x]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
