"""Every repository path the README and docs/*.md name exists (issue 17: the docs referred
to files that were not in the repository), and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = r"(?:\.ci|\.github|kvstore|tests|docs|scripts|bench|deploy|proto|requirements)"
PATH = re.compile(rf"(?<![\w./$-])({TOP}/[\w./*-]*[\w*]|Dockerfile|Makefile|pyproject\.toml"
                  r"|docker-compose[\w.-]*\.yml)")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# Directories commands write into (git-ignored): named as outputs, not as files to read.
OUTPUTS = ("bench/out/", "data/", "build/")


def resolves(path: str, doc: Path) -> bool:
    if path.startswith(OUTPUTS):
        return True
    if "*" in path:
        return any(ROOT.glob(path))
    parts = path.split("/")
    for i, part in enumerate(parts):  # a placeholder (TARGET, NAME): its parent must exist
        if i and part.isupper() and part.isidentifier():
            return (ROOT / "/".join(parts[:i])).is_dir()
    if (ROOT / path).exists() or (doc.parent / path).exists():
        return True
    module, _, attr = path.rpartition(".")  # tests/simkit/vtime.VirtualTimeLoop
    return bool(attr[:1].isupper()) and (ROOT / f"{module}.py").exists()


def test_every_path_named_in_the_docs_exists() -> None:
    missing, named = [], 0
    for doc in DOCS:
        text = doc.read_text()
        for match in PATH.finditer(text):
            path = match.group(1).rstrip(".")
            named += 1
            if not resolves(path, doc):
                line = text.count("\n", 0, match.start()) + 1
                missing.append(f"{doc.relative_to(ROOT)}:{line}: {path}")
    assert named > 100, named  # the pattern still finds the docs' paths
    assert not missing, "paths named in the docs that are not in the repository:\n" + \
        "\n".join(missing)


def test_every_relative_link_resolves() -> None:
    broken = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_the_checker_catches_a_missing_path(tmp_path: Path) -> None:
    doc = ROOT / "docs" / "x.md"
    assert not resolves("tests/integration/test_no_such_file.py", doc)
    assert not resolves("kvstore/cli/nope.Thing", doc)
    assert resolves("tests/fuzz/regressions/TARGET", doc)
    assert resolves("tests/simkit/vtime.VirtualTimeLoop", doc)
