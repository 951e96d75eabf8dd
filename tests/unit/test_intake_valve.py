"""IntakeValve's consumer handling with stand-ins for the worker, its task consumer and the hub (the real
worker paths are in tests/integration/test_pause.py); and when the bootstep warns of an unbounded intake."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

from celery_memguard.worker.bootstep import unbounded_intake
from celery_memguard.worker.intake import IntakeValve


class _TaskConsumer:
    """kombu.Consumer's consume/cancel/consuming_from, as Celery's add_task_queue uses them."""

    def __init__(self) -> None:
        self.queues = ["celery"]
        self.active: set[str] = {"celery"}
        self.cancels = 0

    def consume(self) -> None:
        self.active = set(self.queues)

    def cancel(self) -> None:
        self.active.clear()
        self.cancels += 1

    def consuming_from(self, queue: str) -> bool:
        return queue in self.active


class _Hub:
    def __init__(self) -> None:
        self.readers: dict[int, Callable[..., Any]] = {}

    def add_reader(self, fd: int, callback: Callable[..., Any]) -> None:
        self.readers[fd] = callback

    def run_once(self) -> None:
        """What the event loop does when the wake pipe is readable."""
        for callback in list(self.readers.values()):
            callback()


def test_a_consumer_restarted_by_add_consumer_during_a_pause_is_cancelled_again() -> None:
    """add_consumer during a pause calls task_consumer.consume() (every queue subscribed again): the next held
    arrival wakes the loop, which cancels it again (before: it kept fetching until the resume)."""
    task_consumer = _TaskConsumer()
    started: list[str] = []
    worker = SimpleNamespace(_process_task=started.append, consumer=SimpleNamespace(task_consumer=task_consumer))
    valve = IntakeValve(worker)
    try:
        valve.install()
        hub = _Hub()
        valve.register_with_event_loop(hub)
        valve.set_paused(True)
        hub.run_once()
        assert task_consumer.cancels == 1 and not task_consumer.active
        task_consumer.queues.append("extra")  # the remote add_consumer: add_queue + consume
        task_consumer.consume()
        worker._process_task("held-1")  # a message fetched by the restarted consumer
        hub.run_once()
        assert task_consumer.cancels == 2 and not task_consumer.active
        assert started == [] and valve.held == 1
        worker._process_task("held-2")  # an arrival with the consumer still cancelled: no further cancel
        hub.run_once()
        assert task_consumer.cancels == 2
    finally:
        valve.close()


def test_unbounded_intake_only_without_event_loop_and_prefetch_limit() -> None:
    assert unbounded_intake(False, 0)
    assert not unbounded_intake(True, 0) and not unbounded_intake(False, 4)
