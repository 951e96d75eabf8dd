"""The worker's ``--memguard-*`` command-line options, generated from the settings table.

Every ``memguard_<name>`` setting (:data:`celery_memguard.config.KEYS`) is also an
option ``--memguard-<name>`` of ``celery worker`` (and of the workers ``celery
multi`` starts, which passes options through), like Celery's own
``--max-memory-per-child``::

    celery -A proj worker --memguard-soft-limit 400MiB --memguard-hard-limit 1GiB

An option given on the command line overrides ``app.conf`` and is validated by
the same parser as the setting, so a bad value stops the worker with the same
one-line ``Error:``. Every option takes a value as the setting would be written
in a string (``400MiB``, ``20%``, ``10x``, ``2.5``, ``json``); ``none`` sets an
optional setting to None (e.g. ``--memguard-hard-limit none`` lifts a hard limit
set in ``app.conf``); a boolean option alone means true (``--memguard-dry-run``),
or takes ``yes``/``no``.

The options are added to Celery's ``worker`` command when this module is
imported under Celery's command line (the app module importing
``celery_memguard.MemGuard`` is enough, as is Celery loading the ``celery
memguard`` command): Celery then hands their values to every worker bootstep as
keyword arguments, where :class:`~celery_memguard.worker.bootstep.MemGuard`
reads them with :func:`overrides_from`. Nothing here is a second list of
settings: names, defaults and parsing all come from :mod:`celery_memguard.config`.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

import click

from ..config import _PARSERS, DEFAULTS, KEYS
from ..exceptions import ConfigError
from ..units import MiB


__all__ = ["HELP_GROUP", "option_name", "worker_options", "register", "overrides_from"]

#: The heading the options are listed under in ``celery worker --help``.
HELP_GROUP = "MemGuard Options"
#: The value that sets an optional setting to None on the command line.
NONE = "none"


def option_name(key: str) -> str:
    """``memguard_soft_limit`` -> ``--memguard-soft-limit``."""
    return "--" + key.replace("_", "-")


def _is_bool(name: str) -> bool:
    return isinstance(DEFAULTS[name], bool)


def _accepts_none(name: str) -> bool:
    try:
        _PARSERS[name]("memguard_" + name, None, 0)
    except ConfigError:
        return False
    return True


def _shown(default: Any) -> str:
    """A default as a user would write it (sizes in MiB)."""
    if default is None:
        return "none"
    if isinstance(default, bool):
        return "yes" if default else "no"
    if isinstance(default, int) and default >= MiB and default % MiB == 0:
        return f"{default // MiB}MiB"
    if isinstance(default, tuple):
        size, multiple = (default + (None, None))[:2] if len(default) == 2 else (None, None)
        if multiple is not None:
            return f"{multiple:g}x"
        return "none" if size is None else _shown(size)
    return str(default)


def worker_options() -> list[click.Option]:
    """One click option per ``memguard_*`` setting, in the settings table's order."""
    try:
        from celery.bin.base import CeleryOption

        option_cls: type[click.Option] = CeleryOption
        extra: dict[str, Any] = {"help_group": HELP_GROUP}
    except Exception:  # pragma: no cover - a Celery without help groups
        option_cls, extra = click.Option, {}
    options: list[click.Option] = []
    for key in KEYS:
        name = key[len("memguard_"):]
        shown = _shown(DEFAULTS[name])
        help_text = f"Overrides app.conf.{key} (default {shown})."
        if _accepts_none(name):
            help_text += f" '{NONE}' sets it to None."
        kwargs: dict[str, Any] = {"default": None, "help": help_text, **extra}
        if _is_bool(name):
            kwargs.update(is_flag=False, flag_value="true", metavar="[yes|no]")
        else:
            kwargs.update(metavar="VALUE")
        options.append(option_cls([option_name(key)], **kwargs))
    return options


def register(command: click.Command | None = None) -> bool:
    """Add the options to ``command`` (default: Celery's ``worker`` command, if Celery's CLI is loaded).

    Idempotent; returns whether the options are on the command afterwards.
    """
    if command is None:
        module = sys.modules.get("celery.bin.worker")
        command = getattr(module, "worker", None)
        if not isinstance(command, click.Command):
            return False
    present = {opt for param in command.params for opt in getattr(param, "opts", ())}
    if option_name(KEYS[0]) in present:
        return True
    command.params.extend(opt for opt in worker_options() if not set(opt.opts) & present)
    return True


def overrides_from(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``memguard_*`` values given on the command line (absent options are left out), ready for
    :meth:`~celery_memguard.config.MemGuardConfig.from_mapping`'s ``overrides``."""
    given: dict[str, Any] = {}
    for key in KEYS:
        value = kwargs.get(key)
        if value is None:
            continue
        if isinstance(value, str) and value.strip().lower() == NONE and _accepts_none(key[len("memguard_"):]):
            value = None
        given[key] = value
    return given
