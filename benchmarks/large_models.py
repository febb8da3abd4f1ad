"""Time and peak memory of PruningIR build and prune against model size, for a ladder of large models.

    python -m benchmarks.large_models [--models resnet50 vit_h_14 bert-large ...] [--markdown out.md]

Each model runs in its own subprocess (so high-water marks do not carry over): random weights (no download),
IR built from one example input, then 50% of every group pruned (uniform selection on random scores). Peak
memory is the process RSS high-water mark (getrusage) minus the RSS before the model was created, so it
counts the model itself plus everything build and prune allocate; the budget is about 2x the model's own
size (parameters and buffers).
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from pruning import PruningIR, UniformLabelSelector

ROOT = Path(__file__).resolve().parents[1]
VISION = ["resnet50", "vit_l_16", "regnet_y_32gf", "vit_h_14", "regnet_y_128gf"]
BERT = {  # transformers BertConfig sizes (random weights)
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "bert-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
}
LLAMA = {  # transformers LlamaConfig sizes (random weights): TinyLlama-1.1B's shape
    "llama-1.1b": {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                   "num_attention_heads": 32, "num_key_value_heads": 4},
}
LADDER = ["resnet50", "bert-base", "bert-large", "vit_l_16", "llama-1.1b", "regnet_y_32gf", "vit_h_14", "regnet_y_128gf"]
BUDGET = 2.0


class BertEncoder(nn.Module):
    """BertModel behind a plain forward(input_ids) -> last_hidden_state (HF's decorated forward does not trace)."""

    def __init__(self, **config: int) -> None:
        super().__init__()
        self.bert = BertModel(BertConfig(**config), add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids).last_hidden_state


class LlamaLogits(nn.Module):
    """LlamaForCausalLM behind a plain forward(input_ids) -> logits, without a cache (as BertEncoder)."""

    def __init__(self, **config: int) -> None:
        super().__init__()
        self.lm = LlamaForCausalLM(LlamaConfig(**config, use_cache=False))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


def rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    if name in BERT:
        return BertEncoder(**BERT[name]).eval(), torch.randint(0, 30000, (1, 16))
    if name in LLAMA:  # batch 2: the mask code branches on batch size 1 (see pruning.tracing.sizes)
        return LlamaLogits(**LLAMA[name]).eval(), torch.randint(0, 32000, (2, 16))
    return torchvision.models.get_model(name).eval(), torch.randn(1, 3, 224, 224)


def measure(name: str) -> dict:
    """One model in this process: sizes in bytes, times in seconds."""
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    gc.collect()
    base = current_rss_bytes()
    model, example = build(name)
    model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    started = time.perf_counter()
    ir = PruningIR(model, example_input=example)
    build_s = time.perf_counter() - started
    build_peak = rss_peak_bytes() - base
    snapshot = ir.snapshot()
    snapshot.scores = torch.rand(snapshot.num_labels, dtype=torch.float64)
    labels = UniformLabelSelector(0.5).select(ir)
    started = time.perf_counter()
    pruned = ir.prune(labels=labels)
    prune_s = time.perf_counter() - started
    pruned_bytes = sum(t.numel() * t.element_size() for t in pruned.model.state_dict().values())
    return {"model": name, "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "model_GB": model_bytes / 1e9,
            "build_s": build_s, "prune_s": prune_s, "build_peak_GB": build_peak / 1e9,
            "peak_GB": (rss_peak_bytes() - base) / 1e9, "pruned_GB": pruned_bytes / 1e9}


def run_isolated(name: str, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, "-m", __spec__.name, "--one", name], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=False)
    if proc.returncode != 0:
        return {"model": name, "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict]) -> str:
    lines = ["| model | params | size | IR build | prune | peak (build) | peak (build+prune) | peak / size |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} |||||||")
            continue
        ratio = r["peak_GB"] / r["model_GB"]
        flag = "" if ratio <= BUDGET else " (over 2x)"
        lines.append(f"| {r['model']} | {r['params_M']:.0f} M | {r['model_GB']:.2f} GB | {r['build_s']:.1f} s | "
                     f"{r['prune_s']:.1f} s | {r['build_peak_GB']:.2f} GB | {r['peak_GB']:.2f} GB | {ratio:.2f}x{flag} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=LADDER, choices=LADDER)
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per model")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    rows = []
    for name in args.models:
        rows.append(run_isolated(name, args.timeout))
        print(json.dumps(rows[-1]), flush=True)
    table = markdown(rows)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
