"""Tests for celery_memguard.probes: /proc parsers on recorded text, cgroup limits on fixture
trees, and the live probes (ProcfsProbe, PsutilProbe, SelfProbe) on real processes.

Fixtures live in tests/unit/fixtures/ (see its README.md for how they were recorded).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from celery_memguard.probes import (
    ProbeError,
    ProcessGone,
    ProcfsProbe,
    PsutilProbe,
    SelfProbe,
    effective_memory,
    open_process_probe,
    parse_smaps,
    parse_smaps_rollup,
    parse_stat_minflt,
    parse_statm_rss,
)
from celery_memguard.probes.procfs import PAGE_SIZE
from celery_memguard.probes.system import cgroup_limit, physical_memory

FIXTURES = Path(__file__).parent / "fixtures"
PROC = FIXTURES / "proc"
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MEMTOTAL = 24684084 * KiB  # MemTotal recorded in both cgroup fixtures' meminfo

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc")


def spawn_sleeper() -> int:
    """Fork a child that sleeps until killed; return its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            time.sleep(30)
        finally:
            os._exit(0)
    return pid


def reap(pid: int) -> None:
    os.kill(pid, 9)
    os.waitpid(pid, 0)


def reaped_pid() -> int:
    """The pid of a child that already exited and was reaped."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


class TestParseStatm:
    """parse_statm_rss."""

    def test_recorded(self) -> None:
        """The second statm field is resident pages."""
        assert 9251 * 4096 == parse_statm_rss((PROC / "statm").read_bytes(), 4096)

    def test_page_size_applies(self) -> None:
        """The page size is a parameter (64 KiB pages on some arm64 kernels)."""
        assert 9251 * 65536 == parse_statm_rss((PROC / "statm").read_bytes(), 65536)

    def test_default_page_size(self) -> None:
        """Without a page size the system's is used."""
        assert 9251 * PAGE_SIZE == parse_statm_rss((PROC / "statm").read_bytes())


class TestParseStat:
    """parse_stat_minflt."""

    def test_recorded_comm_with_spaces_and_parens(self) -> None:
        """A recorded stat whose comm is 'w (x) 1) y' gives its minflt field."""
        data = (PROC / "stat").read_bytes()
        assert b"(w (x) 1) y)" in data
        assert 2241 == parse_stat_minflt(data)

    @pytest.mark.parametrize("comm", [b"python", b"a b c", b") ) )", b"(", b"x) R 1 2 3 4 5 6 7", b""])
    def test_hostile_comm(self, comm: bytes) -> None:
        """Any comm, even one that imitates the following fields, is skipped correctly."""
        data = b"1234 (" + comm + b") S 1 1234 1234 0 -1 4194304 987654 0 0 0 3 1 0 0 20 0 1 0 100 1000 50\n"
        assert 987654 == parse_stat_minflt(data)

    @linux_only
    def test_own_stat(self) -> None:
        """Our own live stat parses to a positive count."""
        assert 0 < parse_stat_minflt(Path("/proc/self/stat").read_bytes())


class TestParseSmapsRollup:
    """parse_smaps_rollup."""

    def test_recorded(self) -> None:
        """RSS and PSS are read; USS is Private_Clean + Private_Dirty (+ Private_Hugetlb), excluding CoW-shared pages."""
        assert {"rss": 37004 * KiB, "pss": 21747 * KiB, "uss": 8728 * KiB} == parse_smaps_rollup(
            (PROC / "smaps_rollup").read_bytes())

    def test_private_fields_summed(self) -> None:
        """Private_Clean, Private_Dirty and Private_Hugetlb all count towards USS; shared fields do not."""
        data = (
            b"00400000-7fff0000 ---p 00000000 00:00 0    [rollup]\n"
            b"Rss:                1000 kB\nPss:                 600 kB\n"
            b"Shared_Clean:        100 kB\nShared_Dirty:        200 kB\n"
            b"Private_Clean:        30 kB\nPrivate_Dirty:       400 kB\n"
            b"Shared_Hugetlb:     2048 kB\nPrivate_Hugetlb:    4096 kB\nSwap:                  7 kB\n"
        )
        assert {"rss": 1000 * KiB, "pss": 600 * KiB, "uss": (30 + 400 + 4096) * KiB} == parse_smaps_rollup(data)

    def test_missing_pss_falls_back_to_rss(self) -> None:
        """A rollup without a Pss line reports RSS as PSS."""
        assert {"rss": 10 * KiB, "pss": 10 * KiB, "uss": 0} == parse_smaps_rollup(b"Rss: 10 kB\n")

    @pytest.mark.parametrize("data", [b"", b"Pss: 10 kB\n", b"garbage\n"])
    def test_no_rss_line(self, data: bytes) -> None:
        """A rollup without an Rss line is a ProbeError, not a zero reading."""
        with pytest.raises(ProbeError):
            parse_smaps_rollup(data)


def make_cgroup_tree(tmp_path: Path, cgroup: str, files: dict[str, str], v2: bool) -> tuple[str, str]:
    """A fake proc_root (self/cgroup, meminfo) and cgroup_root with the given limit files."""
    proc, sys_ = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "meminfo").write_text("MemTotal:        8000000 kB\nMemFree:         7000000 kB\n")
    sys_.mkdir()
    if v2:
        (sys_ / "cgroup.controllers").write_text("cpu io memory pids\n")
    for rel, text in files.items():
        (sys_ / rel).parent.mkdir(parents=True, exist_ok=True)
        (sys_ / rel).write_text(text)
    return str(proc), str(sys_)


class TestCgroupLimit:
    """cgroup_limit, physical_memory and effective_memory on fixture trees."""

    def test_v1_recorded_tree(self) -> None:
        """On the recorded hybrid v1 host the parent cgroup's 4 GiB limit applies."""
        root = FIXTURES / "cgroup_v1"
        assert 4 * GiB == cgroup_limit(str(root / "proc"), str(root / "sys"))

    def test_v2_recorded_tree(self) -> None:
        """On the recorded v2 host the parent slice's 2 GiB limit applies under a 'max' leaf."""
        root = FIXTURES / "cgroup_v2"
        assert 2 * GiB == cgroup_limit(str(root / "proc"), str(root / "sys"))

    def test_physical_memory(self) -> None:
        """MemTotal from meminfo, in bytes."""
        assert MEMTOTAL == physical_memory(str(FIXTURES / "cgroup_v1" / "proc"))

    @pytest.mark.parametrize(("tree", "expected"), [("cgroup_v1", 4 * GiB), ("cgroup_v2", 2 * GiB)])
    def test_effective_memory_is_the_smaller(self, tree: str, expected: int) -> None:
        """The effective memory is the cgroup limit when it is below MemTotal."""
        root = FIXTURES / tree
        assert expected == effective_memory(str(root / "proc"), str(root / "sys"))

    def test_v2_tighter_leaf(self, tmp_path: Path) -> None:
        """The tightest limit on the path wins, even at the leaf."""
        proc, sys_ = make_cgroup_tree(tmp_path, "0::/a/b\n", {"a/memory.max": "2147483648\n",
                                                              "a/b/memory.max": "536870912\n"}, v2=True)
        assert 512 * MiB == cgroup_limit(proc, sys_)
        assert 512 * MiB == effective_memory(proc, sys_)

    def test_v2_unlimited(self, tmp_path: Path) -> None:
        """'max' all the way up means no cgroup limit; effective memory is MemTotal."""
        proc, sys_ = make_cgroup_tree(tmp_path, "0::/a/b\n", {"a/memory.max": "max\n", "a/b/memory.max": "max\n"},
                                      v2=True)
        assert None is cgroup_limit(proc, sys_)
        assert 8000000 * KiB == effective_memory(proc, sys_)

    def test_limit_above_physical(self, tmp_path: Path) -> None:
        """A cgroup limit above MemTotal leaves MemTotal as the effective memory."""
        proc, sys_ = make_cgroup_tree(tmp_path, "0::/a\n", {"a/memory.max": str(64 * GiB)}, v2=True)
        assert 64 * GiB == cgroup_limit(proc, sys_)
        assert 8000000 * KiB == effective_memory(proc, sys_)

    def test_v1_unlimited_sentinel(self, tmp_path: Path) -> None:
        """v1's 'unlimited' (a page-rounded 2**63 - 1) is no limit."""
        proc, sys_ = make_cgroup_tree(tmp_path, "4:memory:/x\n", {"memory/memory.limit_in_bytes": "9223372036854771712",
                                                                 "memory/x/memory.limit_in_bytes": "9223372036854771712"},
                                      v2=False)
        assert None is cgroup_limit(proc, sys_)

    def test_v1_combined_controllers(self, tmp_path: Path) -> None:
        """A v1 line naming several controllers ('memory,cpu') is still the memory hierarchy."""
        proc, sys_ = make_cgroup_tree(tmp_path, "3:cpu,memory:/job\n", {"memory/job/memory.limit_in_bytes": "1073741824"},
                                      v2=False)
        assert GiB == cgroup_limit(proc, sys_)

    def test_v2_line_ignored_without_unified_root(self, tmp_path: Path) -> None:
        """On a hybrid host the '0::' line is ignored unless cgroup_root is a v2 mount."""
        proc, sys_ = make_cgroup_tree(tmp_path, "0::/a\n", {"a/memory.max": "1073741824"}, v2=False)
        assert None is cgroup_limit(proc, sys_)

    @pytest.mark.parametrize("text", ["", "garbage\n", "12345\n"])
    def test_odd_or_missing_files(self, tmp_path: Path, text: str) -> None:
        """An unreadable, empty or malformed cgroup file means no limit, never an error."""
        proc, sys_ = make_cgroup_tree(tmp_path, "0::/a\n", {"a/memory.max": "not a number\n"}, v2=True)
        (Path(proc) / "self" / "cgroup").write_text(text)
        assert None is cgroup_limit(proc, sys_)

    def test_no_proc_cgroup(self, tmp_path: Path) -> None:
        """Without /proc/self/cgroup there is no limit."""
        assert None is cgroup_limit(str(tmp_path), str(tmp_path))

    def test_live_effective_memory(self) -> None:
        """On this machine effective memory is positive and not above physical memory."""
        assert 0 < effective_memory() <= physical_memory()


def copy_fixture_pid(tmp_path: Path, pid: int, names: tuple[str, ...] = ("statm", "stat", "smaps_rollup")) -> str:
    """A fake proc_root holding the recorded files as /proc/<pid>/..."""
    (tmp_path / str(pid)).mkdir()
    for name in names:
        shutil.copy(PROC / name, tmp_path / str(pid) / name)
    return str(tmp_path)


@linux_only
class TestProcfsProbe:
    """ProcfsProbe on recorded files and on live processes."""

    def test_recorded_files(self, tmp_path: Path) -> None:
        """A probe over a fake proc_root reads the recorded RSS, minor faults, USS and PSS."""
        probe = ProcfsProbe(4321, proc_root=copy_fixture_pid(tmp_path, 4321))
        try:
            assert (9251 * PAGE_SIZE, 2241) == probe.cheap()
            assert (8728 * KiB, 21747 * KiB, 9251 * PAGE_SIZE) == (probe.exact("uss"), probe.exact("pss"),
                                                                   probe.exact("rss"))
        finally:
            probe.close()

    SMAPS = (b"55d0c0a00000-55d0c0a21000 r--p 00000000 08:01 1234   /usr/bin/python3.11\n"
             b"Size:                132 kB\nRss:                 120 kB\nPss:                  60 kB\n"
             b"Shared_Clean:        100 kB\nPrivate_Clean:        12 kB\nPrivate_Dirty:         8 kB\n"
             b"Private_Hugetlb:       0 kB\nVmFlags: rd mr mw me dw sd\n"
             b"7f0000000000-7f0000400000 rw-p 00000000 00:00 0 \n"
             b"Size:               4096 kB\nRss:                4000 kB\nPss:                4000 kB\n"
             b"Private_Clean:         0 kB\nPrivate_Dirty:      4000 kB\nPrivate_Hugetlb:    2048 kB\n"
             b"THPeligible:    0\nVmFlags: rd wr mr mw me ac sd\n")

    def test_smaps_fallback_without_smaps_rollup(self, tmp_path: Path) -> None:
        """A live process without smaps_rollup (a kernel before 4.14) is read exactly from /proc/PID/smaps,
        summed over its mappings, as psutil does. It used to be a ProbeError, on which the monitor acted on
        RSS as if it were the exact USS."""
        root = copy_fixture_pid(tmp_path, 4321, ("statm", "stat"))
        (tmp_path / "4321" / "smaps").write_bytes(self.SMAPS)
        probe = ProcfsProbe(4321, proc_root=root)
        try:
            assert (12 + 8 + 4000 + 2048) * KiB == probe.exact("uss")
            assert 4060 * KiB == probe.exact("pss")
            assert {"rss": 4120 * KiB, "pss": 4060 * KiB, "uss": 6068 * KiB} == parse_smaps(self.SMAPS)
        finally:
            probe.close()

    def test_smaps_fallback_process_gone(self, tmp_path: Path) -> None:
        """Without smaps_rollup, a process that has exited (RSS 0: a zombie) is ProcessGone, not a kernel
        too old to read."""
        root = copy_fixture_pid(tmp_path, 4321, ("statm", "stat"))
        probe = ProcfsProbe(4321, proc_root=root)
        try:
            (tmp_path / "4321" / "statm").write_bytes(b"0 0 0 0 0 0 0\n")
            with pytest.raises(ProcessGone):
                probe.exact("uss")
        finally:
            probe.close()

    def test_live_smaps_agrees_with_smaps_rollup(self) -> None:
        """On this kernel the summed smaps of a live process give what its smaps_rollup gives."""
        path = Path(f"/proc/{os.getpid()}")
        if not (path / "smaps_rollup").exists():
            pytest.skip("no smaps_rollup to compare with")
        rollup = parse_smaps_rollup((path / "smaps_rollup").read_bytes())
        summed = parse_smaps((path / "smaps").read_bytes())
        for key in ("rss", "pss", "uss"):
            assert abs(summed[key] - rollup[key]) <= max(2 * MiB, rollup[key] // 20), (key, summed, rollup)

    def test_missing_smaps_rollup_is_probe_error(self, tmp_path: Path) -> None:
        """A live process with neither smaps_rollup nor smaps gives ProbeError (no exact reading), not
        ProcessGone."""
        probe = ProcfsProbe(4321, proc_root=copy_fixture_pid(tmp_path, 4321, ("statm", "stat")))
        try:
            with pytest.raises(ProbeError) as info:
                probe.exact("uss")
            assert not isinstance(info.value, ProcessGone)
        finally:
            probe.close()

    def test_missing_pid_is_gone(self, tmp_path: Path) -> None:
        """Opening a pid that has no /proc directory raises ProcessGone."""
        with pytest.raises(ProcessGone):
            ProcfsProbe(999, proc_root=str(tmp_path))

    def test_self(self) -> None:
        """On the test process the readings are positive and consistent (USS <= PSS <= RSS, give or take)."""
        probe = ProcfsProbe(os.getpid())
        try:
            rss, faults = probe.cheap()
            uss, pss, exact_rss = probe.exact("uss"), probe.exact("pss"), probe.exact("rss")
            assert rss > 0 and faults > 0
            assert 0 < uss <= pss + MiB  # separate reads: allow a little churn in between
            assert pss <= exact_rss + 4 * MiB
            assert abs(exact_rss - rss) < 16 * MiB
        finally:
            probe.close()

    def test_self_sees_growth(self) -> None:
        """Touching 64 MiB (above glibc's largest mmap threshold, so fresh pages) shows up in RSS and USS."""
        probe = ProcfsProbe(os.getpid())
        try:
            rss0, uss0 = probe.cheap()[0], probe.exact("uss")
            block = b"\x01" * (64 * MiB)
            rss1, uss1 = probe.cheap()[0], probe.exact("uss")
            assert 64 * MiB == len(block)
            assert rss1 - rss0 >= 56 * MiB
            assert uss1 - uss0 >= 56 * MiB
            del block
        finally:
            probe.close()

    def test_reaped_child_after_open(self) -> None:
        """A probe opened on a live child raises ProcessGone for every reading once the child is reaped."""
        pid = spawn_sleeper()
        try:
            probe = ProcfsProbe(pid)
            assert probe.cheap()[0] > 0
        finally:
            reap(pid)
        try:
            with pytest.raises(ProcessGone):
                probe.cheap()
            with pytest.raises(ProcessGone):
                probe.rss()
            with pytest.raises(ProcessGone):
                probe.exact("uss")
        finally:
            probe.close()

    def test_reaped_child_open(self) -> None:
        """Opening a probe on a reaped child raises ProcessGone."""
        with pytest.raises(ProcessGone):
            ProcfsProbe(reaped_pid())

    def test_close_twice(self) -> None:
        """close() is idempotent."""
        probe = ProcfsProbe(os.getpid())
        probe.exact("uss")
        probe.close()
        probe.close()

    def test_open_process_probe_picks_procfs(self) -> None:
        """On Linux the factory returns a ProcfsProbe."""
        probe = open_process_probe(os.getpid())
        try:
            assert isinstance(probe, ProcfsProbe)
        finally:
            probe.close()

    def test_process_gone_is_probe_error(self) -> None:
        """ProcessGone is a ProbeError is an OSError, so callers can catch broadly."""
        assert issubclass(ProcessGone, ProbeError) and issubclass(ProbeError, OSError)


class TestPsutilProbe:
    """PsutilProbe, the fallback for platforms without /proc."""

    def test_self_readings(self) -> None:
        """RSS is positive, minor faults are not reported, USS/PSS/RSS are positive and ordered."""
        probe = PsutilProbe(os.getpid())
        rss, faults = probe.cheap()
        assert rss > 0
        assert 0 == faults
        uss, pss, exact_rss = probe.exact("uss"), probe.exact("pss"), probe.exact("rss")
        assert 0 < uss <= pss + MiB <= exact_rss + 5 * MiB  # separate reads: allow a little churn
        probe.close()

    def test_reaped_child(self) -> None:
        """A reaped pid raises ProcessGone at open; one reaped after open raises it on reading."""
        with pytest.raises(ProcessGone):
            PsutilProbe(reaped_pid())
        pid = spawn_sleeper()
        try:
            probe = PsutilProbe(pid)
            assert probe.cheap()[0] > 0
        finally:
            reap(pid)
        with pytest.raises(ProcessGone):
            probe.cheap()
        with pytest.raises(ProcessGone):
            probe.exact("uss")


class TestSelfProbe:
    """SelfProbe, the pool child's view of itself."""

    def test_rss_positive(self) -> None:
        """rss() reads this process's resident size."""
        probe = SelfProbe()
        try:
            assert probe.rss() > 0
        finally:
            probe.close()

    @linux_only
    def test_peak_reset(self) -> None:
        """After touching 100 MiB the peak is high; after freeing it and resetting, the peak drops."""
        probe = SelfProbe()
        try:
            if not probe.peak_supported:
                pytest.skip("clear_refs not permitted here")
            probe.reset_peak()
            rss0 = probe.rss()
            block = b"\x01" * (100 * MiB)
            high = probe.peak()
            assert high is not None
            assert high >= rss0 + 90 * MiB
            del block
            probe.reset_peak()
            low = probe.peak()
            assert low is not None
            assert low <= high - 90 * MiB
            assert abs(low - probe.rss()) < 16 * MiB
        finally:
            probe.close()

    def test_without_proc(self, tmp_path: Path) -> None:
        """Without /proc, RSS comes from psutil and the per-task peak is unavailable (None)."""
        probe = SelfProbe(proc_root=str(tmp_path))
        try:
            assert False is probe.peak_supported
            assert None is probe.peak()
            probe.reset_peak()
            assert probe.rss() > 0
        finally:
            probe.close()
