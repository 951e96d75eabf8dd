"""Tests for celery_memguard.estimate.MetricEstimate: the cheap USS/PSS upper bound.

A small page-level model of a forked child (pages shared copy-on-write with the
master, private anonymous pages, privately mapped file pages) produces synthetic
(RSS, minor faults, true USS) series; the bound must never fall below the true
USS between exact readings, whatever mix of growth the child shows.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass

import pytest

from celery_memguard.estimate import PAGE_SIZE, MetricEstimate

MiB = 1024 * 1024
PAGES_PER_MIB = MiB // PAGE_SIZE


@dataclass
class ChildModel:
    """Pages of one forked child; counts in pages."""

    shared: int = 300 * PAGES_PER_MIB  # shared copy-on-write with the master
    private: int = 20 * PAGES_PER_MIB  # anonymous pages only this child maps
    file_private: int = 0  # file pages only this child maps (Private_Clean)
    faults: int = 1000

    @property
    def rss(self) -> int:
        return (self.shared + self.private + self.file_private) * PAGE_SIZE

    @property
    def uss(self) -> int:
        return (self.private + self.file_private) * PAGE_SIZE

    def new_pages(self, n: int) -> None:
        """Touch ``n`` fresh anonymous pages: RSS up, one minor fault each."""
        self.private += n
        self.faults += n

    def cow_break(self, n: int) -> None:
        """Write to ``n`` pages shared with the master: RSS flat, one minor fault each."""
        n = min(n, self.shared)
        self.shared -= n
        self.private += n
        self.faults += n

    def free(self, n: int) -> None:
        """Unmap ``n`` private pages: RSS and USS down, no fault."""
        n = min(n, self.private)
        self.private -= n

    def read_file(self, n: int) -> None:
        """Map ``n`` page-cache pages nobody else maps: RSS and USS up, one fault each."""
        self.file_private += n
        self.faults += n

    def huge_fault(self) -> None:
        """One transparent-huge-page fault maps 512 pages at once: RSS up by 2 MiB, one fault."""
        self.private += 512
        self.faults += 1


class TestMetricEstimateBound:
    """MetricEstimate.bound(rss, faults)."""

    def test_before_any_exact_reading_bound_is_rss(self) -> None:
        """Without an exact reading, RSS is the only bound."""
        assert 123 * MiB == MetricEstimate().bound(123 * MiB, 10)

    def test_no_change_bound_is_exact(self) -> None:
        """With RSS and faults unchanged the bound is the exact reading."""
        est = MetricEstimate()
        est.record_exact(50 * MiB, 300 * MiB, 1000, 0.0)
        assert 50 * MiB == est.bound(300 * MiB, 1000)

    def test_growth_by_new_pages(self) -> None:
        """USS growing by new pages (RSS up) is bounded exactly by the RSS growth plus faults."""
        child = ChildModel()
        est = MetricEstimate()
        est.record_exact(child.uss, child.rss, child.faults, 0.0)
        uss_before = child.uss
        child.new_pages(10 * PAGES_PER_MIB)
        bound = est.bound(child.rss, child.faults)
        assert bound >= child.uss
        # RSS growth and the faults both count the same pages: at most twice the real growth.
        assert uss_before + 2 * 10 * MiB == bound

    def test_growth_by_cow_breaks(self) -> None:
        """USS growing by copy-on-write breaks (faults up, RSS flat) is bounded exactly."""
        child = ChildModel()
        est = MetricEstimate()
        est.record_exact(child.uss, child.rss, child.faults, 0.0)
        rss_before = child.rss
        child.cow_break(50 * PAGES_PER_MIB)
        assert rss_before == child.rss
        assert child.uss == est.bound(child.rss, child.faults)

    def test_free_then_allocate_between_readings(self) -> None:
        """Freeing then touching as many new pages leaves RSS flat; the faults still count them."""
        child = ChildModel()
        est = MetricEstimate()
        est.record_exact(child.uss, child.rss, child.faults, 0.0)
        child.free(5 * PAGES_PER_MIB)
        child.new_pages(5 * PAGES_PER_MIB)
        assert child.uss <= est.bound(child.rss, child.faults)

    def test_bound_never_above_rss(self) -> None:
        """The bound is capped by RSS, which always bounds USS and PSS."""
        child = ChildModel(shared=0)
        est = MetricEstimate()
        est.record_exact(child.uss, child.rss, child.faults, 0.0)
        child.new_pages(100)
        assert child.rss == est.bound(child.rss, child.faults)

    def test_shrinking_rss_does_not_lower_below_exact_plus_faults(self) -> None:
        """RSS falling is not subtracted (it may be shared pages going away)."""
        est = MetricEstimate()
        est.record_exact(50 * MiB, 300 * MiB, 1000, 0.0)
        assert 50 * MiB == est.bound(200 * MiB, 1000)

    @pytest.mark.parametrize("seed", range(20))
    def test_random_sequences_never_below_true_uss(self, seed: int) -> None:
        """Over random mixes of new pages, CoW breaks, frees, file reads and THP faults the bound never falls below USS."""
        rng = random.Random(seed)
        child = ChildModel(shared=rng.randint(0, 400) * PAGES_PER_MIB, private=rng.randint(1, 50) * PAGES_PER_MIB)
        est = MetricEstimate()
        steps = 0
        for step in range(300):
            op = rng.choice(("new", "cow", "free", "file", "huge", "exact"))
            n = rng.randint(1, 4 * PAGES_PER_MIB)
            if op == "new":
                child.new_pages(n)
            elif op == "cow":
                child.cow_break(n)
            elif op == "free":
                child.free(n)
            elif op == "file":
                child.read_file(n)
            elif op == "huge":
                child.huge_fault()
            else:
                est.record_exact(child.uss, child.rss, child.faults, float(step))
            bound = est.bound(child.rss, child.faults)
            assert child.uss <= bound <= child.rss, (seed, step, op)
            steps += 1
        assert 300 == steps

    def test_page_size_matches_system(self) -> None:
        """The fault-to-bytes factor is this machine's page size (a smaller one would under-bound CoW growth)."""
        assert os.sysconf("SC_PAGE_SIZE") == PAGE_SIZE

    def test_page_size_has_one_home_asked_of_the_kernel(self) -> None:
        """On a 16 KiB-page kernel (faked: ``os.sysconf`` patched before the package is imported) the
        estimate, the /proc reader and the child's own probe all count 16 KiB pages. The estimate used a
        hard-coded 4096 and undercounted copy-on-write growth 4x there."""
        import subprocess
        import sys
        import textwrap

        code = textwrap.dedent("""
            import os
            real = os.sysconf
            os.sysconf = lambda name: 16384 if name == "SC_PAGE_SIZE" else real(name)
            from celery_memguard import estimate, units
            from celery_memguard.probes import procfs, self_probe
            e = estimate.MetricEstimate()
            e.record_exact(100 << 20, rss=150 << 20, faults=1000, now=0.0)
            grown = e.bound(rss=150 << 20, faults=1010) - (100 << 20)
            print(units.PAGE_SIZE, estimate.PAGE_SIZE, procfs.PAGE_SIZE, grown, self_probe.SelfProbe()._page)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert "16384 16384 16384 163840 16384" == out.strip()


class TestMetricEstimateNeedsExact:
    """MetricEstimate.needs_exact(rss, bound, threshold, now)."""

    def test_no_threshold_never(self) -> None:
        """Without any memory policy no exact reading is ever needed."""
        assert False is MetricEstimate().needs_exact(10_000 * MiB, 10_000 * MiB, None, 0.0)

    def test_rss_at_or_below_threshold_never(self) -> None:
        """RSS bounds the metric, so RSS at or below the threshold needs no exact reading, however stale."""
        est = MetricEstimate(refresh=60.0)
        assert False is est.needs_exact(100 * MiB, 100 * MiB, 100 * MiB, 1e9)
        assert False is est.needs_exact(50 * MiB, 50 * MiB, 100 * MiB, 1e9)

    def test_never_measured_above_threshold(self) -> None:
        """A child never measured exactly, with RSS above the threshold, needs a reading."""
        est = MetricEstimate()
        assert -math.inf == est.at
        assert True is est.needs_exact(300 * MiB, 300 * MiB, 100 * MiB, 0.0)

    def test_bound_above_threshold(self) -> None:
        """A bound above the threshold needs an exact reading even if the last one is fresh."""
        est = MetricEstimate(refresh=60.0)
        est.record_exact(50 * MiB, 300 * MiB, 1000, 10.0)
        assert True is est.needs_exact(300 * MiB, 101 * MiB, 100 * MiB, 10.5)

    def test_bound_below_threshold_and_fresh(self) -> None:
        """A bound at or below the threshold and a fresh exact reading need nothing."""
        est = MetricEstimate(refresh=60.0)
        est.record_exact(50 * MiB, 300 * MiB, 1000, 10.0)
        assert False is est.needs_exact(300 * MiB, 100 * MiB, 100 * MiB, 69.9)

    def test_refresh_age(self) -> None:
        """Once the exact reading is ``refresh`` seconds old a new one is needed (RSS above the threshold)."""
        est = MetricEstimate(refresh=60.0)
        est.record_exact(50 * MiB, 300 * MiB, 1000, 10.0)
        assert [False, True, True] == [est.needs_exact(300 * MiB, 60 * MiB, 100 * MiB, t) for t in (69.99, 70.0, 500.0)]

    def test_record_exact_resets_age(self) -> None:
        """A new exact reading restarts the refresh clock and becomes the base of the bound."""
        est = MetricEstimate(refresh=5.0)
        est.record_exact(50 * MiB, 300 * MiB, 1000, 0.0)
        assert True is est.needs_exact(300 * MiB, 60 * MiB, 100 * MiB, 5.0)
        est.record_exact(60 * MiB, 310 * MiB, 1100, 5.0)
        assert False is est.needs_exact(310 * MiB, 60 * MiB, 100 * MiB, 9.0)
        assert (60 * MiB, 310 * MiB, 1100, 5.0) == (est.exact, est.rss_then, est.faults_then, est.at)
        assert 60 * MiB == est.bound(310 * MiB, 1100)

    def test_unseen_sharing_change_caught_by_refresh(self) -> None:
        """Pages turned private without a child fault (the master freed its copy) are seen at the next refresh."""
        child = ChildModel()
        est = MetricEstimate(refresh=60.0)
        threshold = 100 * MiB
        est.record_exact(child.uss, child.rss, child.faults, 0.0)
        child.shared -= 200 * PAGES_PER_MIB  # the master unmapped them: now private to the child, no fault here
        child.private += 200 * PAGES_PER_MIB
        bound = est.bound(child.rss, child.faults)
        assert bound < child.uss  # the documented blind spot
        assert False is est.needs_exact(child.rss, bound, threshold, 30.0)
        assert True is est.needs_exact(child.rss, bound, threshold, 60.0)


class TestMetricEstimateKnownAbove:
    """The lower bound that keeps a child known above a limit without new exact readings."""

    def test_lower_bound_proves_above(self) -> None:
        """exact minus any RSS drop since the reading stays above the threshold."""
        e = MetricEstimate(refresh=60.0)
        e.record_exact(500 * MiB, 600 * MiB, 10, 0.0)
        assert 450 * MiB == e.known_above(550 * MiB, 400 * MiB, 1.0)

    def test_rss_growth_does_not_raise_the_lower_bound(self) -> None:
        """Growth since the reading is not credited: the lower bound is the reading itself."""
        e = MetricEstimate(refresh=60.0)
        e.record_exact(500 * MiB, 600 * MiB, 10, 0.0)
        assert 500 * MiB == e.known_above(900 * MiB, 400 * MiB, 1.0)

    def test_not_known_when_freed_below_or_stale_or_unread(self) -> None:
        """A large RSS drop, a due refresh, no threshold or no reading at all prove nothing."""
        e = MetricEstimate(refresh=60.0)
        assert None is e.known_above(600 * MiB, 400 * MiB, 0.0)
        e.record_exact(500 * MiB, 600 * MiB, 10, 0.0)
        assert None is e.known_above(450 * MiB, 400 * MiB, 1.0)
        assert None is e.known_above(600 * MiB, 400 * MiB, 60.0)
        assert None is e.known_above(600 * MiB, None, 1.0)
