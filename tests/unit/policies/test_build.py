"""Tests for build_policies, load_policy and Engine.from_config."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from celery_memguard.config import MemGuardConfig
from celery_memguard.engine import Engine
from celery_memguard.policies import (HardLimit, LeakProjection, Lifetime, MaxTasks, PoolLimit, SoftLimit,
                                      SystemPressure, build_policies, load_policy)

from .helpers import MiB
from .test_custom import IdleAbove, OldestOverBudget

CUSTOM = "tests.unit.policies.test_custom"


def config(**values: object) -> SimpleNamespace:
    """A foreign configuration object, as a custom policy's ``from_config`` may be handed."""
    return SimpleNamespace(**values)


class TestBuildPolicies:
    """build_policies(config, extra=..., rng=...): every value and default from the MemGuardConfig."""

    def test_nothing_configured(self) -> None:
        """The default configuration enables no policy."""
        assert [] == build_policies(MemGuardConfig())

    def test_everything_in_order(self) -> None:
        """Per-child limits most severe first, then leak, age, pool, pressure, custom."""
        cfg = MemGuardConfig(soft_limit=200 * MiB, hard_limit=400 * MiB, pool_limit=1000 * MiB,
                             pool_hard_limit=1200 * MiB, min_available=500 * MiB, psi_threshold=20.0,
                             recycle_on_leak=True, max_child_lifetime=3600.0, max_child_tasks=1000,
                             jitter=0.2, policies=(IdleAbove,))
        policies = build_policies(cfg, rng=random.Random(1))
        assert [HardLimit, SoftLimit, LeakProjection, Lifetime, MaxTasks, PoolLimit, SystemPressure, IdleAbove] == [
            type(p) for p in policies]
        pool = policies[5]
        assert isinstance(pool, PoolLimit) and (1000 * MiB, 1200 * MiB, 2.0) == (pool.limit, pool.hard_limit,
                                                                                 pool.grace)
        assert [0.2, 0.2] == [p.jitter for p in policies if isinstance(p, (Lifetime, MaxTasks))]

    def test_defaults_come_from_the_config(self) -> None:
        """The age policies' jitter and the pressure options default to MemGuardConfig's values (0.1, 32 MiB,
        30 s), not to another copy of them: one home for every default."""
        cfg = MemGuardConfig.from_mapping({"memguard_max_child_tasks": 100, "memguard_max_child_lifetime": 3600,
                                           "memguard_min_available": "100MiB"}, 1 << 33)
        policies = build_policies(cfg)
        defaults = MemGuardConfig()
        assert [defaults.jitter] * 2 == [p.jitter for p in policies if isinstance(p, (Lifetime, MaxTasks))]
        [pressure] = [p for p in policies if isinstance(p, SystemPressure)]
        assert (defaults.pressure_min_relief, defaults.pressure_retry) == (pressure.min_relief,
                                                                           pressure.retry_unrelieved)

    def test_policy_constructor_defaults_are_the_config_defaults(self) -> None:
        """A policy built by hand gets the configuration's defaults (read from MemGuardConfig, not copied)."""
        defaults = MemGuardConfig()
        pressure = SystemPressure(min_available=1)
        assert (defaults.pressure_min_relief, defaults.pressure_retry) == (pressure.min_relief,
                                                                           pressure.retry_unrelieved)
        assert defaults.leak_horizon == LeakProjection(limit=1).horizon
        assert defaults.kill_grace == PoolLimit(limit=1).grace
        assert defaults.jitter == Lifetime(max_lifetime=60.0).jitter == MaxTasks(max_tasks=10).jitter

    def test_leak_projects_to_soft_then_hard(self) -> None:
        """recycle_on_leak projects towards the soft limit, or the hard one without a soft limit."""
        [_, _, leak] = build_policies(MemGuardConfig(soft_limit=200 * MiB, hard_limit=400 * MiB, recycle_on_leak=True))
        assert isinstance(leak, LeakProjection) and 200 * MiB == leak.limit
        [_, leak] = build_policies(MemGuardConfig(hard_limit=400 * MiB, recycle_on_leak=True))
        assert isinstance(leak, LeakProjection) and 400 * MiB == leak.limit

    def test_leak_without_limit_rejected(self) -> None:
        """recycle_on_leak without any limit has nothing to project towards."""
        with pytest.raises(ValueError):
            build_policies(MemGuardConfig(recycle_on_leak=True))

    def test_psi_only_pressure(self) -> None:
        """A PSI threshold alone enables the pressure policy."""
        [pressure] = build_policies(MemGuardConfig(psi_threshold=10.0))
        assert isinstance(pressure, SystemPressure) and None is pressure.min_available

    def test_current_config_unchanged(self) -> None:
        """A validated configuration (soft and hard only) builds HardLimit then SoftLimit."""
        cfg = MemGuardConfig.from_mapping({"memguard_soft_limit": 100, "memguard_hard_limit": 200}, 1 << 30)
        assert [(HardLimit, 200), (SoftLimit, 100)] == [(type(p), p.threshold) for p in build_policies(cfg)]

    def test_custom_from_config_and_extra(self) -> None:
        """Configured custom entries (dotted paths) come before ``extra``; from_config gets the config."""
        cfg = MemGuardConfig(policies=(f"{CUSTOM}:OldestOverBudget",))
        policies = build_policies(cfg, extra=[IdleAbove(limit=5)])
        assert ["OldestOverBudget", "IdleAbove"] == [type(p).__name__ for p in policies]
        assert isinstance(policies[0], OldestOverBudget) and 1000 * MiB == policies[0].budget


class TestLoadPolicy:
    """load_policy(entry, config)."""

    def test_instance_kept(self) -> None:
        """An instance is used as given."""
        policy = IdleAbove(limit=5)
        assert policy is load_policy(policy)

    def test_class_instantiated(self) -> None:
        """A class is instantiated without arguments."""
        assert isinstance(load_policy(IdleAbove), IdleAbove)

    @pytest.mark.parametrize("path", [f"{CUSTOM}:IdleAbove", f"{CUSTOM}.IdleAbove"])
    def test_dotted_paths(self, path: str) -> None:
        """Both "module:Class" and "module.Class" resolve."""
        assert isinstance(load_policy(path), IdleAbove)

    def test_from_config_used_with_config(self) -> None:
        """A class with from_config is built from the configuration when one is given."""
        policy = load_policy(OldestOverBudget, config(oldest_budget=7))
        assert isinstance(policy, OldestOverBudget) and 7 == policy.budget

    def test_not_a_policy_rejected(self) -> None:
        """An object with neither check nor check_pool is refused."""
        with pytest.raises(TypeError):
            load_policy("collections:OrderedDict")

    @pytest.mark.parametrize("path", ["nowhere_at_all:Policy", f"{CUSTOM}:Missing", "justaname"])
    def test_bad_paths_rejected(self, path: str) -> None:
        """A path that does not resolve raises ImportError or AttributeError."""
        with pytest.raises((ImportError, AttributeError)):
            load_policy(path)


class TestEngineFromConfig:
    """Engine.from_config(config)."""

    def test_current_config(self) -> None:
        """The default configuration builds an engine with no strikes and the spawn-cost rate limit (0.25)."""
        cfg = MemGuardConfig.from_mapping({"memguard_hard_limit": 200}, 1 << 30)
        e = Engine.from_config(cfg)
        assert (200, 0, True, cfg.poll_interval) == (e.hard_limit, e.strikes, e.storm.enabled, e.poll_interval)
        assert (None, 0.25) == (e.storm.max_recycles_per_minute, e.storm.max_throughput_loss)
        assert Engine.from_config(MemGuardConfig.from_mapping({"memguard_max_throughput_loss": None}, 1 << 30)
                                  ).storm.enabled is False

    def test_gates_from_config(self) -> None:
        """strikes and the recycle rate limit come from the configuration."""
        e = Engine.from_config(MemGuardConfig(soft_limit=100, strikes=3, max_recycles_per_minute=6,
                                              max_throughput_loss=0.2))
        assert (3, 6, 0.2) == (e.strikes, e.storm.max_recycles_per_minute, e.storm.max_throughput_loss)
