"""Learning curves as a picture: training and validation loss, and the task's metric."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

METRICS = ("accuracy", "mae")


def plot_history(
    history: Sequence[dict[str, Any]], out: str | Path, title: str = "", best_epoch: int = 0
) -> Path:
    """Draws per-epoch curves (as `Job.history()` returns them) and writes an image.

    Args:
        history: one dict per epoch with train_loss, val_loss and train_/val_ metrics.
        out: the file to write; its suffix picks the format (.png, .svg, .pdf).
        title: a title over both panels.
        best_epoch: marks the epoch whose weights were kept, when > 0.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("the history is empty: no epoch has finished")
    epochs = [row["epoch"] for row in history]
    metric = next((m for m in METRICS if f"train_{m}" in history[0]), None)
    panels = [("loss", "loss")] + ([(metric, metric)] if metric else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for axis, (key, label) in zip(axes[0], panels, strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            values = [row.get(f"{split}_{key}") for row in history]
            if any(v is not None for v in values):
                axis.plot(epochs, values, style, marker="o", markersize=3, label=split)
        if best_epoch:
            axis.axvline(best_epoch, color="grey", linewidth=0.8, label=f"best ({best_epoch})")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(out)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
