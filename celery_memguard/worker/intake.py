"""Stop and restart a Celery worker's task intake: the switch the Guard flips under memory pressure.

Two things make up a worker's intake, and a pause stops both:

* **starting tasks.** Every task a prefork worker runs reaches its pool through one method,
  ``WorkController._process_task`` (``req.execute_using_pool(pool)``): messages handed on by the
  strategy, requests let through by the pool's semaphore (``_process_task_sem``) when a slot
  frees, ETA/countdown tasks when due, rate-limited tasks when their bucket refills. The switch
  replaces it on the worker instance (:meth:`IntakeValve.install`, before the Consumer step takes
  ``w.process_task``). While paused, a request that reaches it is *held*: reserved, its message
  unacknowledged, not started. Tasks already running finish. On resume the held requests start in
  the order they came. A held request the consumer has dropped meanwhile (a lost broker
  connection: ``Consumer.on_close`` clears ``reserved_requests``, the broker redelivers its
  message) is not started. A held request keeps the pool semaphore's slot it took, and gives it
  back when it runs, as any request does.
* **fetching messages.** The task consumer is cancelled (``task_consumer.cancel()``: AMQP
  ``basic.cancel``, Redis stops issuing ``BRPOP`` for the queues), so no further message is
  delivered; the queues it consumes from are left as they are (``add_consumer`` /
  ``cancel_consumer`` still work). On resume ``task_consumer.consume()`` subscribes again. Messages
  the broker had already sent are held as above (py-amqp requeues any that arrive for the cancelled
  consumer tag). After a reconnection the new task consumer is cancelled too while the pause lasts.
  Celery's ``add_task_queue`` (the remote ``add_consumer`` command) calls ``task_consumer.consume()``,
  which subscribes every queue again during a pause: what arrives is held (at most the prefetch
  count), and each held arrival wakes the loop, which cancels the consumer again.

Kombu's consumers and the hub are not thread-safe, and the decision is taken in the monitor
thread: :meth:`IntakeValve.set_paused` only sets the flag (which stops starting tasks at once) and
writes a byte to a pipe the event loop watches; the loop thread then cancels or restarts the
consumer and starts the held tasks (:meth:`IntakeValve._apply`). The pipe is registered with the
hub by the bootstep's ``register_with_event_loop`` (again after each reconnection).

Without an event loop (a transport that only polls, like kombu's filesystem transport) the
consumer cannot be cancelled from another thread: the pause holds tasks only, and the consumer
fetches at most its prefetch count (``worker_prefetch_multiplier`` x concurrency) of messages,
which stay held; on resume the held tasks are started from the worker's timer thread, as Celery
starts ETA tasks there. With ``worker_prefetch_multiplier = 0`` (no prefetch limit) nothing bounds
that: a pause pulls the whole queue into held requests, so the bootstep logs
``memguard.intake_unbounded`` (a warning) at start in that configuration.

Messages are held unacknowledged: a warm or cold shutdown while paused returns them to the
broker (AMQP requeues them when the channel closes; Redis restores its unacked messages at
shutdown), so none is lost and none runs twice. On Redis a pause longer than the transport's
``visibility_timeout`` (1 hour by default) lets the broker redeliver held messages to another
worker.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any, Callable

from .. import events

__all__ = ["IntakeValve"]


class IntakeValve:
    """Holds a worker's task intake while paused (an :class:`~celery_memguard.guard.IntakeSwitch`)."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.paused = False
        self._held: deque[Any] = deque()
        self._lock = threading.Lock()  # paused + held change together
        self._start: Callable[[Any], Any] | None = None  # the worker's own _process_task
        self._cancelled: Any = None  # the task consumer this valve cancelled, while paused
        self._hub: Any = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    @property
    def held(self) -> int:
        """Requests received while paused and not started yet."""
        return len(self._held)

    # -- wiring (the worker's main thread) ---------------------------------
    def install(self) -> None:
        """Route every task start through :meth:`_process_task` (call after the Pool step, before Consumer)."""
        w = self.worker
        original = w._process_task
        self._start = original
        w._process_task = self._process_task  # _process_task_sem and the semaphore look it up per call
        if getattr(w, "process_task", None) == original:  # no semaphore: the consumer calls it directly
            w.process_task = self._process_task

    def register_with_event_loop(self, hub: Any) -> None:
        """Watch the wake pipe in the event loop (each time the loop starts: after a reconnection too)."""
        self._hub = hub
        hub.add_reader(self._wake_r, self._on_wake)
        if self.paused:
            self._wake()  # the loop subscribes a new task consumer right after this: cancel it then

    # -- any thread ----------------------------------------------------------
    def set_paused(self, paused: bool) -> None:
        """Stop (True) or restart (False) intake; tasks stop starting at once, the rest follows in the loop."""
        with self._lock:
            self.paused = paused
        if self._hub is not None:
            self._wake()
        elif not paused:
            self._release_from_timer()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # a wake-up is already pending

    # -- the consumer's thread -------------------------------------------------
    def _process_task(self, req: Any) -> Any:
        """Start ``req`` (the worker's own ``_process_task``), or hold it while paused."""
        with self._lock:
            if self.paused:
                self._held.append(req)
                if self._hub is not None:
                    self._wake()  # the loop checks the consumer is still cancelled (add_consumer restarts it)
                return None
        assert self._start is not None
        return self._start(req)

    def _on_wake(self, *_args: Any) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass
        try:
            self._apply()
        except Exception as exc:  # fail open: the loop goes on; the next flip tries again
            events.error("intake.apply", exc)

    def _apply(self) -> None:
        """Bring the consumer to the wanted state (event loop thread)."""
        consumer = getattr(getattr(self.worker, "consumer", None), "task_consumer", None)
        if self.paused:
            if consumer is not None and (consumer is not self._cancelled or _consuming(consumer)):
                consumer.cancel()
                self._cancelled = consumer
            return
        cancelled, self._cancelled = self._cancelled, None
        if cancelled is not None and cancelled is consumer and not _stopping():
            consumer.consume()
        self._release()

    def _release(self) -> None:
        """Start the held requests in order, while not paused (never during shutdown: they go back)."""
        from celery.worker.state import reserved_requests

        assert self._start is not None
        while not _stopping():
            with self._lock:
                if self.paused or not self._held:
                    return
                req = self._held.popleft()
            if req in reserved_requests:  # else dropped by the consumer (connection lost): redelivered
                try:
                    self._start(req)
                except Exception as exc:
                    events.error("intake.release", exc)

    def _release_from_timer(self) -> None:
        """No event loop: start the held requests from the worker's timer thread (as Celery does ETA tasks)."""
        timer = getattr(self.worker, "timer", None)
        if timer is None:
            return
        timer.call_after(0, self._release_safely)

    def _release_safely(self) -> None:
        try:
            self._release()
        except Exception as exc:
            events.error("intake.release", exc)

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def _consuming(consumer: Any) -> bool:
    """Whether the task consumer consumes from any of its queues (``add_task_queue`` restarted it)."""
    try:
        return any(consumer.consuming_from(queue) for queue in consumer.queues)
    except Exception:
        return False


def _stopping() -> bool:
    """Whether the worker is shutting down (held messages then go back to the broker unstarted)."""
    try:
        from celery.worker import state

        return state.should_stop is not None or state.should_terminate is not None
    except Exception:
        return False
