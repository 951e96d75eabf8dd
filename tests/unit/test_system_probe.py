"""The system probe on cgroup trees: memory_cgroup_dirs, oom_kill_count and read_system (issue 4's pressure input).

``tests/unit/fixtures/cgroup_pressure/`` holds a cgroup v1 tree recorded on this
machine (a 600 MiB memory cgroup after one kernel OOM kill, holding 200 MiB of anonymous
memory and 100 MiB of page cache) and a cgroup v2 tree in the kernel's format (a
Kubernetes container's view: ``0::/`` and the limits at the root); its README says what
each file holds. Variations (a limit on a parent only, a host tighter than the cgroup,
no cgroup at all) are built in ``tmp_path`` from the same files. Everything goes through
the functions' ``proc_root`` / ``cgroup_root`` arguments; nothing reads the live system.
"""

from __future__ import annotations

import shutil
from pathlib import Path


from celery_memguard.probes.system import cgroup_limit, memory_cgroup_dirs, oom_kill_count, read_system

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup_pressure"
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

V1 = FIXTURES / "v1"
V1_LEAF = "process_api/44cb2ced17e5f36724b1864c7c0643e1/mg-rec"
V1_LIMIT = 629145600
V1_USAGE = 325459968
V1_INACTIVE_FILE = 104857600
V1_HOST_AVAILABLE = 23534488 * KiB
V1_HOST_TOTAL = 24684084 * KiB

V2 = FIXTURES / "v2"
V2_MAX = 1 * GiB
V2_CURRENT = 891289600
V2_INACTIVE_FILE = 325058560
V2_HOST_AVAILABLE = 9871236 * KiB


def roots(tree: Path) -> tuple[str, str]:
    """(proc_root, cgroup_root) of a fixture tree."""
    return str(tree / "proc"), str(tree / "sys")


def copy_tree(tree: Path, tmp_path: Path) -> Path:
    """A writable copy of a fixture tree, to vary one file."""
    target = tmp_path / tree.name
    shutil.copytree(tree, target)
    return target


class TestMemoryCgroupDirs:
    """Which cgroup directories belong to the process, innermost first."""

    def test_v1_recorded_tree_innermost_first(self) -> None:
        """The v1 memory line gives the leaf, each ancestor, then the controller's root."""
        proc, sys_ = roots(V1)
        base = f"{sys_}/memory"
        expected = [(1, f"{base}/{V1_LEAF}"), (1, f"{base}/process_api/44cb2ced17e5f36724b1864c7c0643e1"),
                    (1, f"{base}/process_api"), (1, base)]
        assert expected == memory_cgroup_dirs(proc, sys_)

    def test_v1_hybrid_ignores_the_v2_line_without_controllers_at_the_root(self) -> None:
        """On a hybrid host the ``0::/`` line is not taken for a v2 memory cgroup (no cgroup.controllers)."""
        proc, sys_ = roots(V1)
        assert all(version == 1 for version, _ in memory_cgroup_dirs(proc, sys_))

    def test_v2_namespaced_container_is_the_root(self) -> None:
        """Inside a container with its own cgroup namespace (``0::/``) the cgroup is the mount's root."""
        proc, sys_ = roots(V2)
        assert [(2, sys_)] == memory_cgroup_dirs(proc, sys_)

    def test_missing_directories_are_skipped(self, tmp_path: Path) -> None:
        """A path in /proc/self/cgroup whose directory is not mounted here contributes nothing."""
        tree = copy_tree(V1, tmp_path)
        shutil.rmtree(tree / "sys" / "memory" / V1_LEAF)
        dirs = memory_cgroup_dirs(*roots(tree))
        assert [d for _, d in dirs] == [str(tree / "sys" / "memory" / "process_api" / "44cb2ced17e5f36724b1864c7c0643e1"),
                                        str(tree / "sys" / "memory" / "process_api"), str(tree / "sys" / "memory")]

    def test_no_cgroup_file(self, tmp_path: Path) -> None:
        """Without /proc/self/cgroup (not Linux, or a restricted /proc) there are no cgroup directories."""
        assert [] == memory_cgroup_dirs(str(tmp_path / "proc"), str(tmp_path / "sys"))


class TestOomKillCount:
    """The OOM-kill counter: the process's cgroup first, the host's vmstat as a fallback."""

    def test_v1_recorded_counts_the_kernel_kill(self) -> None:
        """The recorded v1 cgroup saw one kernel OOM kill (memory.oom_control ``oom_kill 1``)."""
        assert 1 == oom_kill_count(*roots(V1))

    def test_v2_reads_memory_events_not_the_host(self) -> None:
        """v2: ``memory.events`` of the container (2), not the host's vmstat (7)."""
        assert 2 == oom_kill_count(*roots(V2))

    def test_counter_rises_after_another_kill(self, tmp_path: Path) -> None:
        """A second OOM kill in the cgroup shows as 2 (what child_lost's oom_kill_delta is computed from)."""
        tree = copy_tree(V1, tmp_path)
        control = tree / "sys" / "memory" / V1_LEAF / "memory.oom_control"
        control.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
        assert 2 == oom_kill_count(*roots(tree))

    def test_host_vmstat_without_a_cgroup(self, tmp_path: Path) -> None:
        """Without a memory cgroup the machine-wide /proc/vmstat counter is used."""
        tree = copy_tree(V2, tmp_path)
        (tree / "proc" / "self" / "cgroup").unlink()
        assert 7 == oom_kill_count(*roots(tree))

    def test_nothing_readable(self, tmp_path: Path) -> None:
        """No cgroup and no vmstat: unknown (None), never 0."""
        assert oom_kill_count(str(tmp_path / "proc"), str(tmp_path / "sys")) is None

    def test_older_kernel_without_the_oom_kill_line(self, tmp_path: Path) -> None:
        """A v1 oom_control without ``oom_kill`` (kernels before 4.13) falls back to the host counter."""
        tree = copy_tree(V1, tmp_path)
        for control in (tree / "sys" / "memory").rglob("memory.oom_control"):
            control.write_text("oom_kill_disable 0\nunder_oom 0\n")
        assert 1 == oom_kill_count(*roots(tree))  # the recorded host vmstat


class TestReadSystemV1:
    """read_system on the recorded v1 cgroup and variations of it."""

    def test_recorded_cgroup_is_tighter_than_the_host(self) -> None:
        """available = limit - (usage - total_inactive_file); total = the cgroup limit; the OOM count rides along."""
        sample = read_system(12.5, *roots(V1))
        working_set = V1_USAGE - V1_INACTIVE_FILE
        assert V1_LIMIT - working_set == sample.available
        assert V1_LIMIT == sample.total
        assert working_set == sample.used
        assert 1 == sample.oom_kill_count
        assert 12.5 == sample.at

    def test_psi_comes_from_the_host_on_v1(self) -> None:
        """v1 has no per-cgroup PSI: ``some avg10`` of /proc/pressure/memory is used."""
        assert 0.0 == read_system(0.0, *roots(V1)).psi_some_avg10

    def test_host_psi_value_is_parsed(self, tmp_path: Path) -> None:
        """The host's ``some avg10`` is read as a percentage."""
        tree = copy_tree(V1, tmp_path)
        (tree / "proc" / "pressure" / "memory").write_text(
            "some avg10=37.21 avg60=10.00 avg300=2.00 total=99\nfull avg10=20.00 avg60=5.00 avg300=1.00 total=50\n")
        assert 37.21 == read_system(0.0, *roots(tree)).psi_some_avg10

    def test_limit_on_a_parent_only(self, tmp_path: Path) -> None:
        """An unlimited leaf under a limited parent: the parent's limit and usage are used."""
        tree = copy_tree(V1, tmp_path)
        leaf = tree / "sys" / "memory" / V1_LEAF
        parent = leaf.parent
        (leaf / "memory.limit_in_bytes").write_text("9223372036854771712\n")
        (parent / "memory.limit_in_bytes").write_text(f"{2 * GiB}\n")
        (parent / "memory.usage_in_bytes").write_text(f"{1536 * MiB}\n")
        (parent / "memory.stat").write_text("cache 0\ntotal_inactive_file 268435456\n")
        sample = read_system(0.0, *roots(tree))
        assert 2 * GiB - (1536 * MiB - 256 * MiB) == sample.available
        assert 2 * GiB == sample.total

    def test_host_tighter_than_the_cgroup(self, tmp_path: Path) -> None:
        """When the host has less available than the cgroup's room, the host's figures are used."""
        tree = copy_tree(V1, tmp_path)
        meminfo = tree / "proc" / "meminfo"
        meminfo.write_text(meminfo.read_text().replace("MemAvailable:   23534488 kB", "MemAvailable:     204800 kB"))
        sample = read_system(0.0, *roots(tree))
        assert 200 * MiB == sample.available
        assert V1_HOST_TOTAL == sample.total

    def test_usage_below_inactive_file_never_goes_negative(self, tmp_path: Path) -> None:
        """A stat read between usage updates (inactive_file above usage) gives the whole limit, not more."""
        tree = copy_tree(V1, tmp_path)
        (tree / "sys" / "memory" / V1_LEAF / "memory.stat").write_text(f"total_inactive_file {V1_USAGE + MiB}\n")
        assert V1_LIMIT == read_system(0.0, *roots(tree)).available

    def test_no_cgroup_uses_the_host(self, tmp_path: Path) -> None:
        """Without a memory cgroup: MemAvailable and MemTotal of the host, and the host's OOM counter."""
        tree = copy_tree(V1, tmp_path)
        (tree / "proc" / "self" / "cgroup").unlink()
        sample = read_system(0.0, *roots(tree))
        assert (V1_HOST_AVAILABLE, V1_HOST_TOTAL) == (sample.available, sample.total)
        assert V1_HOST_TOTAL - V1_HOST_AVAILABLE == sample.used
        assert 1 == sample.oom_kill_count

    def test_effective_memory_is_the_recorded_limit(self) -> None:
        """The 600 MiB cgroup limit is what percentages such as memguard_min_available="25%" refer to."""
        assert V1_LIMIT == cgroup_limit(*roots(V1))


class TestReadSystemV2:
    """read_system on the v2 container tree."""

    def test_limit_and_oom_count_of_the_container(self) -> None:
        """total is memory.max; the OOM count is memory.events' ``oom_kill``."""
        sample = read_system(3.0, *roots(V2))
        assert V2_MAX == sample.total
        assert 2 == sample.oom_kill_count
        assert V2_MAX == cgroup_limit(*roots(V2))

    def test_psi_of_the_container_not_the_host(self) -> None:
        """v2: ``some avg10`` of the container's memory.pressure (12.5), not the host's (0.35)."""
        assert 12.5 == read_system(0.0, *roots(V2)).psi_some_avg10

    def test_psi_falls_back_to_the_host(self, tmp_path: Path) -> None:
        """Without memory.pressure in the cgroup (PSI disabled for it), the host's value is used."""
        tree = copy_tree(V2, tmp_path)
        (tree / "sys" / "memory.pressure").unlink()
        assert 0.35 == read_system(0.0, *roots(tree)).psi_some_avg10

    def test_max_in_the_leaf_uses_the_limited_parent(self, tmp_path: Path) -> None:
        """A host view: the leaf says ``max``, its parent has 2 GiB and 1.5 GiB current."""
        tree = copy_tree(V2, tmp_path)
        sys_ = tree / "sys"
        (tree / "proc" / "self" / "cgroup").write_text("0::/system.slice/celery.service\n")
        leaf = sys_ / "system.slice" / "celery.service"
        leaf.mkdir(parents=True)
        (leaf / "memory.max").write_text("max\n")
        (leaf / "memory.current").write_text(f"{1024 * MiB}\n")
        (sys_ / "system.slice" / "memory.max").write_text(f"{2 * GiB}\n")
        (sys_ / "system.slice" / "memory.current").write_text(f"{1536 * MiB}\n")
        sample = read_system(0.0, *roots(tree))
        assert 512 * MiB == sample.available
        assert 2 * GiB == sample.total

    def test_unlimited_everywhere_uses_the_host(self, tmp_path: Path) -> None:
        """``max`` all the way up: the host's MemAvailable."""
        tree = copy_tree(V2, tmp_path)
        (tree / "sys" / "memory.max").write_text("max\n")
        assert V2_HOST_AVAILABLE == read_system(0.0, *roots(tree)).available

    def test_page_cache_the_kernel_reclaims_first_is_not_counted_as_used(self) -> None:
        """available = memory.max - (memory.current - inactive_file): page cache is not used memory, as on v1."""
        sample = read_system(0.0, *roots(V2))
        assert V2_MAX - (V2_CURRENT - V2_INACTIVE_FILE) == sample.available
        assert V2_CURRENT - V2_INACTIVE_FILE == sample.used

    def test_current_above_max_gives_zero_available(self, tmp_path: Path) -> None:
        """memory.current may exceed memory.max for a moment (charges before reclaim): available is 0, not negative."""
        tree = copy_tree(V2, tmp_path)
        (tree / "sys" / "memory.current").write_text(f"{V2_MAX + 4 * MiB}\n")
        (tree / "sys" / "memory.stat").write_text("anon 1077936128\ninactive_file 0\n")
        assert 0 == read_system(0.0, *roots(tree)).available
