"""PNG figures of `evaluate`: DVC's plots (`dvc plots show` embeds images, so they render without a network)
and the MLflow run's."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def channels_figure(rows: list[dict], path: Path) -> None:
    """Grouped horizontal bars: output channels of every conv/linear layer before and after pruning."""
    names = [row["layer"] for row in rows]
    positions = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    ax.barh([p + 0.2 for p in positions], [row["before"] for row in rows], height=0.4, label="before")
    ax.barh([p - 0.2 for p in positions], [row["after"] for row in rows], height=0.4, label="after")
    ax.set_yticks(list(positions), names)
    ax.invert_yaxis()
    ax.set_xlabel("output channels")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tradeoff_figure(points: list[dict], path: Path) -> None:
    """Accuracy against measured latency for the baseline, pruned and fine-tuned models."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for point in points:
        ax.scatter(point["latency_ms"], point["accuracy"], s=40)
        ax.annotate(point["model"], (point["latency_ms"], point["accuracy"]), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
