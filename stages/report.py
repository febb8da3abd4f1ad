"""Per-layer channel counts before/after pruning, as rows for the summary, the DVC plot and MLflow."""

from __future__ import annotations

from torch import nn

_WIDTH_ATTRS = ("out_channels", "out_features", "num_features", "num_channels", "embedding_dim")


def _width(module: nn.Module) -> int | None:
    for attr in _WIDTH_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def layer_channels(before: nn.Module, after: nn.Module) -> list[dict]:
    """For each conv/linear layer of `before` (model order): its output width before and after pruning."""
    after_modules = dict(after.named_modules())
    rows = []
    for name, module in before.named_modules():
        if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) or name not in after_modules:
            continue
        width_before, width_after = _width(module), _width(after_modules[name])
        rows.append(
            {
                "index": len(rows),
                "layer": name,
                "before": width_before,
                "after": width_after,
                "kept_ratio": round(width_after / width_before, 6),
            }
        )
    return rows


def format_summary(rows: list[dict], header: list[str]) -> str:
    """A Markdown report: `header` lines, then a per-layer table of channels before -> after."""
    lines = [*header, "", "| layer | channels before | channels after | kept |", "|---|---:|---:|---:|"]
    lines += [f"| {r['layer']} | {r['before']} | {r['after']} | {r['kept_ratio']:.0%} |" for r in rows]
    total_before, total_after = sum(r["before"] for r in rows), sum(r["after"] for r in rows)
    lines.append(f"| **total** | {total_before} | {total_after} | {total_after / total_before:.0%} |")
    return "\n".join(lines) + "\n"
