"""One model of every timm family through PruningIR: build, prune half of every group, run, check.

    pip install timm        # in the dev extra (tests use it), not a dependency of the library
    python -m benchmarks.timm_zoo [--models convnext_atto vit_small_patch16_224 ...] --json out.json --markdown out.md

A family is a model name up to its first digit or underscore (``resnet``, ``convnext``...); the first
of its smallest variants (tiny/small/nano..., else the first name) stands for it. Each model runs in
its own process (random weights, perturbed so that no layer is all zero, ``num_classes=10``, the
model's own input size, run once in eval mode on it before the IR is built, as users do): IR build
seconds, prunable labels and groups, ops no rule understands (``Snapshot.opaque_ops``), the share of
parameters removed by pruning the first half of every group (what ``UniformLabelSelector(0.5)`` removes)
and, where under a third, why (``zoo.why_little``: opaque ops, and the ops that fixed the most parameters),
whether the pruned model runs, and the equivalence error of the exact labels (``pruning.verify``, float64).
"""
from __future__ import annotations

import argparse
import json
import re
import warnings
from pathlib import Path

from .zoo import LITTLE, prune_half_and_check, run_all_isolated


SMALL = ("atto", "femto", "pico", "nano", "tiny", "xxs", "xs", "small", "_s", "18", "b0", "050")


def families(names: list[str]) -> list[str]:
    """One model per family: the first name with a small-variant marker, else the family's first."""
    grouped: dict[str, list[str]] = {}
    for name in names:
        grouped.setdefault(re.split(r"[_\d]", name)[0], []).append(name)
    return [next((n for n in members if any(k in n for k in SMALL)), members[0])
            for _, members in sorted(grouped.items())]


def run_model(name: str) -> dict:
    import timm
    import torch

    from pruning.verify import perturb

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    row: dict = {"model": name}
    try:
        model = perturb(timm.create_model(name, pretrained=False, num_classes=10).eval())
        size = timm.data.resolve_data_config({}, model=model)["input_size"][1:]
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            model(x)  # as users do before pruning (a model that caches in eval mode fills its cache)
        prune_half_and_check(model, x, row, lambda out: tuple(out.shape) == (1, 10))
    except Exception as error:  # noqa: BLE001 - the table reports failures
        row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| model | labels | groups | build s | params removed | runs | equiv. err | ops no rule understands | "
             "why under 1/3 removed |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | | | | **error** | | {r['error'][:120].replace('|', '/')} | |")
            continue
        err = "-" if r["equivalence_error"] is None else f"{r['equivalence_error']:.1e}"
        lines.append(f"| {r['model']} | {r['labels']} | {r['groups']} | {r['build_s']:.2f} | {1 - r['params']:.2f} | "
                     f"{'ok' if r['runs'] else '**no**'} | {err} | {', '.join(r['opaque'])} | {r.get('why', '')} |")
    ok = [r for r in rows if r.get("runs") and "error" not in r]
    exact = [r for r in ok if r["equivalence_error"] is not None and r["equivalence_error"] < 1e-6]
    little = [r for r in ok if 1 - r["params"] < LITTLE]
    lines += ["", f"**{len(ok)}/{len(rows)} prune and run; {len(exact)} of them exact (equivalence error < 1e-6) on "
              f"their exact labels; {sum(1 for r in ok if not r['opaque'])} with every op understood; "
              f"{len(ok) - len(little)} remove at least a third of their parameters at 50% uniform.**"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="default: one per timm family")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per model (default 300)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_model(args.child)), flush=True)
        return
    import timm

    names = args.models or families(timm.list_models())
    rows = run_all_isolated(__spec__.name, names, args.jobs, args.timeout, args.json)
    table = markdown(rows)
    print("\n" + table.splitlines()[-1])
    if args.markdown:
        args.markdown.write_text(f"timm {timm.__version__}, from `python -m benchmarks.timm_zoo`\n\n" + table + "\n")


if __name__ == "__main__":
    main()
