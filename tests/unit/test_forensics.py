"""explain_loss: which task a lost child ran, and what its memory fields are (issue 13.10)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from celery_memguard.board import CurrentTask
from celery_memguard.forensics import EX_RECYCLE, ChildHistory, LossExplainer, explain_loss
from celery_memguard.samples import ChildSample

MiB = 1024 * 1024


def _history(*points: tuple[float, int, str | None]) -> ChildHistory:
    history = ChildHistory()
    for at, rss, task_id in points:
        history.add(at, ChildSample(pid=7, mem=rss, exact=True, rss=rss, task="app.t" if task_id else None,
                                    task_id=task_id))
    return history


def _loss(history: ChildHistory | None, recorded: CurrentTask | None, now: float = 20.0) -> dict[str, object]:
    report = explain_loss(7, -signal.SIGKILL, history, oom_kills_before=3, oom_kills_now=4, hard_limit=None,
                          effective_memory=8 * 1024 * MiB, recorded=recorded, now=now)
    assert report is not None
    return report.fields


def test_task_from_the_board_when_the_last_poll_predates_it() -> None:
    fields = _loss(_history((10.0, 46 * MiB, None)), CurrentTask(7, True, "app.load", "tid-9", 19.9, 46 * MiB, 3, 1.0))
    assert (fields["task"], fields["task_id"], fields["task_source"]) == ("app.load", "tid-9", "board")
    assert fields["last_mem_mib"] == 46.0 and fields["last_poll_during_task"] is False
    assert fields["last_poll_s_before"] == 10.0 and fields["task_started_s_before"] == 0.1
    assert fields["rss_at_task_start_mib"] == 46.0 and fields["likely_oom"] is True


def test_idle_child_recorded_on_the_board() -> None:
    fields = _loss(_history((19.0, 46 * MiB, "old")), CurrentTask(7, False, None, None, 0.0, 0, 3, 1.0))
    assert (fields["task"], fields["task_source"]) == (None, "board")
    assert fields["task_started_s_before"] is None and fields["last_poll_during_task"] is None


def test_last_poll_when_the_board_does_not_know_the_child() -> None:
    fields = _loss(_history((19.0, 46 * MiB, "tid-1")), None)
    assert (fields["task_id"], fields["task_source"]) == ("tid-1", "last_poll")


def test_nothing_known() -> None:
    fields = _loss(None, None)
    assert fields["task"] is None and fields["task_source"] is None and fields["last_poll_s_before"] is None


class TestLossExplainer:
    """One worker's lost-child explanations: limits from the settings, OOM counter baseline kept between losses."""

    def test_counter_baseline_moves_with_each_loss(self) -> None:
        """Each loss reports the OOM-kill counter's change since the previous loss (or since start)."""
        counter = iter([3, 4, 4])
        explainer = LossExplainer(hard_limit=400 * MiB, effective_memory=1024 * MiB, oom_kills=lambda: next(counter))
        first = explainer.explain(7, -signal.SIGKILL, None)
        second = explainer.explain(8, -signal.SIGKILL, None)
        assert (1, True, 0, False) == (first.fields["oom_kill_delta"], first.fields["likely_oom"],  # type: ignore[union-attr]
                                       second.fields["oom_kill_delta"], second.fields["likely_oom"])  # type: ignore[union-attr]

    def test_clean_exit_is_not_explained(self) -> None:
        """A planned recycle or a clean exit gives no report."""
        assert (None, None) == (LossExplainer().explain(7, 0, None), LossExplainer().explain(7, EX_RECYCLE, None))

    def test_a_failing_reader_is_one_error_and_the_loss_is_still_explained(self, logged: Path) -> None:
        """A reader that raises is logged as memguard.error; the report is made without its value."""
        def broken() -> int:
            raise OSError("no /proc/vmstat")

        report = LossExplainer(oom_kills=broken, available=broken).explain(7, -signal.SIGKILL, None)
        assert report is not None and report.fields["oom_kill_delta"] is None
        records = [json.loads(line) for line in logged.read_text().splitlines()]
        assert {"monitor.oom_kills", "monitor.system"} == {r["where"] for r in records if r["event"] == "memguard.error"}
