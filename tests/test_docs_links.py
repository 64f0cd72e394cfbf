"""Every document a reader is sent to exists: ``docs/...`` paths cited anywhere in the tracked files, and the
relative links of the Markdown files, resolve to files in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {
    ".py",
    ".md",
    ".txt",
    ".sh",
    ".yaml",
    ".yml",
    ".toml",
    ".html",
    ".js",
    ".css",
    ".cfg",
    ".lua",
}
TEXT_NAMES = {"Makefile", "Dockerfile", ".dockerignore"}
# "docs/..." as a repository path: not part of a URL or of a longer path ("site/docs/x", "https://.../docs/x").
DOCS_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]*[\w]")
MISSING = "docs/" + "no-such-page.md"  # built, so that this file itself cites no missing document
MD_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def _tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    files = [ROOT / p for p in out.decode().split("\0") if p]
    return [f for f in files if f.is_file() and (f.suffix in TEXT_SUFFIXES or f.name in TEXT_NAMES)]


def _docs_references(path: Path) -> list[tuple[int, str]]:
    refs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        for match in DOCS_PATH.finditer(line):
            ref = match.group(0).rstrip(".")
            if line[match.end() : match.end() + 1] in (
                "{",
                "*",
            ):  # a template or glob: docs/shots/demo_{name}.png
                continue
            refs.append((lineno, ref))
    return refs


def _markdown_links(path: Path) -> list[tuple[int, str]]:
    links = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for match in MD_LINK.finditer(line):
            target = match.group(1)
            if "://" in target or target.startswith(("mailto:", "/")):
                continue
            links.append((lineno, target))
    return links


def test_cited_docs_paths_exist() -> None:
    missing = [
        f"{f.relative_to(ROOT)}:{lineno}: {ref}"
        for f in _tracked_files()
        for lineno, ref in _docs_references(f)
        if not (ROOT / ref).exists()
    ]
    assert not missing, "documents cited but not in the repository:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    "markdown", sorted(p.relative_to(ROOT).as_posix() for p in _tracked_files() if p.suffix == ".md")
)
def test_markdown_relative_links_resolve(markdown: str) -> None:
    path = ROOT / markdown
    broken = [
        f"{markdown}:{lineno}: {target}"
        for lineno, target in _markdown_links(path)
        if not (path.parent / target).exists()
    ]
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_the_checker_finds_a_missing_document(tmp_path: Path) -> None:
    """The scanner itself: a cited path that does not exist is reported, URLs and templates are not."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        f'"""See {MISSING} and docs/architecture.md."""\n'
        'URL = "https://example.org/docs/ignored.md"\n'
        'SHOT = f"docs/screenshots/demo_{name}.png"  # or docs/screenshots/demo_*.png\n'
    )
    refs = [ref for _, ref in _docs_references(sample)]
    assert refs == [MISSING, "docs/architecture.md"]
    assert not (ROOT / refs[0]).exists() and (ROOT / refs[1]).exists()
