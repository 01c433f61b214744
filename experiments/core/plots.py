"""Pictures of a search: how each choice's architecture weights moved, epoch by epoch.

The monitor records the softmax of every choice's architecture weights at the end of each
epoch (``history[i]['architecture']``); this draws them as one PNG (a panel per label) and
writes them as TensorBoard scalars ``architecture/<label>/<choice>``. NNI's own per-step
``prob/...`` scalars carry GumbelDARTS' sampling noise; these do not.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence


def architecture_series(history: Sequence[dict]) -> tuple[list[int], dict[str, dict[str, list[float]]]]:
    """``(epochs, {label: {choice: [p at each epoch]}})`` from a monitor history."""
    rows = [r for r in history if r.get("architecture")]
    epochs = [int(r["epoch"]) for r in rows]
    series: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        for label, probs in r["architecture"].items():
            for choice, p in probs.items():
                series.setdefault(label, {}).setdefault(choice, []).append(float(p))
    return epochs, series


def plot_architecture_history(history: Sequence[dict], path: str | Path, title: str = "") -> Path | None:
    """One PNG, a panel per label, a line per choice; ``None`` when nothing was searched."""
    epochs, series = architecture_series(history)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    labels = sorted(series, key=lambda label: (not label.startswith("projector"), label))
    cols = min(4, len(labels))
    rows = math.ceil(len(labels) / cols)
    height = 2.3 * rows + 1.2
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, height), sharex=True, sharey=True, squeeze=False)
    choices = list(dict.fromkeys(c for label in labels for c in series[label]))
    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(choices)}
    for i, (ax, label) in enumerate(zip(axes.flat, labels)):
        for choice, values in series[label].items():
            ax.plot(epochs, values, marker="o" if len(epochs) < 12 else None, markersize=3,
                    color=colours[choice], label=choice)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if i + cols >= len(labels):  # the lowest panel of its column
            ax.set_xlabel("epoch")
            ax.tick_params(labelbottom=True)
        if i % cols == 0:
            ax.set_ylabel("softmax(alpha)")
    for ax in list(axes.flat)[len(labels):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[c], label=c) for c in choices]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(choices), 7), fontsize=8, frameon=False)
    fig.suptitle(title or "architecture weights per epoch", fontsize=11)
    fig.tight_layout(rect=(0, 0.55 / height, 1, 1 - 0.1 / height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class ArchitectureScalars:
    """An epoch listener: writes ``architecture/<label>/<choice>`` to TensorBoard at step = epoch."""

    def __init__(self, logdir: str | Path):
        self.logdir = Path(logdir)
        self._writer = None

    def __call__(self, record: dict) -> None:
        if not record.get("architecture"):
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.logdir))
        for label, probs in record["architecture"].items():
            for choice, p in probs.items():
                self._writer.add_scalar(f"architecture/{label}/{choice}", float(p), int(record["epoch"]))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
