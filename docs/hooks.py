"""MkDocs hook: publish the benchmark results that live outside ``docs/`` as pages of the site.

``BENCHMARKS.md`` and ``benchmarks/*.md`` are written by the benchmark scripts and stay where they are (one
copy); this hook adds them to the site under ``benchmarks/`` and rewrites their relative links (written
from the repository root) to the pages and images they name, so a link to a file that does not exist still
fails ``mkdocs build --strict``.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent

_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def _published(root: Path) -> dict[str, str]:
    """Repository path -> site path of every published file."""
    published = {"BENCHMARKS.md": "benchmarks/torch-pruning.md"}
    for pattern in ("benchmarks/*.md", "benchmarks/figures/*.png"):
        for path in sorted(root.glob(pattern)):
            relative = path.relative_to(root).as_posix()
            published[relative] = relative
    return published


def _rewrite(text: str, source: str, target: str, published: dict[str, str]) -> str:
    """Links of ``source`` (a repository path) re-aimed from the page it becomes, ``target``."""

    def aim(match: re.Match) -> str:
        link = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", link):
            return match.group(0)
        path, _, anchor = link.partition("#")
        in_repo = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
        if in_repo not in published:
            return match.group(0)  # left as written: MkDocs reports it if it leads nowhere
        new = posixpath.relpath(published[in_repo], posixpath.dirname(target))
        return f"{match.group(1)}{new}{'#' + anchor if anchor else ''}{match.group(3)}"

    return _LINK.sub(aim, text)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    published = _published(ROOT)
    for source, target in published.items():
        if files.get_file_from_path(target) is not None:
            raise ValueError(f"docs/{target} would hide {source}: rename the page in docs/")
        if source.endswith(".md"):
            text = _rewrite((ROOT / source).read_text(encoding="utf-8"), source, target, published)
            files.append(File.generated(config, target, content=text))
        else:
            files.append(File.generated(config, target, abs_src_path=str(ROOT / source)))
    return files
