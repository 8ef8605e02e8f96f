"""pydantic_toast.__version__ and the changelog."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pydantic_toast

ROOT = Path(__file__).resolve().parents[2]


def test_version_is_the_installed_distributions() -> None:
    """__version__ is the version pip installed (pyproject's)."""
    assert pydantic_toast.__version__ == version("pydantic-toast")
    assert f'version = "{pydantic_toast.__version__}"' in (ROOT / "pyproject.toml").read_text()


def test_changelog_has_an_unreleased_section_and_this_version() -> None:
    """CHANGELOG.md keeps an Unreleased section and names the current version."""
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    assert f"## [{pydantic_toast.__version__}]" in text


def test_no_symlinks_in_the_source_tree() -> None:
    """No symlinks in src/ or at the top level (they break wheels built from the sdist)."""
    links = [p for p in [*ROOT.iterdir(), *(ROOT / "src").rglob("*")] if p.is_symlink()]
    assert links == []
