"""Tests for celery_memguard.cli: ``python -m celery_memguard report`` and ``celery memguard report``."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

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

    def test_usage_errors(self) -> None:
        """Missing files or an unknown format are usage errors (exit 2)."""
        for argv in (["report"], ["report", "--format", "html", str(FIXTURE)], []):
            with pytest.raises(SystemExit) as exc:
                main(argv)
            assert exc.value.code == 2

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
