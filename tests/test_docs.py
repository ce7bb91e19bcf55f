"""The README's generated parts agree with what they are generated from."""

from __future__ import annotations

from pathlib import Path

from raytrain import reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_yaml_reference_matches_the_schema():
    """Regenerate with: python -m raytrain.reference README.md"""
    assert reference.section(README.read_text()) == reference.table()


def test_every_public_api_name_is_documented_in_the_readme():
    import raytrain

    text = README.read_text()
    for name in raytrain.__all__:
        assert f"raytrain.{name}" in text or name in ("RunResult", "SearchResult"), name
        assert getattr(raytrain, name) is not None
