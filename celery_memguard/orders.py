"""How an order reaches a pool child's task without any Python signal handler having to run.

A Python-level signal handler runs only in the thread CPython believes is the main
thread, and only between bytecodes. That is not always possible: on CPython 3.13.0 a
process forked from a non-main thread (billiard forks replacement children from its
supervisor thread when the transport has no event loop, e.g. kombu's filesystem
transport) never runs Python signal handlers at all. So orders do not depend on one:

* every pool child starts an **order watcher** (:class:`OrderWatcher`), a daemon thread
  that blocks every asynchronous signal and waits for ``ORDER_SIGNAL`` in
  ``sigwait`` (a plain system call: no handler involved);
* the master sends ``ORDER_SIGNAL`` *to that thread* (:func:`signal_thread`, Linux
  ``tgkill``), after writing the order to the child's board slot. A signal aimed at
  a thread that blocks it is never discarded, whatever disposition a task gave the
  signal, and never reaches the task's thread;
* to stop a task, the watcher raises the exception in the task's thread with
  :func:`raise_in_thread` (``PyThreadState_SetAsyncExc``): CPython raises it at the
  next bytecode boundary of that thread, so a task in Python code stops within
  microseconds. A task blocked in C code (a long ``read``, a C extension) sees it
  when the call returns; the master's SIGKILL after ``memguard_kill_grace`` covers a
  task that never returns or swallows the exception.

``PyThreadState_SetAsyncExc`` takes an exception *class*; :func:`delivering` makes a
one-off subclass whose construction hands back the prepared
:class:`~celery_memguard.exceptions.MemoryLimitExceeded` (so the task fails with that
exact exception, its message naming memory and limit) and notes the delivery.

Where ``tgkill`` is not available (non-Linux), :func:`signal_thread` falls back to a
process-directed signal, which the child's main thread receives; its handler then
obeys (that path does depend on Python signal handlers). No Celery imports here.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import threading
from typing import Callable

from .board import ORDER_SIGNAL

__all__ = ["OrderWatcher", "signal_thread", "raise_in_thread", "cancel_in_thread", "delivering",
           "SYNCHRONOUS_SIGNALS"]

#: Signals raised by a thread's own faults; never blocked in the watcher (blocking them would turn a fault
#: into an immediate kill instead of faulthandler's report).
SYNCHRONOUS_SIGNALS = frozenset(
    getattr(signal, name) for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS", "SIGABRT")
    if hasattr(signal, name)
)

#: ``tgkill`` system call numbers, for a libc too old to export ``tgkill`` (glibc < 2.30).
_SYS_TGKILL = {"x86_64": 234, "aarch64": 131, "i386": 270, "i686": 270, "armv7l": 268, "ppc64le": 250,
               "s390x": 241, "riscv64": 131}

_tgkill: Callable[[int, int, int], int] | None = None
_tgkill_looked_up = False


def _find_tgkill() -> Callable[[int, int, int], int] | None:
    global _tgkill, _tgkill_looked_up
    if _tgkill_looked_up:
        return _tgkill
    _tgkill_looked_up = True
    if not platform.system() == "Linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    func = getattr(libc, "tgkill", None)
    if func is not None:
        func.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
        func.restype = ctypes.c_int
        _tgkill = func
        return _tgkill
    number = _SYS_TGKILL.get(platform.machine())
    syscall = getattr(libc, "syscall", None)
    if number is None or syscall is None:
        return None
    syscall.restype = ctypes.c_long

    def tgkill(pid: int, tid: int, signum: int) -> int:
        return int(syscall(ctypes.c_long(number), ctypes.c_long(pid), ctypes.c_long(tid), ctypes.c_long(signum)))

    _tgkill = tgkill
    return _tgkill


def signal_thread(pid: int, tid: int, signum: int = ORDER_SIGNAL) -> bool:
    """Send ``signum`` to thread ``tid`` of process ``pid``; True if it was aimed at that thread.

    Falls back to the whole process (``os.kill``) when ``tid`` is 0 (not known), the thread is
    gone, or the platform cannot aim at a thread. Raises ProcessLookupError if ``pid`` is gone.
    """
    tgkill = _find_tgkill() if tid > 0 else None
    if tgkill is not None:
        if tgkill(pid, tid, signum) == 0:
            return True
        # The thread is gone (ESRCH: a new child holds the slot, or the process exited): aim at the process.
    os.kill(pid, signum)
    return False


def raise_in_thread(ident: int, exc_type: type[BaseException]) -> bool:
    """Schedule ``exc_type`` to be raised in thread ``ident`` (a ``threading.get_ident()`` value)."""
    return bool(ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type)))


def cancel_in_thread(ident: int) -> None:
    """Withdraw an exception scheduled with :func:`raise_in_thread` and not raised yet."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)


def delivering(exc: BaseException, on_delivery: Callable[[], None]) -> type[BaseException]:
    """A class to hand :func:`raise_in_thread`: raising it raises ``exc`` itself and calls ``on_delivery``.

    CPython instantiates the scheduled class in the target thread when it raises it; a ``__new__``
    that returns an instance of a base class is accepted, so the task sees exactly ``exc``.
    """
    base = type(exc)

    class Delivered(base):  # type: ignore[valid-type, misc]
        def __new__(cls, *_args: object) -> BaseException:  # type: ignore[misc]
            on_delivery()
            return exc

    Delivered.__name__ = Delivered.__qualname__ = base.__name__
    Delivered.__module__ = base.__module__
    return Delivered


class OrderWatcher:
    """A daemon thread that waits for ``ORDER_SIGNAL`` and calls ``on_signal`` each time it arrives.

    It is created with every asynchronous signal blocked (threads inherit the creator's mask, so it
    never runs with them unblocked) and waits in ``sigwait``; process-directed signals (SIGTERM,
    billiard's soft time limit...) therefore keep going to the main thread, as before.
    """

    def __init__(self, on_signal: Callable[[], None], on_error: Callable[[Exception], None],
                 signum: int = ORDER_SIGNAL) -> None:
        self.on_signal = on_signal
        self.on_error = on_error
        self.signum = signum
        self.thread = threading.Thread(target=self._run, name="memguard-orders", daemon=True)
        self.native_id = 0

    def start(self) -> int:
        """Start the thread; return its kernel thread id (what :func:`signal_thread` aims at)."""
        blocked = set(signal.valid_signals()) - SYNCHRONOUS_SIGNALS
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self.thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        self.native_id = self.thread.native_id or 0
        return self.native_id

    def _run(self) -> None:
        wanted = {self.signum}
        while True:
            try:
                signal.sigwait(wanted)
            except Exception as exc:  # cannot wait: give up (orders still reach task boundaries)
                self.on_error(exc)
                return
            try:
                self.on_signal()
            except Exception as exc:
                self.on_error(exc)
