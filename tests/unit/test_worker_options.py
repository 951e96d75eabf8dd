"""The ``--memguard-*`` worker options: generated from the settings table, parsed by the settings' parsers."""

from __future__ import annotations

import click
from click.testing import CliRunner

from celery_memguard.config import KEYS, MemGuardConfig
from celery_memguard.worker.options import option_name, overrides_from, register, worker_options

MEM = 8 * 1024**3


def command() -> click.Command:
    @click.command()
    def cmd(**kwargs: object) -> None:
        config = MemGuardConfig.from_mapping({"memguard_hard_limit": "4GiB"}, MEM, overrides=overrides_from(kwargs))
        click.echo(f"{config.soft_limit} {config.hard_limit} {config.dry_run} {config.max_child_tasks}")

    register(cmd)
    return cmd


def test_one_option_per_key() -> None:
    assert [o.opts[0] for o in worker_options()] == [option_name(k) for k in KEYS]


def test_register_is_idempotent() -> None:
    cmd = command()
    count = len(cmd.params)
    assert register(cmd) and len(cmd.params) == count


def test_values_reach_the_config() -> None:
    runner = CliRunner()
    result = runner.invoke(command(), ["--memguard-soft-limit", "400MiB", "--memguard-dry-run",
                                       "--memguard-max-child-tasks=100"])
    assert result.output.split() == [str(400 * 1024**2), str(4 * 1024**3), "True", "100"], result.output
    result = runner.invoke(command(), ["--memguard-hard-limit", "none", "--memguard-dry-run=no"])
    assert result.output.split() == ["None", "None", "False", "None"], result.output
    result = runner.invoke(command(), [])
    assert result.output.split() == ["None", str(4 * 1024**3), "False", "None"], result.output


def test_absent_options_are_not_overrides() -> None:
    assert overrides_from({"memguard_soft_limit": None, "other": 1}) == {}
    assert overrides_from({"memguard_soft_limit": "None"}) == {"memguard_soft_limit": None}
    assert overrides_from({"memguard_metric": "none"}) == {"memguard_metric": "none"}  # not optional: refused later
