"""MkDocs hooks (``hooks:`` in mkdocs.yml): the reference pages generated from the package, and link checks.

The configuration, events and command-line references are written here, while the site builds, from
the one place each is defined, so the site cannot drift from the code:

* ``<!-- memguard:config-table -->``: every ``memguard_*`` key from :mod:`celery_memguard.config`
  (``KEYS``, ``DEFAULTS``, ``KEY_DOCS``) and the ``celery worker`` option generated from it;
* ``<!-- memguard:events -->``: every event of :mod:`celery_memguard.events` (``EVENT_KEYS``,
  ``EVENT_DOCS``, ``EXTRA_KEYS``, ``KEY_DOCS``, ``EVENT_KEY_DOCS``);
* ``<!-- memguard:cli-help -->``: the ``--help`` of every ``memguard`` command, from click.

External links cannot be fetched (CI has no network). Each is checked for form (``http(s)://host``);
a link into this repository on GitHub (``.../blob/main/PATH``) must name a file of the checkout; a link
into this site (``SITE_URL...``) must name one of its pages. Every problem is a warning, which
``mkdocs build --strict`` turns into a failed build.

Docstrings are written for Sphinx (``:class:`X```); their roles are rendered as plain code here.

The generators are plain functions (``config_table()``, ``events_reference()``, ``cli_help()``) that
tests call too (tests/unit/test_docs.py).
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the package from this checkout, whichever venv builds the site
    sys.path.insert(0, str(ROOT))

SITE_URL = "https://celery-memguard.readthedocs.io/en/latest/"
REPO_URL = "https://github.com/celery-memguard/celery-memguard"
RAW_URL = "https://raw.githubusercontent.com/celery-memguard/celery-memguard"

log = logging.getLogger("mkdocs.hooks.memguard")


# -- generated reference pages ------------------------------------------------------------------------

def _cell(text: str) -> str:
    """``text`` fit for one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def shown_default(name: str) -> str:
    """A setting's default as a user would write it in ``app.conf`` (sizes as ``"64MiB"``)."""
    from celery_memguard.config import DEFAULTS, KEY_DOCS
    from celery_memguard.units import MiB

    default = DEFAULTS[name]
    is_size = "size" in KEY_DOCS[name].accepted
    if isinstance(default, tuple) and len(default) == 2 and name == "heavy_task_threshold":
        size, multiple = default
        return f'`"{multiple:g}x"`' if multiple is not None else ("`None`" if size is None else f'`"{size // MiB}MiB"`')
    if is_size and isinstance(default, int) and not isinstance(default, bool) and default % MiB == 0:
        return f'`"{default // MiB}MiB"`'
    if isinstance(default, float) and default.is_integer():
        return f"`{default:g}`" if default >= 10 else f"`{default}`"
    return f"`{default!r}`".replace("'", '"')


def config_table() -> str:
    """Every ``memguard_*`` key: default, accepted values, what it does, and its worker option."""
    from celery_memguard.config import KEY_DOCS, KEYS
    from celery_memguard.worker.options import option_name

    rows = ["| key | default | accepted | meaning |", "|---|---|---|---|"]
    for key in KEYS:
        name = key[len("memguard_"):]
        doc = KEY_DOCS[name]
        rows.append(f"| `{key}`<br>`{option_name(key)}` {{ #{key} }} | {shown_default(name)} | {_cell(doc.accepted)} "
                    f"| {_cell(doc.meaning)} |")
    return "\n".join(rows) + "\n"


def events_reference() -> str:
    """One section per event: when it is logged, its keys and what each means."""
    from celery_memguard import events

    parts: list[str] = []
    for name, keys in events.EVENT_KEYS.items():
        parts.append(f"### `{name}` {{ #{name} }}\n\n{events.EVENT_DOCS[name]}\n")
        rows = ["| key | meaning |", "|---|---|"]
        for key in keys:
            rows.append(f"| `{key}` | {_cell(events.key_doc(name, key))} |")
        extra = events.EXTRA_KEYS.get(name, ())
        for key in extra:
            rows.append(f"| `{key}` (some carry) | {_cell(events.key_doc(name, key))} |")
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def cli_help(width: int = 100) -> str:
    """The ``--help`` of the ``memguard`` group and each of its commands, as click prints them."""
    import click

    from celery_memguard.cli import PROG, memguard

    parts: list[str] = []
    root = click.Context(memguard, info_name=PROG, terminal_width=width, max_content_width=width)
    parts.append(f"### `{PROG}`\n\n```text\n{memguard.get_help(root)}\n```\n")
    for name in sorted(memguard.list_commands(root)):
        command = memguard.get_command(root, name)
        assert command is not None
        ctx = click.Context(command, info_name=name, parent=root, terminal_width=width, max_content_width=width)
        parts.append(f"### `{PROG} {name}`\n\n```text\n{command.get_help(ctx)}\n```\n")
    return "\n".join(parts)


GENERATED = {
    "<!-- memguard:config-table -->": config_table,
    "<!-- memguard:events -->": events_reference,
    "<!-- memguard:cli-help -->": cli_help,
}


# -- external links -----------------------------------------------------------------------------------

_LINK = re.compile(r"\]\((?P<url>https?://[^)\s]+)(?:\s+\"[^\"]*\")?\)|<(?P<auto>https?://[^>\s]+)>"
                   r"|^\s*\[[^\]]+\]:\s*(?P<ref>https?://\S+)", re.M)


def site_pages(docs_dir: Path) -> set[str]:
    """The site's page URLs relative to :data:`SITE_URL` (``""``, ``"tuning/"``, ``"recipes/django/"``...)."""
    pages = set()
    for md in docs_dir.rglob("*.md"):
        rel = md.relative_to(docs_dir).with_suffix("").as_posix()
        pages.add("" if rel == "index" else rel[: -len("index")] if rel.endswith("/index") else rel + "/")
    return pages


def check_external(url: str, pages: set[str]) -> str | None:
    """What is wrong with external link ``url`` (checked offline), or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or " " in url or "." not in parts.netloc:
        return "is not a well-formed http(s) URL"
    if url.startswith(REPO_URL + "/blob/") or url.startswith(REPO_URL + "/tree/") or url.startswith(RAW_URL + "/"):
        path = parts.path.split("/", 5)[-1] if not url.startswith(RAW_URL) else parts.path.split("/", 4)[-1]
        if not (ROOT / path).exists():
            return f"names {path}, which is not in the repository"
    if url.startswith(SITE_URL):
        page = url[len(SITE_URL):].split("#", 1)[0]
        if page not in pages:
            return f"names the page {page or '(home)'!r}, which the site does not have"
    return None


# -- mkdocs events ------------------------------------------------------------------------------------

def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    for marker, generate in GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    pages = site_pages(Path(config["docs_dir"]))
    for match in _LINK.finditer(markdown):
        url = match.group("url") or match.group("auto") or match.group("ref")
        problem = check_external(url, pages)
        if problem:
            log.warning("Doc file '%s' links to %s, which %s", page.file.src_uri, url, problem)
    return markdown


_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):<code>(~?)([^<]*)</code>")


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    # Sphinx roles in docstrings (":class:`~pkg.mod.Name`") as plain code ("Name"; without "~" the whole path),
    # and a literal block's "::" introduction as one colon.
    html = _ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)
    return html.replace('::</p>\n<div class="highlight">', ':</p>\n<div class="highlight">')
