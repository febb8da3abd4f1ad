"""The documentation: the site builds with --strict (so a broken link, a missing anchor or a docstring
cross-reference to an object that no longer exists fails), the README's links resolve, and its example runs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def readme_links(text: str) -> list[str]:
    """The relative link targets of a Markdown text, without their anchors (web links and pure anchors left out)."""
    targets = [match.group(1) for match in _LINK.finditer(text)]
    return [target.partition("#")[0] for target in targets
            if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", target)]


def test_the_site_builds_strictly_with_the_api_reference_and_the_benchmark_tables(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (site / "reference" / "ir" / "index.html").read_text()
    assert 'id="pruning.ir.PruningIR.prune"' in reference  # rendered from the docstrings
    assert (site / "benchmarks" / "torch-pruning" / "index.html").exists()  # BENCHMARKS.md, published by the hook
    assert (site / "benchmarks" / "zoo" / "index.html").exists()  # benchmarks/zoo.md
    assert "fonts.googleapis.com" not in (site / "index.html").read_text()  # renders offline


def test_every_relative_link_in_the_readme_resolves():
    targets = readme_links(README.read_text())
    assert targets, "the README links into the documentation"
    missing = [target for target in targets if not (README.parent / target).exists()]
    assert missing == [], f"README.md links to files that do not exist: {missing}"


def test_the_link_check_sees_a_broken_link():
    links = readme_links("[a](docs/index.md#x) [b](https://example.org) [c](#top) ![d](docs/img/nope.png)")
    assert links == ["docs/index.md", "docs/img/nope.png"]


def test_the_readme_example_runs_and_meets_its_target():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL).group(1)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    model, pruned, macs, batches = (namespace[name] for name in ("model", "pruned", "macs", "batches"))
    assert macs(pruned) <= 0.5 * macs(model)
    assert pruned(batches[0][0]).shape == (8, 10)


def test_the_adding_a_rule_page_s_rule_and_its_test_run_as_written():
    """The worked example of docs/adding-a-rule.md: its module and rule, then its test (which gives the rule to one
    IR with ``rules=``); the global registration block is left out so the registry stays as it is."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "adding-a-rule.md").read_text(), re.DOTALL)
    rule, test = blocks[0], blocks[-1]
    assert "class ScaledGELURule(Rule)" in rule and "def test_scaled_gelu_prunes_with_its_rule" in test
    namespace: dict = {}
    exec(compile(rule + "\n" + test, "docs/adding-a-rule.md", "exec"), namespace)
    torch.manual_seed(0)
    namespace["test_scaled_gelu_prunes_with_its_rule"]()
