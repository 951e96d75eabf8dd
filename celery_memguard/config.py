"""Frozen MemGuard settings, read from ``app.conf`` and validated once at worker start.

Every ``memguard_*`` key is parsed and checked here, so that a bad value stops the
worker before it consumes a single message, with an error naming the key, the
value and what is accepted. Nothing else in the package reads ``app.conf``.

Sizes accept an int (bytes) or a string: ``"512MiB"``, ``"1.5GB"``, ``"800k"``,
``"20%"`` (of the effective memory: the smaller of physical memory and the
cgroup limit, see :mod:`celery_memguard.probes.system`).
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, NamedTuple

from .exceptions import ConfigError
from .units import MiB

__all__ = ["MemGuardConfig", "parse_size", "key_name", "conf_keys", "DEFAULTS", "KEYS", "KEY_DOCS", "KeyDoc"]


_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z%]*)\s*$")
SIZE_ACCEPTED = (
    'an int (bytes), a string like "512MiB", "1.5GB", "800k" '
    '(units B, k/KiB, KB, M/MiB, MB, G/GiB, GB, T/TiB, TB) '
    'or a percentage of effective memory like "20%"'
)
#: The largest size any key accepts (8 PiB): beyond it no process's memory can be measured or compared, and
#: the shared board (signed 64-bit fields) and the events (float MiB) could not carry it.
MAX_SIZE = 2**53
#: Hysteresis of the intake pause: intake resumes once available memory is this fraction of
#: ``memguard_pause_below`` above it (and the pool total this fraction of ``memguard_pause_pool_above`` below it).
PAUSE_RESUME_MARGIN = 0.25
#: The largest count (tasks, strikes, recycles per minute) any key accepts: exact as a float, far beyond use.
MAX_COUNT = 10**15
#: The largest multiple of a typical task's peak that ``memguard_heavy_task_threshold`` accepts.
MAX_MULTIPLE = 1_000_000.0


def parse_size(key: str, value: Any, effective_memory: int) -> int:
    """Return ``value`` as a positive number of bytes, or raise :class:`ConfigError`.

    ``effective_memory`` is what a percentage refers to.
    """
    if isinstance(value, bool):
        raise ConfigError(key, value, SIZE_ACCEPTED)
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(key, value, SIZE_ACCEPTED + "; it must be > 0")
        return _bounded_size(key, value)
    if isinstance(value, float):
        if not math.isfinite(value) or value < 1:
            raise ConfigError(key, value, SIZE_ACCEPTED + "; it must be at least 1 byte")
        return _bounded_size(key, value)
    if not isinstance(value, str):
        raise ConfigError(key, value, SIZE_ACCEPTED)
    match = _SIZE_RE.match(value)
    if not match:
        raise ConfigError(key, value, SIZE_ACCEPTED)
    number, unit = float(match.group(1)), match.group(2).lower()
    if unit == "%":
        if not 0 < number <= 100:
            raise ConfigError(key, value, "a percentage in (0%, 100%]")
        size = int(effective_memory * number / 100)
        if size < 1:
            raise ConfigError(key, value, "a percentage of effective memory that is at least 1 byte")
        return size
    if unit not in _UNITS:
        raise ConfigError(key, value, SIZE_ACCEPTED)
    size = number * _UNITS[unit]  # a float: "9" * 400 digits is inf here, refused below like any huge size
    if size < 1:
        raise ConfigError(key, value, SIZE_ACCEPTED + "; it must be at least 1 byte")
    return _bounded_size(key, value, size)


def _bounded_size(key: str, value: Any, size: float | int | None = None) -> int:
    """``size`` (default ``value``) as an int of bytes, refused above :data:`MAX_SIZE` (and when not finite)."""
    size = value if size is None else size
    if not size <= MAX_SIZE:  # also catches NaN and inf; an int of any length compares without overflow
        raise ConfigError(key, value, SIZE_ACCEPTED + "; at most 8 PiB")
    return int(size)


def _optional_size(key: str, value: Any, effective_memory: int) -> int | None:
    if value is None:
        return None
    return parse_size(key, value, effective_memory)


def _choice(*choices: str) -> Callable[[str, Any, int], str]:
    def parse(key: str, value: Any, _mem: int) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise ConfigError(key, value, "one of " + ", ".join(repr(c) for c in choices))
        return value.lower()

    return parse


def _number(low: float, high: float, noun: str, *, optional: bool) -> Callable[[str, Any, int], Any]:
    """A parser for a finite number (or numeric string) in ``[low, high]``, optionally ``None``."""
    accepted = f"{noun} in [{low}, {high}]" + (" or None" if optional else "")

    def parse(key: str, value: Any, _mem: int) -> float | None:
        if value is None and optional:
            return None
        number: Any = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(key, value, accepted) from None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ConfigError(key, value, accepted)
        if not low <= number <= high:  # NaN fails too; an int of any size compares without overflow
            raise ConfigError(key, value, accepted)  # the value as configured, not as converted
        return float(number)

    return parse


def _seconds(minimum: float, maximum: float) -> Callable[[str, Any, int], Any]:
    return _number(minimum, maximum, "a number of seconds", optional=False)


def _optional_seconds(minimum: float, maximum: float) -> Callable[[str, Any, int], Any]:
    return _number(minimum, maximum, "a number of seconds", optional=True)


def _fraction(low: float, high: float, optional: bool) -> Callable[[str, Any, int], Any]:
    return _number(low, high, "a number", optional=optional)


_MULTIPLE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[xX]\s*$")


def _size_or_multiple(key: str, value: Any, effective_memory: int) -> tuple[int | None, float | None]:
    """``None``, a size, or ``"10x"`` (a multiple of the typical task's own peak)."""
    if value is None:
        return (None, None)
    if isinstance(value, str):
        match = _MULTIPLE_RE.match(value)
        if match:
            multiple = float(match.group(1))
            if not 1 < multiple <= MAX_MULTIPLE:
                raise ConfigError(key, value, f'a multiple above 1 and at most {MAX_MULTIPLE:.0f}, like "10x"')
            return (None, multiple)
    try:
        return (parse_size(key, value, effective_memory), None)
    except ConfigError:
        raise ConfigError(key, value, 'None, a multiple of the typical task peak like "10x", or ' + SIZE_ACCEPTED) from None


def _count(minimum: int, optional: bool) -> Callable[[str, Any, int], int | None]:
    accepted = f"a whole number in [{minimum}, {MAX_COUNT}]" + (" or None" if optional else "")

    def parse(key: str, value: Any, _mem: int) -> int | None:
        if value is None and optional:
            return None
        number: Any = value
        text = value.strip() if isinstance(value, str) else ""
        if text.isascii() and text.isdigit() and len(text) <= 16:
            number = int(text)
        if isinstance(number, bool) or not isinstance(number, int) or not minimum <= number <= MAX_COUNT:
            raise ConfigError(key, value, accepted)
        return int(number)

    return parse


def _policy_paths(key: str, value: Any, _mem: int) -> tuple[Any, ...]:
    accepted = 'a list of policy classes or dotted paths ("package.module:Class")'
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(key, value, accepted)
    for entry in value:
        if not (isinstance(entry, (str, type)) or callable(getattr(entry, "check", None))
                or callable(getattr(entry, "check_pool", None))):
            raise ConfigError(key, value, accepted)
    return tuple(value)


def _bool(key: str, value: Any, _mem: int) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(key, value, 'True or False (or "true"/"false", "yes"/"no", "1"/"0")')


def _optional_path(key: str, value: Any, _mem: int) -> str | None:
    if value is None or (isinstance(value, str) and value.strip() and "\x00" not in value):
        return value
    raise ConfigError(key, value, "None (the worker's --logfile, else standard error) or a file path string")


#: The most ports a ``memguard_metrics_port`` range may span (one per worker on a host is the use).
MAX_PORT_RANGE = 1024
_PORTS_ACCEPTED = ('None, a TCP port 1-65535 (an int or a string like "9300"), or a range "LOW-HIGH" '
                   f'(e.g. "9300-9315", at most {MAX_PORT_RANGE} ports: each worker takes the first free one)')
_PORTS_RE = re.compile(r"\s*([0-9]{1,5})\s*(?:-\s*([0-9]{1,5})\s*)?")
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _port_range(key: str, value: Any, _mem: int) -> tuple[int, int] | None:
    """``None``, a port, or ``"LOW-HIGH"``: the ports a worker may serve metrics on, as ``(low, high)``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(key, value, _PORTS_ACCEPTED)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        low = high = int(value)
    elif isinstance(value, str) and (match := _PORTS_RE.fullmatch(value)):
        low = int(match.group(1))
        high = int(match.group(2) or low)
    else:
        raise ConfigError(key, value, _PORTS_ACCEPTED)
    if not (1 <= low <= high <= 65535) or high - low + 1 > MAX_PORT_RANGE:
        raise ConfigError(key, value, _PORTS_ACCEPTED)
    return (low, high)


def _bind_address(key: str, value: Any, _mem: int) -> str:
    """An IP address (``"127.0.0.1"``, ``"0.0.0.0"``, ``"::"``) or a host name to bind the metrics server to."""
    accepted = 'an IP address to listen on ("127.0.0.1", "0.0.0.0" for every interface, "::") or a host name'
    if not isinstance(value, str):
        raise ConfigError(key, value, accepted)
    text = value.strip()
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if not _HOST_RE.fullmatch(text):
        raise ConfigError(key, value, accepted)
    return text


@dataclass(frozen=True)
class MemGuardConfig:
    """Validated settings; sizes in bytes, times in seconds.

    Build it with :meth:`from_mapping`; the dataclass constructor does no validation.
    """

    enabled: bool = True
    metric: str = "uss"
    soft_limit: int | None = None
    hard_limit: int | None = None
    poll_interval: float = 1.0
    #: Seconds between ``memguard.sample`` events (None: none); see celery_memguard.sampling.
    sample_interval: float | None = 60.0
    kill_grace: float = 2.0
    dry_run: bool = False
    log_format: str = "console"
    log_file: str | None = None
    log_target: str = "direct"
    leak_detection: bool = True
    heavy_task_threshold: tuple[int | None, float | None] = (None, 10.0)
    master_growth_threshold: int | None = 64 * MiB
    master_growth_grace: float = 20.0
    master_growth_min_span: float = 60.0
    diagnostics: str = "tracemalloc"
    pool_limit: int | None = None
    pool_hard_limit: int | None = None
    min_available: int | None = None
    #: Available memory below which the fastest-growing running task is stopped (None: never).
    critical_available: int | None = None
    psi_threshold: float | None = None
    pressure_min_relief: int | None = 32 * MiB
    pressure_retry: float = 30.0
    #: How the monitor learns of memory pressure between polls (see celery_memguard.pace).
    pressure_wake: str = "auto"
    #: Pause task intake below this much available memory (None: never); see celery_memguard.policies.intake.
    pause_below: int | None = None
    #: Pause task intake while the pool children's total memory is above this (None: never).
    pause_pool_above: int | None = None
    #: Seconds every resume condition must hold before intake resumes.
    pause_resume_after: float = 1.0
    recycle_on_leak: bool = False
    leak_horizon: float = 300.0
    max_child_lifetime: float | None = None
    max_child_tasks: int | None = None
    jitter: float = 0.1
    max_recycles_per_minute: int | None = None
    max_throughput_loss: float | None = 0.25
    strikes: int = 0
    policies: tuple[Any, ...] = ()
    #: Ports the Prometheus exporter may listen on, ``(low, high)`` (None: no exporter); see celery_memguard.metrics.
    metrics_port: tuple[int, int] | None = None
    #: Address the exporter binds to: loopback by default (``"0.0.0.0"`` to be scraped from outside a container).
    metrics_addr: str = "127.0.0.1"
    effective_memory: int = 0

    @classmethod
    def from_mapping(cls, conf: Mapping[str, Any] | Any, effective_memory: int, *,
                     overrides: Mapping[str, Any] | None = None, namespace: str | None = None) -> "MemGuardConfig":
        """Read ``memguard_*`` keys from ``conf`` (``app.conf`` or a dict) and validate them.

        ``overrides`` (full key -> value, e.g. from the worker's ``--memguard-*`` options) take
        precedence over ``conf``. ``namespace`` is the app's configuration namespace
        (``config_from_object(..., namespace="CELERY")``), under which ``CELERY_MEMGUARD_SOFT_LIMIT`` is
        the key. Raises :class:`ConfigError` naming the first invalid key. Unknown ``memguard_*`` keys
        (in any case, with or without the namespace) and keys Celery would not hand to MemGuard (an
        upper-case ``MEMGUARD_*`` without the namespace, or the same key set twice) are rejected too, so
        a typo never silently disables a limit.
        """
        given = dict(overrides or {})
        present = set(conf_keys(conf)) if namespace else set()
        names: dict[str, str] = {}  # each key as the user spelled it, for the error message
        raws: dict[str, Any] = {}
        values: dict[str, Any] = {}
        for key, parser in _PARSERS.items():
            full = "memguard_" + key
            names[key] = full if full in given else key_name(full, namespace, present)
            raw = given[full] if full in given else _get(conf, full, _UNSET)
            raws[key] = DEFAULTS[key] if raw is _UNSET else raw
            values[key] = DEFAULTS[key] if raw is _UNSET else parser(names[key], raw, effective_memory)
        _check_keys(conf, namespace)
        soft, hard = values["soft_limit"], values["hard_limit"]
        if soft is not None and hard is not None and soft >= hard:
            raise ConfigError(names["soft_limit"], raws["soft_limit"],
                              f"a size below {names['hard_limit']} ({hard} bytes)")
        pool, pool_hard = values["pool_limit"], values["pool_hard_limit"]
        if pool_hard is not None and (pool is None or pool_hard <= pool):
            raise ConfigError(names["pool_hard_limit"], raws["pool_hard_limit"],
                              f"a size above {names['pool_limit']} (which must be set)")
        if values["recycle_on_leak"] and soft is None and hard is None:
            raise ConfigError(
                names["recycle_on_leak"], raws["recycle_on_leak"],
                "False, or True together with memguard_soft_limit or memguard_hard_limit (the limit a leak is projected to)",
            )
        for key in ("min_available", "pressure_min_relief", "pause_below"):
            # Available memory can never reach (or a recycle never free) more than there is: refused, as a
            # policy that can never be satisfied would recycle children for nothing.
            if effective_memory > 0 and values[key] is not None and values[key] >= effective_memory \
                    and values[key] != DEFAULTS[key]:
                raise ConfigError(names[key], raws[key],
                                  f"a size below the effective memory ({effective_memory // MiB} MiB)")
        critical, floor = values["critical_available"], values["min_available"]
        if critical is not None and (floor is None or critical >= floor):
            raise ConfigError(names["critical_available"], raws["critical_available"],
                              f"a size below {names['min_available']} (which must be set)")
        below = values["pause_below"]
        if below is not None and effective_memory > 0 and below * (1 + PAUSE_RESUME_MARGIN) >= effective_memory:
            # Intake resumes only once available memory is the margin above the threshold: it must be reachable.
            raise ConfigError(names["pause_below"], raws["pause_below"],
                              f"a size below {100 / (1 + PAUSE_RESUME_MARGIN):.0f}% of the effective memory "
                              f"({effective_memory // MiB} MiB): intake resumes at {1 + PAUSE_RESUME_MARGIN:g} x it")
        if values["log_target"] == "logging" and values["log_file"] is not None:
            raise ConfigError(names["log_file"], raws["log_file"],
                              'None with memguard_log_target="logging" (events go to the celery_memguard logger; '
                              'use "both" to write the file too)')
        return cls(effective_memory=effective_memory, **values)

    def as_public_dict(self) -> dict[str, Any]:
        """Settings as shown in ``memguard.started`` and the docs."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _get(conf: Any, key: str, default: Any) -> Any:
    try:
        return conf.get(key, default)
    except Exception:  # a Celery Settings object may raise on odd keys
        return getattr(conf, key, default)


def key_name(full: str, namespace: str | None, present: set[str]) -> str:
    """``full`` (``memguard_soft_limit``) as the configuration spells it: ``CELERY_MEMGUARD_SOFT_LIMIT`` when the
    app has that namespace and the key is set that way, else ``full``."""
    if namespace:
        spelled = f"{namespace.rstrip('_')}_{full.upper()}"
        if spelled in present:
            return spelled
    return full


def _check_keys(conf: Any, namespace: str | None) -> None:
    """Refuse every key that looks like MemGuard's but that MemGuard would never read.

    A key is MemGuard's when, after an optional ``<namespace>_`` prefix (any case), it starts with
    ``memguard_`` in any case. It must name a known setting, and be the spelling Celery resolves for
    the canonical key (checked by asking ``conf`` for it: the value must be this very object).
    """
    prefix = f"{namespace.rstrip('_')}_".lower() if namespace else None
    for key in sorted(conf_keys(conf)):
        name = key[len(prefix):] if prefix and key.lower().startswith(prefix) else key
        if not name.lower().startswith("memguard_"):
            continue
        value = _get(conf, key, None)
        setting = name[9:].lower()
        if setting not in _PARSERS:
            spelled = f" (spelled {namespace.rstrip('_')}_MEMGUARD_<NAME> under the app's namespace)" if namespace else ""
            raise ConfigError(key, value, f"a known key{spelled}: " + ", ".join(KEYS))
        canonical = "memguard_" + setting
        if key != canonical and _get(conf, canonical, _UNSET) is not value:
            spelled = f"{namespace.rstrip('_')}_{canonical.upper()}" if namespace else canonical
            raise ConfigError(key, value, f"the key {spelled} (Celery does not pass {key} to MemGuard"
                                          f"{'' if namespace else '; with no config namespace keys are lower case'}"
                                          ", and a setting may be given once)")


def conf_keys(conf: Any) -> list[str]:
    """The string keys of a Celery configuration (none if it cannot list them)."""
    try:
        return [k for k in conf.keys() if isinstance(k, str)]
    except Exception:
        return []


_PARSERS: dict[str, Callable[[str, Any, int], Any]] = {
    "enabled": _bool,
    "metric": _choice("uss", "pss", "rss"),
    "soft_limit": _optional_size,
    "hard_limit": _optional_size,
    "poll_interval": _seconds(0.01, 3600.0),
    "sample_interval": _optional_seconds(0.1, 86400.0),
    "kill_grace": _seconds(0.0, 3600.0),
    "dry_run": _bool,
    "log_format": _choice("console", "json"),
    "log_file": _optional_path,
    "log_target": _choice("direct", "logging", "both"),
    "leak_detection": _bool,
    "heavy_task_threshold": _size_or_multiple,
    "master_growth_threshold": _optional_size,
    "master_growth_grace": _seconds(0.0, 86400.0),
    "master_growth_min_span": _seconds(0.0, 7 * 86400.0),
    "diagnostics": _choice("off", "tracemalloc", "pympler", "both"),
    "pool_limit": _optional_size,
    "pool_hard_limit": _optional_size,
    "min_available": _optional_size,
    "critical_available": _optional_size,
    "psi_threshold": _fraction(0.0, 100.0, optional=True),
    "pressure_min_relief": _optional_size,
    "pressure_retry": _seconds(0.0, 3600.0),
    "pressure_wake": _choice("auto", "adaptive", "interval"),
    "pause_below": _optional_size,
    "pause_pool_above": _optional_size,
    "pause_resume_after": _seconds(0.0, 3600.0),
    "recycle_on_leak": _bool,
    "leak_horizon": _seconds(1.0, 86400.0),
    "max_child_lifetime": _optional_seconds(1.0, 30 * 86400.0),
    "max_child_tasks": _count(1, optional=True),
    "jitter": _fraction(0.0, 0.9, optional=False),
    "max_recycles_per_minute": _count(1, optional=True),
    "max_throughput_loss": _fraction(0.0, 1.0, optional=True),
    "strikes": _count(0, optional=False),
    "policies": _policy_paths,
    "metrics_port": _port_range,
    "metrics_addr": _bind_address,
}


class KeyDoc(NamedTuple):
    """What a setting accepts and what it does, for the configuration reference generated from it."""

    accepted: str
    meaning: str


#: Each setting's documentation (Markdown), in the settings table's order: the configuration reference is
#: generated from it (scripts/docs_hooks.py); a test checks every key of :data:`KEYS` has one.
KEY_DOCS: dict[str, KeyDoc] = {
    "enabled": KeyDoc(
        'bool',
        'turn the step off without removing it'),
    "metric": KeyDoc(
        '`"uss"`, `"pss"`, `"rss"`',
        'what limits compare against; USS and PSS do not count pages shared copy-on-write with the master'),
    "soft_limit": KeyDoc(
        'size or `None`',
        'a child above it finishes its current task (result and ack go out), then exits and is replaced'),
    "hard_limit": KeyDoc(
        'size or `None`, above the soft limit',
        'a child above it has its running task stopped with `MemoryLimitExceeded`; the child is replaced; '
        'other tasks are not disturbed'),
    "poll_interval": KeyDoc(
        'seconds, 0.01–3600',
        'how often the master polls children; shortened automatically while a child grows towards the hard '
        'limit'),
    "sample_interval": KeyDoc(
        'seconds, 0.1–86400, or `None` (off)',
        "log a `memguard.sample` (every child's memory and RSS by pool slot, the master, the pool total, "
        "available memory) this often, from the poll's own readings: the HTML report's timelines. ~2.6 MB a "
        'day for 16 children at 60 s (see Reports)'),
    "kill_grace": KeyDoc(
        'seconds, 0–3600',
        'time between the polite stop (`MemoryLimitExceeded` raised in the task) and `SIGKILL`, if the task '
        'swallows the exception or is stuck in C code'),
    "dry_run": KeyDoc(
        'bool',
        'log `memguard.would_recycle` / `memguard.would_kill` (and `memguard.paused` with `dry_run` true), do nothing'),
    "log_format": KeyDoc(
        '`"console"`, `"json"`',
        '`json`: one JSON object per line with an `event` key'),
    "log_file": KeyDoc(
        'path or `None`',
        "where events go (appended, never blocking; reopened when logrotate moves it). `None`: the worker's "
        '`--logfile` if it has one, else standard error, else (standard error is `/dev/null`: `--detach` '
        "without `--logfile`) `memguard-<node>.log` in the worker's working directory. A file that cannot be "
        'opened stops the worker at start'),
    "log_target": KeyDoc(
        '`"direct"`, `"logging"`, `"both"`',
        '`direct`: MemGuard writes each line itself (see `memguard_log_file`); `logging`: each line is the '
        'message of a record on the stdlib `celery_memguard` logger (fields in `record.memguard`), for your '
        'handlers (Sentry, JSON formatters, journald); `both`: both. The line is byte-for-byte the same '
        'either way'),
    "leak_detection": KeyDoc(
        'bool',
        'name leaking tasks, memory-heavy tasks and master growth (see Detection); a child whose RSS grew '
        'measures its allocators (glibc `mallinfo2`, pymalloc blocks) around its next 32 tasks so each task '
        'is charged what it kept (RSS deltas where `mallinfo2` is missing)'),
    "heavy_task_threshold": KeyDoc(
        'size, `"Nx"` (N > 1: a multiple of the typical task\'s own peak) or `None`',
        'a task whose own peak is above it is reported as `memguard.heavy_task`'),
    "master_growth_threshold": KeyDoc(
        'size or `None`',
        'master growth above its post-start baseline that is reported as `memguard.master_growth`'),
    "master_growth_grace": KeyDoc(
        'seconds, 0–86400',
        'start-up time of the master (imports, pool start) that master-growth detection ignores; the baseline'
        ' is taken right after it (a later one-off step, such as the first prefetch, is recognised as a step '
        'and never named)'),
    "master_growth_min_span": KeyDoc(
        'seconds, 0–604800',
        'shortest history after the baseline for `memguard.master_growth`; the master is read every '
        '`min_span`/30 s (0.5–10 s). Fast growth is named once it reaches the threshold; slow growth once it '
        'has been steady long enough (the growth needed falls to a quarter of the threshold, see Detection)'),
    "diagnostics": KeyDoc(
        '`"off"`, `"tracemalloc"`, `"pympler"`, `"both"`',
        'when a task becomes a leak suspect, children trace its next 3 calls and report allocation sites / '
        'growing types; nothing is traced otherwise. tracemalloc runs only during the traced calls (2-4x '
        'slower allocations, one `gc.collect()` and snapshot after each); pympler walks every live object '
        'before and after one traced call per task and child, which takes seconds in heaps of millions of '
        'objects'),
    "pool_limit": KeyDoc(
        'size or `None`',
        'children together above it: recycle the largest child (reason `pool_limit`)'),
    "pool_hard_limit": KeyDoc(
        'size above `memguard_pool_limit`, or `None`',
        "total still above it for `kill_grace`: stop the largest child's task"),
    "min_available": KeyDoc(
        'size or `None`',
        'less memory available (cgroup v2/v1 or host `MemAvailable`): recycle the largest idle child, then '
        'the largest busy one (reason `pressure`)'),
    "critical_available": KeyDoc(
        'size below `memguard_min_available`, or `None`',
        'less memory available than this means the worker is about to be OOM-killed: the running task of the '
        'fastest-growing child (its RSS grew since the last poll) is stopped at once with `MemoryLimitExceeded`, '
        'one at a time (reason `pressure`, trigger `critical`). A task that is not growing is never stopped for '
        'it. `None`: never'),
    "psi_threshold": KeyDoc(
        '0–100 or `None`',
        'memory PSI `some avg10` above it counts as pressure too'),
    "pressure_min_relief": KeyDoc(
        'size or `None`',
        'under pressure, recycle at once only a child resident at least this much more (RSS) than a freshly '
        'forked child (a fresh one frees nothing for good); when none is, log `memguard.pressure_unrelieved` '
        'and recycle the largest child only after `memguard_pressure_retry` seconds, then at most once per '
        'that interval (copy-on-write copies still get freed, without a storm). `None`: any child at once'),
    "pressure_retry": KeyDoc(
        'seconds, 0–3600',
        'how long pressure no child offers lasting relief for must last before the largest child is recycled '
        'anyway, and the spacing of such recycles'),
    "pressure_wake": KeyDoc(
        '`"auto"`, `"adaptive"`, `"interval"`',
        'how the monitor learns of memory pressure between polls: `"auto"` arms the kernel\'s notifications '
        '(cgroup v1 usage thresholds derived from `memguard_min_available` and the pool budgets, PSI triggers on '
        'cgroup v2 or the host) so it acts within tens of milliseconds of a crossing, and polls faster while '
        'available memory falls; `"adaptive"`: the faster polling only; `"interval"`: every '
        '`memguard_poll_interval`. `memguard.pressure_watch` says what was armed, or why not (docs/pressure.md)'),
    "pause_below": KeyDoc(
        'size or `None`, below 80 % of the effective memory',
        'less memory available than this: **pause task intake** within one poll (no message fetched, no task '
        'started; running tasks finish, prefetched ones wait unstarted and unacknowledged) and recycle the '
        'largest idle children while paused (reason `pressure`, trigger `paused`) so memory comes back; '
        'intake resumes at 1.25 x this (see `memguard_pause_resume_after`)'),
    "pause_pool_above": KeyDoc(
        'size or `None`',
        "the children's total memory above this pauses intake too; it resumes at 0.75 x this"),
    "pause_resume_after": KeyDoc(
        'seconds, 0–3600',
        'intake resumes once every pause threshold is clear by its 25 % margin and has stayed so this long '
        '(hysteresis: a worker on the edge does not flap)'),
    "recycle_on_leak": KeyDoc(
        'bool (needs a soft or hard limit)',
        'a child holding a confirmed leak and projected to cross its limit within `memguard_leak_horizon` is '
        'recycled at its next idle moment (reason `leak_projection`)'),
    "leak_horizon": KeyDoc(
        'seconds, 1–86400',
        'how far ahead the leak projection looks'),
    "max_child_lifetime": KeyDoc(
        'seconds, 1–2592000 (30 days), or `None`',
        'recycle children older than this (reason `lifetime`)'),
    "max_child_tasks": KeyDoc(
        'int ≥ 1 or `None`',
        'recycle children after this many tasks (reason `max_tasks`)'),
    "jitter": KeyDoc(
        '0–0.9',
        "each child's lifetime / task limit is drawn in `[max·(1−jitter), max]`, spread so children never "
        'restart together'),
    "max_recycles_per_minute": KeyDoc(
        'int ≥ 1 or `None`',
        'rate limit on soft recycles (kills are never deferred); a `memguard.recycle_storm` event explains a '
        'storm'),
    "max_throughput_loss": KeyDoc(
        '0–1 or `None`',
        "rate-limit soft recycles when their measured spawn cost would exceed this share of the pool's "
        'throughput (on by default; `None`: off)'),
    "strikes": KeyDoc(
        'int ≥ 0',
        'a soft action needs this many consecutive violating polls (0 and 1: act at once); never delays the '
        'hard limit'),
    "policies": KeyDoc(
        'policy classes or dotted paths',
        'extra policies with the built-in interface (see Policies)'),
    "metrics_port": KeyDoc(
        'port 1–65535, a range `"9300-9315"` (at most 1024 ports), or `None` (off)',
        "serve Prometheus metrics from the worker's main process (needs `pip install "
        "'celery-memguard[prometheus]'`). With a range, each worker of the host takes the first free port and "
        'logs it (`memguard.metrics_serving`): give the workers of `celery multi` one range. A busy range or a '
        'missing extra is one `memguard.error`; the worker runs on without metrics (docs/metrics.md)'),
    "metrics_addr": KeyDoc(
        'an IP address or a host name',
        'where the metrics server listens: loopback only by default (a Prometheus or agent on the same host); '
        '`"0.0.0.0"` (or `"::"`) in a container or pod, where the scraper connects from outside'),
}

#: Each setting's default, as parsed: the dataclass's field defaults (their one home).
DEFAULTS: dict[str, Any] = {f.name: f.default for f in sorted(
    (f for f in fields(MemGuardConfig) if f.name in _PARSERS), key=lambda f: list(_PARSERS).index(f.name))}
_UNSET = object()

KEYS: tuple[str, ...] = tuple("memguard_" + k for k in _PARSERS)
