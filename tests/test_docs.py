"""The docs a user reads hold together: the README stays short and keeps its two commands, every link and every
repository path named resolves inside the repository, nothing points at this machine, and the generated parts
(docs/configuration.md from the schema, bench/README.md's table from bench/results) are fresh. No Ray."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from raytrain import reference

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# A repository path named in backticks: a known top folder, then a path with no placeholder or wildcard in it.
PATH = re.compile(r"`((?:raytrain|tests|bench|experiments|search|clusters|docs|\.ci)/[\w./-]*\w)`")
OUTSIDE = ["../shared", "/work/", "closing note", ".device/"]


def _prose(text: str) -> str:
    """The text outside fenced code blocks (a link in code is not a link)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", _prose(md.read_text()), flags=re.M)}


def _name(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_configuration_reference_matches_the_schema():
    """Regenerate with: make docs (python -m raytrain.reference)"""
    page = ROOT / "docs" / "configuration.md"
    assert page.read_text() == reference.page(), "docs/configuration.md is stale: run make docs"


def test_the_reference_documents_every_key_of_the_schema():
    from raytrain.config import Experiment
    from raytrain.tuner.spec import SearchConfig

    sections = {n for n, f in Experiment.model_fields.items() if reference._model_in(f.annotation)}  # headings
    keys = {k for k, *_ in reference.rows(Experiment) if k not in sections}
    keys |= {f"search.{k}" for k, *_ in reference.rows(SearchConfig)}
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert {"data.val_path", "train.early_stopping.target", "search.asha.grace_s", "search.budget.wall_s"} <= keys
    missing = [k for k in keys if f"| `{k}` |" not in page]
    assert not missing, missing
    undocumented = [k for m in (Experiment, SearchConfig) for k, _, _, meaning in reference.rows(m) if not meaning]
    assert not undocumented, f"schema keys without a docstring: {undocumented}"


def test_bench_readme_table_is_what_bench_writes():
    """Regenerate with: python -m bench --table"""
    from bench.__main__ import END, START, table

    text = (ROOT / "bench" / "README.md").read_text()
    assert text.split(START, 1)[1].split(END, 1)[0].strip() == table()


def test_readme_is_short_and_keeps_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    two = text.split("## Two commands", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert two.split("\n")[:2] == ["make demo", "make test"], two
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("md", DOCS, ids=_name)
def test_links_resolve_inside_the_repository(md: Path):
    bad = []
    for target in LINK.findall(_prose(md.read_text())):
        path, _, anchor = target.partition("#")
        if re.match(r"^[a-z][a-z0-9+.-]*:", path) or path.startswith("/"):
            bad.append(f"{target}: points outside the repository")
            continue
        dest = (md.parent / path).resolve() if path else md
        if not dest.is_relative_to(ROOT) or not dest.exists():
            bad.append(f"{target}: no such file in the repository")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {_name(dest)}")
    assert not bad, f"{_name(md)}: {bad}"


@pytest.mark.parametrize("md", DOCS, ids=_name)
def test_paths_named_exist_and_nothing_points_outside(md: Path):
    text = md.read_text()
    outside = [s for s in OUTSIDE if s in text]
    assert not outside, f"{_name(md)} points outside the repository: {outside}"
    missing = [p for p in PATH.findall(text) if not (ROOT / p).exists()]
    # any module named, alone or with its folders (`hosts.py`, `tuner/spec.py`): some file of the repository
    sources = [str(p.relative_to(ROOT)) for d in ("raytrain", "tests", "bench") for p in (ROOT / d).rglob("*.py")]
    missing += [m for m in set(re.findall(r"(?<![\w/.])([\w/]+\.py)\b", text))
                if not any(s == m or s.endswith(f"/{m}") for s in sources)]
    assert not missing, f"{_name(md)} names paths the repository lacks: {missing}"


def test_every_public_api_name_is_documented_in_the_readme():
    import raytrain

    text = README.read_text()
    for name in raytrain.__all__:
        assert f"raytrain.{name}" in text or name in ("RunResult", "SearchResult"), name
        assert getattr(raytrain, name) is not None
