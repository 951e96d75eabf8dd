"""The documentation: generated reference pages cover the code, and the README's links lead somewhere.

The site itself is built with ``mkdocs build --strict`` by scripts/docs.sh (a leg of scripts/test.sh);
these tests need no MkDocs: they call the generators of scripts/docs_hooks.py and check the README,
whose links are absolute (they must work on PyPI) and so are not checked by the site build.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

from celery_memguard import events
from celery_memguard.config import DEFAULTS, KEY_DOCS, KEYS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def hooks() -> Any:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_is_documented_in_order() -> None:
    """The configuration reference is generated from config.KEY_DOCS: one entry per key, in the table's order."""
    assert [f"memguard_{name}" for name in KEY_DOCS] == list(KEYS), \
        "describe each memguard_* key in config.KEY_DOCS, in the order of _PARSERS"
    assert all(doc.accepted.strip() and doc.meaning.strip() for doc in KEY_DOCS.values())


def test_config_table_lists_every_key_with_its_option_and_default(hooks: Any) -> None:
    table = hooks.config_table()
    for key in KEYS:
        assert f"`{key}`<br>`--{key.replace('_', '-')}`" in table
    assert table.count("\n|") == len(KEYS) + 1  # the header's rule, then one row per key
    assert hooks.shown_default("soft_limit") == "`None`"
    assert hooks.shown_default("master_growth_threshold") == '`"64MiB"`'
    assert hooks.shown_default("heavy_task_threshold") == '`"10x"`'
    assert hooks.shown_default("metric") == '`"uss"`'
    assert hooks.shown_default("enabled") == "`True`"
    assert set(DEFAULTS) == set(KEY_DOCS)


def test_events_reference_lists_every_event_and_key(hooks: Any) -> None:
    page = hooks.events_reference()
    for name, keys in events.EVENT_KEYS.items():
        section = page.split(f"### `{name}` {{ #{name} }}\n", 1)[1].split("\n### ", 1)[0]
        assert events.EVENT_DOCS[name].split()[0] in section
        for key in (*keys, *events.EXTRA_KEYS.get(name, ())):
            assert f"| `{key}`" in section, (name, key)


def test_cli_help_covers_every_command(hooks: Any) -> None:
    text = hooks.cli_help()
    for command in ("report", "status"):
        assert f"### `celery-memguard {command}`" in text
    assert "--format" in text and "--timeout" in text


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading."""
    text = re.sub(r"[`*]|\{[^}]*\}", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[-\s]+", "-", text).strip("-")


def _anchors(page: Path, hooks: Any) -> set[str]:
    text = page.read_text()
    for marker, generate in hooks.GENERATED.items():
        text = text.replace(marker, generate())
    anchors = {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}
    anchors |= set(re.findall(r"\{\s*#([\w-]+)\s*\}", text))
    return anchors


def readme_links() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"\]\((https?://[^)\s]+)\)", text) + re.findall(r"<(https?://[^>\s]+)>", text)


def test_readme_links_are_absolute_and_lead_somewhere(hooks: Any) -> None:
    """The README is the PyPI page: its links are absolute; links into the site name a page and anchor that
    exist, links into the repository a file that exists (checked offline, like the site's own links)."""
    text = (ROOT / "README.md").read_text()
    relative = [url for url in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"https?://", url)]
    assert relative == [], "README links must be absolute (they are shown on PyPI)"
    pages = hooks.site_pages(DOCS)
    links = readme_links()
    assert any(url.startswith(hooks.SITE_URL) for url in links)
    for url in links:
        assert hooks.check_external(url, pages) is None, url
        if url.startswith(hooks.SITE_URL) and "#" in url:
            page, anchor = url[len(hooks.SITE_URL):].split("#", 1)
            source = DOCS / (page.rstrip("/") + ".md") if page else DOCS / "index.md"
            assert anchor in _anchors(source, hooks), url


def test_readme_image_is_the_shipped_screenshot(hooks: Any) -> None:
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
    assert images and all(url.startswith(hooks.RAW_URL + "/main/docs/") for url in images)
    assert all((ROOT / url.split("/main/", 1)[1]).is_file() for url in images)


@pytest.mark.parametrize("url, problem", [
    ("https://github.com/celery-memguard/celery-memguard/blob/main/docs/nope.md", "not in the repository"),
    ("https://celery-memguard.readthedocs.io/en/latest/nope/", "does not have"),
    ("http:/broken", "well-formed"),
])
def test_bad_external_links_are_reported(hooks: Any, url: str, problem: str) -> None:
    assert problem in (hooks.check_external(url, hooks.site_pages(DOCS)) or "")


def test_site_pages_in_the_nav_exist() -> None:
    """Every page mkdocs.yml's nav names is in docs/ (the stubs other work overwrites included)."""
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[1]
    pages = re.findall(r"(?:^|:\s|-\s)([\w/-]+\.md)\s*$", nav, re.M)
    assert len(pages) > 20
    assert [page for page in pages if not (DOCS / page).is_file()] == []


def _accepts(name: str, value: Any) -> bool:
    from celery_memguard.config import _PARSERS
    from celery_memguard.exceptions import ConfigError

    try:
        _PARSERS[name](f"memguard_{name}", value, 8 << 30)
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("name", list(KEY_DOCS))
def test_documented_accepted_values_match_the_parser(name: str) -> None:
    """What the reference says a key accepts is what its parser accepts: a range "A–B" (both ends in, just
    outside refused), quoted choices (each in, another word refused), `None` when and only when it says so,
    "int ≥ N" (N in, N-1 refused)."""
    accepted = KEY_DOCS[name].accepted
    if name != "policies":
        assert _accepts(name, None) == ("`None`" in accepted), accepted
    for low, high in re.findall(r"(\d+(?:\.\d+)?)–(\d+(?:\.\d+)?)", accepted):
        assert _accepts(name, float(low)) and _accepts(name, float(high)), accepted
        assert not _accepts(name, float(high) * 1.01 + 0.01), accepted
        if float(low) > 0:
            assert not _accepts(name, float(low) * 0.99), accepted
    choices = re.findall(r'`"(\w+)"`', accepted)
    if choices and "size" not in accepted:
        assert all(_accepts(name, choice) for choice in choices) and not _accepts(name, "nonsense"), accepted
    for low in re.findall(r"int ≥ (\d+)", accepted):
        assert _accepts(name, int(low)) and not _accepts(name, int(low) - 1), accepted
    if accepted.startswith("bool"):
        assert _accepts(name, True) and _accepts(name, False) and not _accepts(name, "maybe")
    if accepted.startswith("size"):
        assert _accepts(name, "512MiB") and _accepts(name, "20%") and not _accepts(name, "lots")
