"""Kernel notifications of memory pressure: cgroup v1 usage thresholds and PSI triggers. Linux only.

A :class:`PressureWatch` holds the armed kernel objects and one daemon thread blocked in ``poll()`` on
them; each notification calls ``on_event(source)`` (the monitor then polls at once). No wake-up at all
while nothing crosses. What to arm is decided by the caller (:class:`celery_memguard.pace.PressurePlan`);
:func:`open_pressure_watch` only finds where it can be armed, in this order:

* the innermost memory cgroup with a limit (as :func:`~celery_memguard.probes.system.read_system` reads
  it): **cgroup v1** -- one eventfd registered through ``cgroup.event_control`` against
  ``memory.usage_in_bytes`` for every usage threshold (the kernel signals a crossing in either
  direction, checked every 128 pages charged per CPU: a few hundred KiB late at most); **cgroup v2** --
  a PSI trigger on the cgroup's ``memory.pressure`` (v2 has no usage thresholds);
* a PSI trigger on the host's ``/proc/pressure/memory`` when no cgroup limit applies (the host's
  available memory is then what counts), when the cgroup's could not be armed, or when
  ``memguard_psi_threshold`` is set.

A PSI trigger is ``some <stall µs> <window µs>``: the kernel signals (``POLLPRI``) when tasks stalled on
memory for that long within the window, at most once per window. A 1 s window needs CAP_SYS_RESOURCE;
without it the kernel accepts multiples of 2 s only, so 2 s is tried next.

Anything that cannot be armed raises :class:`PressureWatchError` with the reason; the caller falls back
to adaptive polling and says why. A notification source that fails later (``POLLERR``, e.g. the cgroup
was removed) is dropped and reported through ``on_lost``.
"""

from __future__ import annotations

import errno
import os
import select
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .base import close_fds
from .system import cgroup_memory_limit, memory_cgroup_dirs, physical_memory

__all__ = ["Armed", "PressureWatch", "PressureWatchError", "arm_cgroup1_thresholds", "arm_psi_trigger",
           "limited_memory_cgroup", "open_pressure_watch"]

CGROUP1 = "cgroup1-threshold"
PSI = "psi"


class PressureWatchError(OSError):
    """No kernel notification could be armed; the message says why, ``failures`` are the arming errors
    (empty when there was simply nothing to arm: no cgroup limit, no PSI)."""

    def __init__(self, message: str, failures: Sequence[OSError] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)


#: What a kernel or a place says when it does not offer a notification: no permission (an unprivileged
#: worker, a read-only cgroup mount), no such file, a trigger or window it does not take, PSI switched off.
REFUSALS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENODEV, errno.EINVAL,
                      errno.EOPNOTSUPP, errno.ENOTSUP})


def refused(exc: BaseException) -> bool:
    """Whether an arming error is the place saying no (a fallback, not a fault), see :data:`REFUSALS`."""
    return isinstance(exc, OSError) and exc.errno in REFUSALS


@dataclass
class Armed:
    """One armed kernel notification: the fd to poll, the poll mask, and the fds to close with it."""

    source: str  #: CGROUP1 or PSI
    detail: str  #: what was armed, for the operator
    fd: int
    mask: int
    owned: list[int] = field(default_factory=list)
    thresholds: tuple[int, ...] = ()  #: usage thresholds (cgroup v1), bytes
    trigger: str | None = None  #: the PSI trigger line

    def consume(self) -> None:
        """Clear the notification (an eventfd's counter; a PSI trigger is cleared by ``poll`` itself)."""
        if self.source == CGROUP1:
            try:
                os.eventfd_read(self.fd)
            except (BlockingIOError, OSError):
                pass

    def close(self) -> None:
        close_fds(*self.owned)
        self.owned = []


def limited_memory_cgroup(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> tuple[int, str, int] | None:
    """(version, directory, limit) of the innermost memory cgroup of this process that has a limit below the
    host's memory, or None: the cgroup :func:`~celery_memguard.probes.system.read_system` reads its memory from
    (a looser limit is no limit; there the host's memory counts, and so the host's PSI is armed)."""
    total = physical_memory(proc_root)
    for version, directory in memory_cgroup_dirs(proc_root, cgroup_root):
        limit = cgroup_memory_limit(version, directory, total)
        if limit is not None:
            return version, directory, limit
    return None


def arm_cgroup1_thresholds(directory: str, thresholds: Sequence[int]) -> Armed:
    """One eventfd signalled as ``memory.usage_in_bytes`` of the v1 cgroup ``directory`` crosses any threshold."""
    if not thresholds:
        raise PressureWatchError("no usage threshold below the cgroup limit")
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    owned = [efd]
    try:
        ufd = os.open(f"{directory}/memory.usage_in_bytes", os.O_RDONLY | os.O_CLOEXEC)
        owned.append(ufd)
        control = os.open(f"{directory}/cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC)
        try:
            for threshold in thresholds:
                os.write(control, f"{efd} {ufd} {int(threshold)}".encode())
        finally:
            os.close(control)
    except OSError:
        for fd in owned:
            os.close(fd)
        raise
    return Armed(CGROUP1, f"{directory}/memory.usage_in_bytes", efd, select.POLLIN, owned, tuple(thresholds))


def arm_psi_trigger(path: str, trigger: Callable[[int], tuple[int, int]],
                    windows_us: Sequence[int] = (1_000_000, 2_000_000)) -> Armed:
    """A PSI ``some`` trigger on ``path``: the first of ``windows_us`` the kernel accepts (see module doc)."""
    last: OSError | None = None
    for window in windows_us:
        stall, window_us = trigger(window)
        line = f"some {stall} {window_us}"
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.write(fd, line.encode() + b"\0")
        except OSError as exc:
            os.close(fd)
            last = exc
            continue
        return Armed(PSI, path, fd, select.POLLPRI, [fd], trigger=line)
    assert last is not None
    raise last


class PressureWatch:
    """Armed kernel notifications and the daemon thread that waits on them."""

    def __init__(self, armed: Sequence[Armed], notes: Sequence[str] = (), failures: Sequence[OSError] = ()) -> None:
        self.armed = list(armed)
        #: Why sources that were tried were not armed (the others were), and the errors arming them raised.
        self.notes = list(notes)
        self.failures = list(failures)
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None

    @property
    def sources(self) -> list[str]:
        return [a.source for a in self.armed]

    def start(self, on_event: Callable[[str], None], on_lost: Callable[[str, BaseException], None]) -> None:
        """Start the thread: ``on_event(source)`` per notification, ``on_lost(source, error)`` if a source
        fails (it is dropped) or ``on_event`` raises (the source stays watched: notifications go on)."""
        self._thread = threading.Thread(target=self._run, args=(on_event, on_lost), name="memguard-pressure",
                                        daemon=True)
        self._thread.start()

    def _run(self, on_event: Callable[[str], None], on_lost: Callable[[str, BaseException], None]) -> None:
        poller = select.poll()
        by_fd = {a.fd: a for a in self.armed}
        for armed in self.armed:
            poller.register(armed.fd, armed.mask)
        poller.register(self._stop_r, select.POLLIN)
        while by_fd:
            for fd, mask in poller.poll():
                if fd == self._stop_r:
                    return
                armed = by_fd.get(fd)
                if armed is None:
                    continue
                if mask & (select.POLLERR | select.POLLNVAL | select.POLLHUP):
                    poller.unregister(fd)
                    del by_fd[fd]
                    on_lost(armed.source, OSError(f"{armed.detail}: poll() reported {mask:#x}"))
                    continue
                armed.consume()
                try:
                    on_event(armed.source)
                except Exception as exc:  # fail open: report (once per cause, by on_lost), keep watching
                    on_lost(armed.source, exc)

    def close(self) -> None:
        """Stop the thread and close every armed fd (the kernel drops the registrations with them)."""
        try:
            os.write(self._stop_w, b"\0")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        for armed in self.armed:
            armed.close()
        close_fds(self._stop_r, self._stop_w)
        self._stop_r = self._stop_w = -1


def open_pressure_watch(
    usage_thresholds: Callable[[int], list[int]],
    psi_trigger: Callable[[int], tuple[int, int]],
    *,
    host_psi: bool,
    proc_root: str = "/proc",
    cgroup_root: str = "/sys/fs/cgroup",
) -> PressureWatch:
    """Arm what this process's place allows (see module doc); raise PressureWatchError saying why not.

    ``usage_thresholds(limit)`` gives the cgroup v1 usage thresholds for a cgroup limit; ``psi_trigger(window)``
    the PSI trigger for a window; ``host_psi`` asks for a host PSI trigger even inside a limited cgroup.
    """
    armed: list[Armed] = []
    reasons: list[str] = []
    failures: list[OSError] = []
    cgroup = limited_memory_cgroup(proc_root, cgroup_root)
    if cgroup is None:
        reasons.append("no memory cgroup limit")
        host_psi = True
    else:
        version, directory, limit = cgroup
        try:
            if version == 1:
                armed.append(arm_cgroup1_thresholds(directory, usage_thresholds(limit)))
            else:
                armed.append(arm_psi_trigger(f"{directory}/memory.pressure", psi_trigger))
        except PressureWatchError as exc:
            reasons.append(f"{directory}: {exc}")
        except OSError as exc:
            reasons.append(f"{directory}: {type(exc).__name__}: {exc}")
            failures.append(exc)
    if host_psi or not armed:
        path = f"{proc_root}/pressure/memory"
        if not os.path.exists(path):
            reasons.append(f"{path} not present (kernel without PSI, or booted without psi=1)")
        else:
            try:
                armed.append(arm_psi_trigger(path, psi_trigger))
            except OSError as exc:
                reasons.append(f"{path}: {type(exc).__name__}: {exc}")
                failures.append(exc)
    if not armed:
        raise PressureWatchError("; ".join(reasons) or "nothing to arm", failures)
    return PressureWatch(armed, reasons, failures)
