"""Learning curves as a picture: training and validation loss, and the task's metric."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

METRICS = ("accuracy", "mae")
LOG_SCALE_RANGE = 10.0
"""The loss axis is logarithmic when its largest value is at least this many times its
smallest: a loss that falls tenfold would otherwise be a flat line after the first epochs."""
MAX_MARKED_EPOCHS = 40
"""Each epoch gets a marker up to this many epochs; beyond, only the lines are drawn."""
MAX_TICKED_EPOCHS = 12
"""Up to this many epochs, each has its tick; beyond, matplotlib picks whole numbers."""
NEEDS_LATEX = ("pgf",)
"""Formats matplotlib writes only with a LaTeX installation."""


def image_formats() -> dict[str, str]:
    """The image formats matplotlib writes by itself, by file suffix (without the dot)."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    return {suffix: name for suffix, name in formats.items() if suffix not in NEEDS_LATEX}


def check_image_format(path: Path) -> None:
    """Checks that `path`'s suffix names a format matplotlib writes.

    Raises:
        ValueError: the suffix is unknown; the message lists the known ones.
    """
    suffix = path.suffix.lower().removeprefix(".")
    formats = image_formats()
    if suffix not in formats:
        raise ValueError(
            f"{str(path)!r}: unknown image format {path.suffix or '(no suffix)'!r}; "
            f"use one of {', '.join('.' + s for s in sorted(formats))}"
        )


def plot_history(
    history: Sequence[dict[str, Any]], out: str | Path, title: str = "", best_epoch: int = 0
) -> Path:
    """Draws per-epoch curves (as `Job.history()` returns them) and writes an image.

    Args:
        history: one dict per epoch with train_loss, val_loss and train_/val_ metrics.
        out: the file to write; its suffix picks the format (.png, .svg, .pdf, ...).
        title: a title over both panels.
        best_epoch: marks the epoch whose weights were kept, when > 0.

    Returns:
        The path written.

    Raises:
        ValueError: no epoch has finished, or `out` cannot take a picture.
    """
    if not history:
        raise ValueError("the job has no finished epoch yet: there is no curve to draw")
    path = Path(out)
    check_image_format(path)
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    metric = next((m for m in METRICS if f"train_{m}" in history[0]), None)
    panels = ["loss"] + ([metric] if metric else [])
    marker = "o" if len(epochs) <= MAX_MARKED_EPOCHS else None
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for axis, key in zip(axes[0], panels, strict=True):
        drawn: list[float] = []
        for split, style in (("train", "-"), ("val", "--")):
            values = [row.get(f"{split}_{key}") for row in history]
            if any(v is not None for v in values):
                axis.plot(epochs, values, style, marker=marker, markersize=3, label=split)
                drawn += [v for v in values if v is not None]
        if key == "loss" and _spans_decades(drawn):
            axis.set_yscale("log")
        if best_epoch:
            axis.axvline(best_epoch, color="grey", linewidth=0.8, label=f"best ({best_epoch})")
        if len(epochs) <= MAX_TICKED_EPOCHS:
            axis.set_xticks(epochs)
        else:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _spans_decades(values: list[float]) -> bool:
    """Whether positive values range over at least LOG_SCALE_RANGE (a log axis shows them)."""
    return bool(values) and min(values) > 0 and max(values) >= LOG_SCALE_RANGE * min(values)
