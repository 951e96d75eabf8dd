"""Tests for celery_memguard.probes.pressure_events: kernel pressure notifications, armed for real.

The cgroup v1 tests create a memory cgroup of their own (a child of this process's), arm usage
thresholds on it, run a process in it that allocates past them and see the eventfd fire; they skip,
with the reason, where that is not possible (not root, no v1 memory controller). The PSI tests arm a
trigger on /proc/pressure/memory where it exists and make the kernel stall on memory by over-limit
allocations in a cgroup of their own (which the kernel then OOM-kills there).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from celery_memguard.pace import PressurePlan
from celery_memguard.probes.pressure_events import (
    CGROUP1, PSI, Armed, PressureWatch, PressureWatchError, arm_cgroup1_thresholds, arm_psi_trigger,
    limited_memory_cgroup, open_pressure_watch,
)
from celery_memguard.probes.system import memory_cgroup_dirs

MiB = 1024 * 1024
LIMIT = 256 * MiB
PSI_PATH = "/proc/pressure/memory"


@pytest.fixture
def v1_cgroup() -> Iterator[Path]:
    """A fresh cgroup v1 memory cgroup limited to 256 MiB; removed afterwards."""
    dirs = memory_cgroup_dirs()
    if not dirs or dirs[0][0] != 1:
        pytest.skip(f"needs a cgroup v1 memory controller (this process: {dirs[:1] or 'no memory cgroup'})")
    path = Path(dirs[0][1]) / f"mg-ut-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
        (path / "memory.limit_in_bytes").write_text(str(LIMIT))
    except OSError as exc:
        pytest.skip(f"cannot create a limited memory cgroup under {dirs[0][1]}: {exc}")
    try:
        yield path
    finally:
        deadline = time.monotonic() + 10
        while path.exists():
            try:
                path.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def allocate_in(cgroup: Path, mib: int, hold: float) -> subprocess.Popen[bytes]:
    """A python process in ``cgroup`` that touches ``mib`` MiB, holds it ``hold`` s and exits."""
    code = (f"import time; b = bytearray({mib} * 1048576); b[::4096] = bytes(len(range(0, len(b), 4096))); "
            f"time.sleep({hold})")
    return subprocess.Popen(["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs"),
                             sys.executable, "-c", code])


def fired(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


class TestCgroup1Thresholds:
    """arm_cgroup1_thresholds on a real cgroup."""

    def test_eventfd_fires_when_usage_crosses_a_threshold_both_ways(self, v1_cgroup: Path) -> None:
        """A 100 MiB threshold: nothing before, a signal as a process grows past it, another as it exits."""
        armed = arm_cgroup1_thresholds(str(v1_cgroup), [100 * MiB])
        try:
            assert CGROUP1 == armed.source and (100 * MiB,) == armed.thresholds
            assert not fired(armed.fd, 0.1)
            proc = allocate_in(v1_cgroup, 150, 1.0)
            started = time.monotonic()
            assert fired(armed.fd, 10), "no notification as usage passed 100 MiB"
            crossed = time.monotonic() - started
            armed.consume()
            assert not fired(armed.fd, 0.05)  # consumed
            proc.wait(10)
            assert fired(armed.fd, 5), "no notification as usage fell back below 100 MiB"
            print(f"up-crossing signalled {crossed * 1000:.0f} ms after the process started")
        finally:
            armed.close()

    def test_one_eventfd_for_several_thresholds(self, v1_cgroup: Path) -> None:
        """Thresholds from a plan, one eventfd: each crossing of a rung signals (counted by the eventfd)."""
        plan = PressurePlan(available_levels=(64 * MiB,))
        thresholds = plan.usage_thresholds(LIMIT)
        assert [160, 192, 224, 240] == [t // MiB for t in thresholds]
        armed = arm_cgroup1_thresholds(str(v1_cgroup), thresholds)
        try:
            proc = allocate_in(v1_cgroup, 200, 0.5)  # passes 160 and 192 (plus the interpreter's own memory)
            assert fired(armed.fd, 10)
            proc.wait(10)
            time.sleep(0.2)
            assert os.eventfd_read(armed.fd) >= 2  # at least up and down through one rung
        finally:
            armed.close()

    def test_no_threshold_is_refused(self, v1_cgroup: Path) -> None:
        with pytest.raises(PressureWatchError, match="no usage threshold"):
            arm_cgroup1_thresholds(str(v1_cgroup), [])

    def test_a_directory_that_is_no_cgroup_raises(self, tmp_path: Path) -> None:
        """Arming where there is no memory.usage_in_bytes raises OSError (the caller falls back)."""
        with pytest.raises(OSError):
            arm_cgroup1_thresholds(str(tmp_path), [MiB])

    def test_open_pressure_watch_in_a_limited_cgroup(self, v1_cgroup: Path, tmp_path: Path) -> None:
        """A process whose /proc/self/cgroup names the test cgroup gets cgroup v1 thresholds from its limit."""
        memory_root = Path(memory_cgroup_dirs()[-1][1])  # the v1 hierarchy's root directory
        proc_root = tmp_path / "proc"
        (proc_root / "self").mkdir(parents=True)
        relative = v1_cgroup.relative_to(memory_root)
        (proc_root / "self" / "cgroup").write_text(f"4:memory:/{relative}\n0::/\n")
        assert (1, str(v1_cgroup), LIMIT) == limited_memory_cgroup(str(proc_root), str(memory_root.parent))
        plan = PressurePlan(available_levels=(64 * MiB,))
        watch = open_pressure_watch(plan.usage_thresholds, plan.psi_trigger, host_psi=False,
                                    proc_root=str(proc_root), cgroup_root=str(memory_root.parent))
        try:
            assert [CGROUP1] == watch.sources and [] == watch.failures
            woke = threading.Event()
            watch.start(lambda source: woke.set(), lambda source, exc: None)
            proc = allocate_in(v1_cgroup, 200, 0.3)
            assert woke.wait(10), "the watch thread did not report the crossing"
            proc.wait(10)
        finally:
            watch.close()


class TestPsi:
    """PSI triggers: armed where the kernel has them; the fallback where it has not."""

    def test_trigger_armed_on_the_host(self) -> None:
        """A 1 s window needs CAP_SYS_RESOURCE; without it the 2 s window is armed instead."""
        if not os.path.exists(PSI_PATH):
            pytest.skip(f"{PSI_PATH} not present (kernel without PSI)")
        try:
            armed = arm_psi_trigger(PSI_PATH, PressurePlan().psi_trigger)
        except PermissionError as exc:
            pytest.skip(f"PSI triggers not allowed here: {exc}")
        try:
            assert PSI == armed.source and armed.mask == select.POLLPRI
            assert armed.trigger in ("some 100000 1000000", "some 200000 2000000"), armed.trigger
        finally:
            armed.close()

    def test_trigger_fires_on_memory_stalls(self, v1_cgroup: Path) -> None:
        """Processes allocating 100 MiB in the test cgroup (limit lowered to 64 MiB, no swap) stall in reclaim
        before the kernel OOM-kills them (inside the test cgroup only): the host's PSI trigger signals (POLLPRI).
        (Thrashing a file's page cache did not stall measurably here: clean cache is reclaimed without stalls.)"""
        if not os.path.exists(PSI_PATH):
            pytest.skip(f"{PSI_PATH} not present (kernel without PSI)")
        (v1_cgroup / "memory.limit_in_bytes").write_text(str(64 * MiB))
        try:
            armed = arm_psi_trigger(PSI_PATH, PressurePlan(psi_threshold=2.0).psi_trigger)
        except PermissionError as exc:
            pytest.skip(f"PSI triggers not allowed here: {exc}")
        poller = select.poll()
        poller.register(armed.fd, armed.mask)
        started = time.monotonic()
        events: list[tuple[int, int]] = []
        runs = 0
        try:
            while not events and time.monotonic() - started < 20:
                allocate_in(v1_cgroup, 100, 0.0).wait(20)  # OOM-killed in its cgroup, after stalling
                runs += 1
                events = poller.poll(0)
        finally:
            armed.close()
        waited = time.monotonic() - started
        assert events and events[0][1] & select.POLLPRI, f"no PSI notification in {waited:.1f} s ({armed.trigger})"
        print(f"PSI trigger {armed.trigger!r} fired {waited:.2f} s in, after {runs} over-limit allocations")

    def test_no_psi_and_no_cgroup_is_a_plain_fallback(self, tmp_path: Path) -> None:
        """No cgroup limit and no /proc/pressure: PressureWatchError saying so, no arming failure."""
        (tmp_path / "self").mkdir()
        (tmp_path / "self" / "cgroup").write_text("0::/\n")
        with pytest.raises(PressureWatchError) as info:
            open_pressure_watch(lambda limit: [], PressurePlan().psi_trigger, host_psi=False,
                                proc_root=str(tmp_path), cgroup_root=str(tmp_path / "nocgroup"))
        assert "no memory cgroup limit" in str(info.value) and "pressure/memory not present" in str(info.value)
        assert [] == info.value.failures

    def test_unwritable_trigger_is_a_failure(self, tmp_path: Path) -> None:
        """A pressure file that refuses the trigger (here: a directory) is reported as an arming failure."""
        (tmp_path / "self").mkdir()
        (tmp_path / "self" / "cgroup").write_text("0::/\n")
        (tmp_path / "pressure" / "memory").mkdir(parents=True)
        with pytest.raises(PressureWatchError) as info:
            open_pressure_watch(lambda limit: [], PressurePlan().psi_trigger, host_psi=True,
                                proc_root=str(tmp_path), cgroup_root=str(tmp_path / "nocgroup"))
        assert len(info.value.failures) == 1 and "IsADirectoryError" in str(info.value)


class TestPressureWatchThread:
    """PressureWatch.start / close with fds the test controls."""

    def test_notification_calls_on_event_and_close_stops_the_thread(self) -> None:
        efd = os.eventfd(0, os.EFD_NONBLOCK)
        watch = PressureWatch([Armed(CGROUP1, "test", efd, select.POLLIN, [efd])])
        seen: list[str] = []
        woke = threading.Event()
        watch.start(lambda source: (seen.append(source), woke.set()), lambda source, exc: None)
        os.eventfd_write(efd, 1)
        assert woke.wait(5)
        watch.close()
        assert [CGROUP1] == seen
        assert watch._thread is not None and not watch._thread.is_alive()

    def test_a_failing_source_is_dropped_and_reported(self) -> None:
        """POLLHUP on a source (its cgroup removed): on_lost once, and the thread ends when none is left."""
        read_end, write_end = os.pipe()
        watch = PressureWatch([Armed(PSI, "gone", read_end, select.POLLPRI, [read_end])])
        lost: list[tuple[str, str]] = []
        done = threading.Event()
        watch.start(lambda source: None, lambda source, exc: (lost.append((source, str(exc))), done.set()))
        os.close(write_end)
        assert done.wait(5)
        watch._thread.join(5)  # type: ignore[union-attr]
        assert not watch._thread.is_alive()  # type: ignore[union-attr]
        watch.close()
        assert [PSI] == [source for source, _ in lost] and "gone" in lost[0][1]

    def test_a_raising_callback_is_reported_and_the_watch_goes_on(self) -> None:
        """on_event raising (board.wake() with an OSError, say) is handed to on_lost and the thread keeps
        delivering notifications (before: the exception ended the memguard-pressure thread for good)."""
        efd = os.eventfd(0, os.EFD_NONBLOCK)
        watch = PressureWatch([Armed(CGROUP1, "test", efd, select.POLLIN, [efd])])
        calls: list[str] = []
        lost: list[tuple[str, BaseException]] = []
        second = threading.Event()

        def on_event(source: str) -> None:
            calls.append(source)
            if len(calls) == 1:
                raise OSError("the wake pipe is gone")
            second.set()

        watch.start(on_event, lambda source, exc: lost.append((source, exc)))
        try:
            os.eventfd_write(efd, 1)
            deadline = time.monotonic() + 5
            while not lost and time.monotonic() < deadline:
                time.sleep(0.01)
            os.eventfd_write(efd, 1)
            assert second.wait(5), "the watch thread stopped after the callback raised"
            assert watch._thread is not None and watch._thread.is_alive()
        finally:
            watch.close()
        assert [CGROUP1] == [source for source, _ in lost] and isinstance(lost[0][1], OSError)


class TestLooseCgroupLimit:
    """A cgroup v1 limit at or above the host's MemTotal is no limit, for the watch and for read_system alike."""

    def tree(self, tmp_path: Path, limit: int) -> tuple[str, str]:
        proc, sys_cgroup = tmp_path / "proc", tmp_path / "cgroup"
        (proc / "self").mkdir(parents=True)
        (proc / "self" / "cgroup").write_text("4:memory:/worker\n")
        (proc / "meminfo").write_text(f"MemTotal: {1024 * 1024} kB\nMemAvailable: {100 * 1024} kB\n")
        directory = sys_cgroup / "memory" / "worker"
        directory.mkdir(parents=True)
        (directory / "memory.limit_in_bytes").write_text(str(limit))
        (directory / "memory.usage_in_bytes").write_text(str(300 * MiB))
        (directory / "memory.stat").write_text("total_inactive_file 0\n")
        return str(proc), str(sys_cgroup)

    def test_a_limit_looser_than_the_host_arms_the_host_not_the_cgroup(self, tmp_path: Path) -> None:
        """Limit 2 GiB on a 1 GiB host: read_system reads the host's MemAvailable, so no cgroup threshold is
        armed (it could never fire) and the host's PSI is asked for (before: cgroup thresholds were tried,
        relative to the 2 GiB limit, and the host PSI skipped)."""
        from celery_memguard.probes.system import read_system

        proc, cgroup = self.tree(tmp_path, 2048 * MiB)
        assert limited_memory_cgroup(proc, cgroup) is None
        assert read_system(0.0, proc, cgroup).available == 100 * MiB
        with pytest.raises(PressureWatchError) as info:
            open_pressure_watch(lambda limit: [limit // 2], PressurePlan().psi_trigger, host_psi=False,
                                proc_root=proc, cgroup_root=cgroup)
        assert "no memory cgroup limit" in str(info.value) and "pressure/memory not present" in str(info.value)
        assert [] == info.value.failures

    def test_a_limit_below_the_host_is_the_cgroups(self, tmp_path: Path) -> None:
        """Limit 512 MiB on a 1 GiB host, 450 MiB used in it: both read the cgroup (62 MiB available)."""
        from celery_memguard.probes.system import read_system

        proc, cgroup = self.tree(tmp_path, 512 * MiB)
        (Path(cgroup) / "memory" / "worker" / "memory.usage_in_bytes").write_text(str(450 * MiB))
        assert limited_memory_cgroup(proc, cgroup) == (1, f"{cgroup}/memory/worker", 512 * MiB)
        assert read_system(0.0, proc, cgroup).available == 62 * MiB
