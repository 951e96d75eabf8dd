"""Hostile values for every ``memguard_*`` key: refused at start with the key, or accepted, never another error.

Issue 13.7: ``10**400`` for a float key or a size (OverflowError), counts too large
for the policies' float arithmetic, ``min_available`` beyond all memory (an
"argument out of range" later, in the shared board), NaN/inf, negatives, bools
for ints, odd unicode digits. Every value outside what the code can act on must
be a :class:`ConfigError` naming the key; a value accepted must be one the rest
of the code can carry (sizes fit the board's signed 64-bit fields, numbers are
finite).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_memguard.config import KEYS, MAX_SIZE, MemGuardConfig
from celery_memguard.exceptions import ConfigError

MiB = 1024 * 1024
MEM = 8 * 1024 * MiB

HOSTILE: list[Any] = [
    10**400, -(10**400), 10**30, 2**63, 2**64, -1, 0, 1, True, False, None,
    math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, 0.5,
    "", " ", "nan", "inf", "-inf", "1e400", "9" * 400, "9" * 400 + "TiB", "9" * 30 + "x", "1e400x", "nanx",
    "10**400", "0%", "100%", "100.0000001%", "-5MiB", "5 MiB", "²", "١٢", "\x00", "a\x00b", "1" * 17,
    "99999999999999999999999999TiB", "0.0000001%", "1.5", "TRUE", "none",
    b"1MiB", [], [1], ["x:Y"], {}, object(), (1, 2), {"a": 1},
]


def check(key: str, value: Any) -> None:
    """``value`` for ``key`` is either accepted (with representable results) or a ConfigError naming ``key``."""
    try:
        config = MemGuardConfig.from_mapping({key: value}, MEM)
    except ConfigError as exc:
        assert exc.key == key, (key, value, exc)
        assert "expected" in str(exc)
        return
    for name, parsed in config.as_public_dict().items():
        if isinstance(parsed, bool) or parsed is None:
            continue
        if isinstance(parsed, int):
            assert 0 <= parsed <= MAX_SIZE, (key, value, name, parsed)
        elif isinstance(parsed, float):
            assert math.isfinite(parsed), (key, value, name, parsed)
        elif isinstance(parsed, tuple) and name == "heavy_task_threshold":
            assert all(v is None or (math.isfinite(v) and 0 < v <= MAX_SIZE) for v in parsed), (key, value, parsed)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: "object()" if type(v) is object else repr(v)[:30])
def test_hostile_value(key: str, value: Any) -> None:
    check(key, value)


_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**15, max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.from_regex(r"\A\s*[0-9.]{1,30}\s*([kKmMgGtT]i?[bB]?|%|x|X|b)?\s*\Z"),
    st.lists(st.text(max_size=10), max_size=3), st.binary(max_size=8),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=_values)
def test_any_value_is_accepted_or_refused_with_its_key(key: str, value: Any) -> None:
    check(key, value)


@pytest.mark.parametrize("key", [k for k in KEYS if k.endswith(("_limit", "_available", "_relief", "_threshold"))])
def test_huge_sizes_are_refused(key: str) -> None:
    """10**400 and friends: a clean error naming the key, not OverflowError later."""
    for value in (10**400, 10**30, "9" * 400 + "MiB", 2**63):
        with pytest.raises(ConfigError) as info:
            MemGuardConfig.from_mapping({key: value}, MEM)
        assert info.value.key == key


FLOAT_KEYS = [k for k in KEYS if isinstance(MemGuardConfig.__dataclass_fields__[k[9:]].default, float)
              or k[9:] in ("max_child_lifetime", "psi_threshold", "max_throughput_loss")]


@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_float_keys_refuse_overflowing_ints(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        MemGuardConfig.from_mapping({key: 10**400}, MEM)
    assert info.value.key == key


def test_counts_are_bounded() -> None:
    for key in ("memguard_max_child_tasks", "memguard_max_recycles_per_minute", "memguard_strikes"):
        with pytest.raises(ConfigError) as info:
            MemGuardConfig.from_mapping({key: 10**400}, MEM)
        assert info.value.key == key
        with pytest.raises(ConfigError):
            MemGuardConfig.from_mapping({key: True}, MEM)
    assert MemGuardConfig.from_mapping({"memguard_max_child_tasks": "1000"}, MEM).max_child_tasks == 1000


def test_min_available_beyond_memory_is_refused() -> None:
    """A floor available memory can never reach would recycle children for nothing."""
    for value in (10**30, MEM, "100%"):
        with pytest.raises(ConfigError) as info:
            MemGuardConfig.from_mapping({"memguard_min_available": value}, MEM)
        assert info.value.key == "memguard_min_available" and "effective memory" in info.value.accepted
    assert MemGuardConfig.from_mapping({"memguard_min_available": "10%"}, MEM).min_available == MEM // 10


def test_log_file_with_logging_target_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        MemGuardConfig.from_mapping({"memguard_log_target": "logging", "memguard_log_file": "/tmp/x"}, MEM)
    assert info.value.key == "memguard_log_file"
    assert MemGuardConfig.from_mapping({"memguard_log_target": "both", "memguard_log_file": "/tmp/x"}, MEM)


class TestKeyGuard:
    """Keys that look like MemGuard's but would never be read are refused (issue 8.4, 13.7)."""

    def app(self, namespace: str | None, **settings_: Any) -> Celery:
        source = type("Settings", (), {"CELERY_BROKER_URL": "memory://", "broker_url": "memory://", **settings_})
        app = Celery("guard", set_as_current=False)
        app.config_from_object(source, namespace=namespace)
        return app

    def load(self, app: Celery) -> MemGuardConfig:
        return MemGuardConfig.from_mapping(app.conf, MEM, namespace=app.namespace)

    def test_namespaced_key_is_read(self) -> None:
        config = self.load(self.app("CELERY", CELERY_MEMGUARD_SOFT_LIMIT="400MiB", CELERY_MEMGUARD_DRY_RUN=True))
        assert (config.soft_limit, config.dry_run) == (400 * MiB, True)

    @pytest.mark.parametrize(("namespace", "key"), [
        ("CELERY", "CELERY_MEMGUARD_SOFT_LIMT"),   # typo under the namespace
        ("CELERY", "MEMGUARD_SOFT_LIMIT"),         # missing the namespace: Celery never passes it on
        ("CELERY", "celery_memguard_soft_limit"),  # wrong case for the namespace
        (None, "MEMGUARD_SOFT_LIMIT"),             # upper case without a namespace
        (None, "Memguard_Soft_Limit"),
        (None, "memguard_soft_limt"),
    ])
    def test_keys_never_read_are_refused(self, namespace: str | None, key: str) -> None:
        with pytest.raises(ConfigError) as info:
            self.load(self.app(namespace, **{key: "400MiB"}))
        assert info.value.key == key
        if namespace and "LIMT" not in key:
            assert "CELERY_MEMGUARD_SOFT_LIMIT" in info.value.accepted

    def test_errors_name_the_key_as_spelled(self) -> None:
        with pytest.raises(ConfigError) as info:
            self.load(self.app("CELERY", CELERY_MEMGUARD_SOFT_LIMIT="lots"))
        assert info.value.key == "CELERY_MEMGUARD_SOFT_LIMIT"
        with pytest.raises(ConfigError) as info:
            self.load(self.app("CELERY", CELERY_MEMGUARD_SOFT_LIMIT="2GiB", CELERY_MEMGUARD_HARD_LIMIT="1GiB"))
        assert info.value.key == "CELERY_MEMGUARD_SOFT_LIMIT" and "CELERY_MEMGUARD_HARD_LIMIT" in info.value.accepted

    def test_overrides_win_and_are_validated(self) -> None:
        conf = {"memguard_soft_limit": "100MiB", "memguard_hard_limit": "1GiB"}
        config = MemGuardConfig.from_mapping(conf, MEM, overrides={"memguard_soft_limit": "400MiB"})
        assert (config.soft_limit, config.hard_limit) == (400 * MiB, 1024 * MiB)
        lifted = MemGuardConfig.from_mapping(conf, MEM, overrides={"memguard_hard_limit": None})
        assert lifted.hard_limit is None
        with pytest.raises(ConfigError) as info:
            MemGuardConfig.from_mapping(conf, MEM, overrides={"memguard_soft_limit": "lots"})
        assert (info.value.key, info.value.value) == ("memguard_soft_limit", "lots")
