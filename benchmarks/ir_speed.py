"""IR build + 50% prune time of one model in fresh processes (what a user's first call costs).

    python -m benchmarks.ir_speed [--model resnet50] [--runs 5]

Each run is a new Python process (imports and model construction are not timed), so no cache of an
earlier run helps; prints every run and the median.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import time, warnings, torch, torchvision
warnings.filterwarnings("ignore")
from pruning import PruningIR
torch.set_num_threads({threads})
model = torchvision.models.get_model({model!r}).eval()
x = torch.randn(1, 3, 224, 224)
started = time.perf_counter()
ir = PruningIR(model, example_input=x)
built = time.perf_counter()
ir.prune(labels=[label for group in ir.snapshot().groups for label in group[: len(group) // 2]])
print(built - started, time.perf_counter() - built)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    totals = []
    for run in range(args.runs):
        out = subprocess.run([sys.executable, "-c", CHILD.format(model=args.model, threads=args.threads)],
                             cwd=root, env={"PYTHONPATH": str(root)}, capture_output=True, text=True, check=True)
        build, prune = map(float, out.stdout.split())
        totals.append(build + prune)
        print(f"run {run + 1}: build {build:.3f} s, prune {prune:.3f} s, total {build + prune:.3f} s")
    print(f"{args.model}: median build + prune {statistics.median(totals):.3f} s over {args.runs} fresh processes")


if __name__ == "__main__":
    main()
