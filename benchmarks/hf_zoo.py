"""Hugging Face ``transformers`` architectures passed to PruningIR as they are: build, prune half of every
group, run, check.

    pip install transformers   # not a dependency of the library (the dev install pins it for the tests)
    python -m benchmarks.hf_zoo [--tasks causal-lm image-classification sequence-classification]
                                [--models llama vit ...] [--peer] --json out.json --markdown out.md

For every model type that ``transformers`` maps to a head of a task (``AutoModelForCausalLM``,
``AutoModelForImageClassification``, ``AutoModelForSequenceClassification``), the head's class is built
from its default config shrunk to a tiny model (the sizes in ``TINY`` wherever the config has that
attribute; nested configs too; ``use_cache=False``: a traced graph cannot return a cache object), with
random weights perturbed so that no layer is all zero, in its own process. Inputs: token ids (2, 16) or
images (2, C, S, S) at the config's image size. Columns: IR build seconds, prunable labels and groups, ops
no rule understands (``Snapshot.opaque_ops``), parameters left after pruning the first half of every group,
whether the pruned model runs and returns the original's output class (a ``ModelOutput``), and the
equivalence error of the exact labels (``pruning.verify``, float64; float32 where a kernel has no float64, as
the grouped matmul of mixtures of experts, marked "f32"). A config that cannot be built
shrunk, or a model over ``--max-params`` after shrinking, is listed as skipped, not as a failure of ours.

``--peer`` also prunes every built model with Torch-Pruning 1.6.1 (``pip install -e '.[bench]'``) through
``benchmarks/peer.py``'s adapter, as the torchvision coverage does (magnitude, 50% of every layer, the layers
that output the logits kept), each in a process of its own after ours, and checks it the same way: it runs
and returns its own output class with the logits' shape. ``--ours-from`` takes our rows from an earlier
``--json`` to run only the peer; ``--peer-from`` takes the peer's cells from an earlier ``--peer --json``
(the same transformers) to rerun only ours.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

from .zoo import prune_half_and_check, run_all_isolated


TASKS = {"causal-lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
         "image-classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
         "sequence-classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"}
#: Config attributes set wherever a config has them (integers only; lists of stage sizes keep their defaults).
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256, "max_position_embeddings": 128,
        "n_embd": 64, "n_layer": 2, "n_head": 4, "d_model": 64, "num_layers": 2, "ffn_dim": 128,
        "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
        "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "moe_intermediate_size": 32, "num_experts": 4,
        "num_local_experts": 4, "num_experts_per_tok": 2, "image_size": 32, "patch_size": 8, "num_labels": 10}


def shrunk(config):
    """``config`` with every ``TINY`` attribute it has (as an int) set, in nested configs too."""
    for name, value in vars(config).items():
        if hasattr(value, "to_dict") and hasattr(value, "model_type") and value is not config:
            shrunk(value)
        elif name in TINY and isinstance(value, int) and not isinstance(value, bool):
            setattr(config, name, TINY[name])
    if hasattr(config, "use_cache"):
        config.use_cache = False
    if getattr(config, "pad_token_id", None) is None and hasattr(config, "pad_token_id"):
        config.pad_token_id = 0  # sequence classification of a batch finds each row's last token by it
    return config


def peer_result(model, x, reference) -> dict:
    """Torch-Pruning 1.6.1 on ``model`` (in place) through ``benchmarks/peer.py``'s adapter, as the torchvision
    coverage uses it: magnitude importance, 50% of every layer, the layers that output the logits kept; then
    the same check as ours (it runs and returns its own output class with the logits' shape)."""
    import torch

    from . import peer

    before = sum(p.numel() for p in model.parameters())
    started = time.perf_counter()
    try:
        with torch.enable_grad():
            pruned = peer.prune(model, x, num_classes=reference.logits.shape[-1], ratio=0.5, copy_model=False)
        with torch.no_grad():
            out = pruned(x)
    except Exception as error:  # noqa: BLE001 - the table reports failures
        return {"error": f"{type(error).__name__}: {str(error)[:200]}"}
    result = {"params": sum(p.numel() for p in pruned.parameters()) / before, "seconds": time.perf_counter() - started}
    if type(out) is not type(reference) or out.logits.shape != reference.logits.shape:
        result["error"] = f"returns {type(out).__name__} with logits {tuple(getattr(out, 'logits', out).shape)}"
    return result


def run_model(spec: str, max_params: float, peer: bool = False) -> dict:
    """One model built and checked in this process: pruned by us, or with ``peer`` by Torch-Pruning instead."""
    import torch
    import transformers
    from transformers.models.auto import modeling_auto

    from pruning.verify import perturb

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    task, model_type = spec.split("/")
    class_name = getattr(modeling_auto, TASKS[task])[model_type]
    row: dict = {"model": spec, "class": class_name}
    try:
        config = shrunk(transformers.AutoConfig.for_model(model_type))
        model = getattr(transformers, class_name)(config).eval()
    except Exception as error:  # noqa: BLE001 - a config this generic shrinking cannot build
        row["skipped"] = f"not built: {type(error).__name__}: {str(error)[:160]}"
        return row
    row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    if row["params_m"] > max_params:
        row["skipped"] = f"{row['params_m']:.0f} M parameters after shrinking"
        return row
    if task == "image-classification":
        side = getattr(config, "image_size", 32)
        side = side if isinstance(side, int) else side[0]
        x = torch.randn(2, getattr(config, "num_channels", 3), side, side)
    else:
        x = torch.randint(1, min(getattr(config, "vocab_size", 256) or 256, 256), (2, 16))
    try:
        model = perturb(model)
        with torch.no_grad():
            reference = model(x)
    except Exception as error:  # noqa: BLE001 - the shrunk model itself does not run
        row["skipped"] = f"does not run shrunk: {type(error).__name__}: {str(error)[:160]}"
        return row
    if peer:
        row["peer"] = peer_result(model, x, reference)
        return row
    try:
        prune_half_and_check(model, x, row, lambda out: type(out) is type(reference))
    except Exception as error:  # noqa: BLE001 - the table reports failures
        row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
    return row


def _peer_cells(row: dict) -> str:
    peer = row.get("peer")
    if peer is None:
        return ""
    if "error" in peer:
        return f" **error**: {peer['error'][:80].replace('|', '/').replace(chr(10), ' ')} | |"
    return f" ok | {peer['params']:.2f} |"


def markdown(rows: list[dict]) -> str:
    with_peer = any("peer" in r for r in rows)
    peer_header = " Torch-Pruning | TP params left |" if with_peer else ""
    lines = ["| task/model type | class | M params | labels | groups | build s | params left | runs | equiv. err | "
             "ops no rule understands |" + peer_header, "|---|---|---|---|---|---|---|---|---|---|" + "---|---|" * with_peer]
    for r in rows:
        peer = _peer_cells(r) if with_peer else ""
        if "skipped" in r or "error" in r:
            note = r.get("skipped") or r["error"]
            status = "skipped" if "skipped" in r else "**error**"
            lines.append(f"| {r['model']} | {r.get('class', '')} | | | | | | {status} | | "
                         f"{note[:120].replace('|', '/').replace(chr(10), ' ')} |" + (peer or (" | |" * with_peer)))
            continue
        err = "-" if r["equivalence_error"] is None else f"{r['equivalence_error']:.1e}" + (" (f32)" if r.get("float32") else "")
        lines.append(f"| {r['model']} | {r['class']} | {r['params_m']:.1f} | {r['labels']} | {r['groups']} | "
                     f"{r['build_s']:.2f} | {r['params']:.2f} | {'ok' if r['runs'] else '**no**'} | {err} | "
                     f"{', '.join(r['opaque'])} |" + peer)
    tried = [r for r in rows if "skipped" not in r]
    ok = [r for r in tried if r.get("runs") and "error" not in r]
    exact = [r for r in ok if r["equivalence_error"] is not None and r["equivalence_error"] < (1e-4 if r.get("float32") else 1e-6)]
    lines += ["", f"**{len(ok)}/{len(tried)} built models prune and run, returning their own output class "
              f"({len(rows) - len(tried)} skipped: not buildable by this shrinking, or too large); {len(exact)} of "
              f"them exact (equivalence error < 1e-6) on their exact labels; "
              f"{sum(1 for r in ok if not r['opaque'])} with every op understood.**"]
    if with_peer:
        peer_ok = [r for r in tried if "peer" in r and "error" not in r["peer"]]
        both = [r for r in peer_ok if r in ok]
        lines += ["", f"**Torch-Pruning 1.6.1 (``benchmarks/peer.py``'s adapter, magnitude, 50% of every layer): "
                  f"{len(peer_ok)}/{len(tried)} of the same built models prune and run, returning their own output "
                  f"class.** Where both do ({len(both)}), the median model keeps "
                  f"{statistics.median(r['params'] for r in both) if both else float('nan'):.2f} of its parameters "
                  f"after ours, {statistics.median(r['peer']['params'] for r in both) if both else float('nan'):.2f} "
                  f"after the peer's."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--models", nargs="*", help="model types (llama, vit...); default: every one of each task")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per model (default 300)")
    parser.add_argument("--max-params", type=float, default=200, help="skip models larger than this, in millions")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--peer", action="store_true",
                        help="also prune each built model with Torch-Pruning 1.6.1 (pip install -e '.[bench]')")
    parser.add_argument("--peer-timeout", type=float, default=30,
                        help="seconds per model for the peer (default 30; where it works it takes under a second "
                             "on these tiny models)")
    parser.add_argument("--ours-from", type=Path,
                        help="our rows from this earlier --json (same transformers) instead of running ours again")
    parser.add_argument("--peer-from", type=Path,
                        help="the peer's cells from this earlier --peer --json (same transformers) instead of running "
                             "the peer again")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_model(args.child, args.max_params, args.peer)), flush=True)
        return
    import transformers
    from transformers.models.auto import modeling_auto

    specs = [f"{task}/{model_type}" for task in args.tasks for model_type in getattr(modeling_auto, TASKS[task])
             if not args.models or model_type in args.models]
    if args.ours_from:
        earlier = {row["model"]: row for row in json.loads(args.ours_from.read_text())}
        rows = [earlier[spec] for spec in specs]
    else:
        rows = run_all_isolated(__spec__.name, specs, args.jobs, args.timeout, args.json, "--max-params", str(args.max_params))
    if args.peer:  # in processes of their own, so that the peer's failures and time-outs cannot cost our rows
        built = [row["model"] for row in rows if "skipped" not in row]
        peers = run_all_isolated(__spec__.name, built, args.jobs, args.peer_timeout, None, "--max-params",
                                 str(args.max_params), "--peer")
        for row in rows:
            if "skipped" not in row:
                result = peers[built.index(row["model"])]
                row["peer"] = result.get("peer") or {"error": result.get("error") or result.get("skipped", "")}
    if args.peer_from:
        earlier_peer = {row["model"]: row["peer"] for row in json.loads(args.peer_from.read_text()) if "peer" in row}
        for row in rows:
            if "skipped" not in row and row["model"] in earlier_peer:
                row["peer"] = earlier_peer[row["model"]]
    if (args.peer or args.peer_from) and args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    table = markdown(rows)
    print("\n" + "\n".join(line for line in table.splitlines() if line.startswith("**")))
    if args.markdown:
        args.markdown.write_text(f"transformers {transformers.__version__}, from `python -m benchmarks.hf_zoo`\n\n"
                                 + table + "\n")


if __name__ == "__main__":
    main()
