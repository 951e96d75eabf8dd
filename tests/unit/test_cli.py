"""Tests for celery_memguard.cli: one click group behind ``celery memguard``, ``celery-memguard`` and
``python -m celery_memguard`` (report, status, help, version, usage errors)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from celery_memguard.cli import main, memguard, run_report

FIXTURE = Path(__file__).parent / "fixtures" / "report_sample.log"
REPO = Path(__file__).resolve().parents[2]


class TestMain:
    def test_text_report(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The report subcommand prints the text report and exits 0."""
        assert main(["report", str(FIXTURE)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("MemGuard report") and "Verdict: LEAK" in out

    def test_json_report(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--format json prints one JSON document."""
        assert main(["report", "--format", "json", str(FIXTURE)]) == 0
        assert json.loads(capsys.readouterr().out)["verdict"]["status"] == "leak"

    def test_corrupt_lines_still_exit_zero(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A file of nothing but corrupt and foreign lines is a successful (empty) report."""
        path = tmp_path / "junk.log"
        path.write_bytes(b'{"event": "memguard.leak_sus\n\x00\x01\xff\nplain text\n')
        assert main(["report", str(path)]) == 0
        assert "1 corrupt line" in capsys.readouterr().out

    def test_no_readable_file_exits_two(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """When no input can be read the exit status is 2 and stderr says why."""
        assert main(["report", str(tmp_path / "missing.log")]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and "cannot read" in captured.err

    def test_one_missing_file_among_good_ones(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A missing file next to a readable one is a warning, not a failure."""
        assert main(["report", str(tmp_path / "missing.log"), str(FIXTURE)]) == 0
        captured = capsys.readouterr()
        assert "cannot read" in captured.err and "Verdict" in captured.out

    def test_usage_errors(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Missing files, an unknown format or command are usage errors: exit 2 with the usage on stderr."""
        for argv in (["report"], ["report", "--format", "pdf", str(FIXTURE)], ["nonsense"]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert "Usage: celery-memguard" in err and "Error:" in err, err

    def test_no_arguments_shows_the_commands(self, capsys: pytest.CaptureFixture[str]) -> None:
        """No arguments: the help listing report and status (exit 0 or 2 depending on click's version)."""
        assert main([]) in (0, 2)
        captured = capsys.readouterr()
        text = captured.out + captured.err
        assert "report" in text and "status" in text

    def test_help_and_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--help lists both commands under the console script's name; --version prints the one version."""
        from celery_memguard import __version__

        assert main(["--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("Usage: celery-memguard [OPTIONS] COMMAND")
        assert "report" in out and "status" in out
        assert main(["--version"]) == 0
        assert capsys.readouterr().out.strip() == f"celery-memguard {__version__}"

    def test_status_without_app_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """status outside Celery's CLI without -A says how to name the app (exit 2)."""
        assert main(["status"]) == 2
        assert "celery-memguard -A proj status" in capsys.readouterr().err

    def test_status_with_an_unloadable_app(self, capsys: pytest.CaptureFixture[str]) -> None:
        """-A naming a module that does not exist is a usage error naming it, not a traceback."""
        assert main(["-A", "no_such_module_for_memguard", "status"]) == 2
        assert "no_such_module_for_memguard" in capsys.readouterr().err

    def test_status_with_app_option(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                                    ) -> None:
        """``celery-memguard -A proj status`` loads the app and renders the broadcast replies."""
        from celery_memguard.worker import control

        calls: list[tuple[Any, ...]] = []

        class FakeControl:
            def broadcast(self, command: str, **kwargs: Any) -> list[dict[str, Any]]:
                calls.append((command, kwargs))
                return [{"celery@a": {"error": "boom"}}]

        class FakeApp:
            control = FakeControl()

        monkeypatch.setattr(control, "load_app", lambda name: FakeApp() if name == "proj" else None)
        assert main(["-A", "proj", "status", "-d", "celery@a", "--timeout", "0.5"]) == 0
        assert capsys.readouterr().out == "celery@a: boom\n"
        assert calls == [("memguard", {"reply": True, "timeout": 0.5, "destination": ["celery@a"]})]

    def test_status_without_replies_exits_two(self, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
        """No worker replying is exit status 2 with the reason on stderr."""
        from celery_memguard.worker import control

        class FakeApp:
            class control:  # noqa: N801 - mimics app.control
                @staticmethod
                def broadcast(command: str, **kwargs: Any) -> list[dict[str, Any]]:
                    return []

        monkeypatch.setattr(control, "load_app", lambda name: FakeApp())
        assert main(["-A", "proj", "status"]) == 2
        assert "no worker replied" in capsys.readouterr().err

    def test_run_report_writes_to_given_streams(self, tmp_path: Path) -> None:
        """run_report writes to the streams it is given."""
        import io

        out, err = io.StringIO(), io.StringIO()
        assert run_report([str(FIXTURE)], "json", out=out, err=err) == 0
        assert json.loads(out.getvalue())["schema"] == 1 and err.getvalue() == ""

    def test_python_dash_m(self) -> None:
        """``python -m celery_memguard report FILE`` works as a command."""
        result = subprocess.run([sys.executable, "-m", "celery_memguard", "report", str(FIXTURE)],
                                capture_output=True, text=True, cwd=REPO, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "Verdict: LEAK" in result.stdout

    def test_python_dash_m_help_names_itself(self) -> None:
        """``python -m celery_memguard --help`` shows its own usage line and both commands; a usage error exits 2."""
        result = subprocess.run([sys.executable, "-m", "celery_memguard", "--help"],
                                capture_output=True, text=True, cwd=REPO, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("Usage: python -m celery_memguard [OPTIONS] COMMAND")
        assert "report" in result.stdout and "status" in result.stdout
        bad = subprocess.run([sys.executable, "-m", "celery_memguard", "report"],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        assert bad.returncode == 2 and "Missing argument" in bad.stderr


class TestClick:
    def test_memguard_report(self) -> None:
        """The click group runs the report."""
        result = CliRunner().invoke(memguard, ["report", str(FIXTURE), "--format", "json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["hosts"][0]["hostname"] == "celery@web-1"

    def test_memguard_report_without_input(self, tmp_path: Path) -> None:
        """No readable input exits 2 under click too."""
        result = CliRunner().invoke(memguard, ["report", str(tmp_path / "missing.log")])
        assert result.exit_code == 2

    def test_inside_celerys_cli(self) -> None:
        """Added to Celery's own command group, ``celery memguard report FILE`` works."""
        from celery.bin.celery import celery as celery_group

        added = "memguard" not in celery_group.commands
        if added:
            celery_group.add_command(memguard)
        try:
            result = CliRunner().invoke(celery_group, ["memguard", "report", str(FIXTURE)])
        finally:
            if added:
                celery_group.commands.pop("memguard", None)
        assert result.exit_code == 0, result.output
        assert "Verdict: LEAK" in result.output

    def test_entry_point(self) -> None:
        """The ``celery.commands`` entry point, once registered, loads this group."""
        found = [ep for ep in entry_points(group="celery.commands") if ep.name == "memguard"]
        if not found:
            pytest.skip("celery.commands entry point 'memguard' not registered in this install")
        assert found[0].load() is memguard

    def test_status_inside_celerys_cli_uses_celerys_app(self) -> None:
        """``celery -A APP memguard status``: the app comes from Celery's -A (a broadcast with no reply exits 2)."""
        from celery.bin.celery import celery as celery_group

        added = "memguard" not in celery_group.commands
        if added:
            celery_group.add_command(memguard)
        try:
            result = CliRunner().invoke(celery_group, ["-A", "tests.unit.test_cli:CLI_APP", "memguard", "status"])
        finally:
            if added:
                celery_group.commands.pop("memguard", None)
        assert result.exit_code == 2, result.output
        assert "no worker replied" in result.output

    def test_one_implementation(self) -> None:
        """The console script, ``python -m`` and the celery.commands entry point all run the same click group."""
        import celery_memguard.__main__ as dunder_main
        from celery_memguard import cli

        assert dunder_main.main is cli.main
        assert isinstance(memguard, click.Group) and set(memguard.commands) == {"report", "advise", "status"}
        assert not hasattr(cli, "build_parser")


def _cli_app() -> Any:
    """An app whose broadcast gets no reply, for ``celery -A tests.unit.test_cli:CLI_APP memguard status``."""
    from celery import Celery

    app = Celery("memguard_cli_test", broker="memory://")
    app.control.broadcast = lambda *a, **k: []  # type: ignore[method-assign]
    return app


CLI_APP = _cli_app()
