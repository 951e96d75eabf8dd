"""Memory-heavy tasks: one call whose own peak is far above what tasks usually need.

A task's *own peak* is the child's resident high-watermark during the call minus
its RSS when the call started (``per_task_peak - mem_before``; where the kernel's
peak cannot be reset, the retained delta is used as a lower bound). Python keeps
that high-watermark in the child long after the call (freed arenas and heap are
rarely returned), so one heavy call raises the child's footprint for good.

A call is heavy when its own peak reaches ``threshold`` bytes, or ``multiple``
times the typical own peak (the median of the latest calls of *all* tasks), with
a floor so that tiny tasks never trigger. Repeats for the same task name are
rate-limited: reported again only after ``repeat_after`` seconds (with the
number of heavy calls seen meanwhile) or when the peak is much higher than the
last one reported.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from ..samples import TaskSample
from ..units import MiB, format_mib, mib
from .base import HEAVY_TASK, Detector, Finding
from .stats import median

__all__ = ["HeavyTaskDetector", "advice"]



def advice(task: str, peak: int, typical: float | None) -> str:
    """The operator advice attached to a heavy-task finding."""
    compared = f" (typical task: {format_mib(typical)})" if typical else ""
    return (
        f"{task} needed {format_mib(peak)} of its own{compared}; the child keeps that high-watermark until it "
        f"exits. Chunk the work (smaller inputs per call, stream instead of loading whole payloads), or route "
        f"{task} to its own queue (task_routes) served by a dedicated worker with low concurrency and its own "
        f"memory limits."
    )


class HeavyTaskDetector(Detector):
    """Reports calls whose own peak is above a size threshold or a multiple of the typical peak.

    * ``threshold`` – own peak in bytes that is always heavy (``None``: no fixed threshold).
    * ``multiple`` – own peak above this many times the typical one is heavy (``None``: off).
      Both come from ``memguard_heavy_task_threshold`` (default ``"10x"``, in :class:`MemGuardConfig`).
    * ``floor`` – with ``multiple``, peaks below this are never heavy.
    * ``history`` – calls (of all tasks) the typical peak is the median of.
    * ``min_history`` – calls needed before ``multiple`` applies.
    * ``repeat_after`` – seconds before the same task name is reported again.
    * ``worse_factor`` – a peak this many times the last one reported is reported at once.
    * ``max_tasks`` – task names remembered for rate limiting.
    """

    name = "heavy"

    def __init__(
        self,
        *,
        threshold: int | None,
        multiple: float | None,
        floor: int = 16 * MiB,
        history: int = 512,
        min_history: int = 20,
        repeat_after: float = 600.0,
        worse_factor: float = 1.5,
        max_tasks: int = 1024,
    ) -> None:
        if threshold is None and multiple is None:
            raise ValueError("set threshold, multiple or both")
        if threshold is not None and threshold <= 0:
            raise ValueError("threshold must be > 0")
        if multiple is not None and multiple <= 1:
            raise ValueError("multiple must be > 1")
        self.threshold = threshold
        self.multiple = multiple
        self.floor = floor
        self.min_history = min_history
        self.repeat_after = repeat_after
        self.worse_factor = worse_factor
        self.max_tasks = max_tasks
        self._peaks: deque[int] = deque(maxlen=history)
        self._typical: float | None = None
        self._since_typical = 0
        # task -> (last reported at, last reported peak, heavy calls since)
        self._reported: OrderedDict[str, tuple[float, int, int]] = OrderedDict()

    @property
    def typical(self) -> float | None:
        """The typical own peak (bytes), once enough calls were seen."""
        return self._typical

    def own_peak(self, sample: TaskSample) -> int:
        if sample.per_task_peak is not None:
            return max(0, sample.per_task_peak - sample.mem_before, sample.mem_after - sample.mem_before)
        return max(0, sample.mem_after - sample.mem_before)

    def observe_task(self, sample: TaskSample, now: float) -> list[Finding]:
        peak = self.own_peak(sample)
        typical = self._typical
        heavy = self.threshold is not None and peak >= self.threshold
        if not heavy and self.multiple is not None and typical is not None:
            heavy = peak >= max(self.floor, self.multiple * typical)
        self._remember(peak)
        if not heavy:
            return []
        return self._report(sample, peak, now)

    def _remember(self, peak: int) -> None:
        self._peaks.append(peak)
        self._since_typical += 1
        # The median is recomputed every few calls, not every call.
        if len(self._peaks) >= self.min_history and (self._typical is None or self._since_typical >= 32):
            self._typical = median(self._peaks)
            self._since_typical = 0

    def _report(self, sample: TaskSample, peak: int, now: float) -> list[Finding]:
        last = self._reported.get(sample.task)
        if last is not None:
            at, last_peak, count = last
            self._reported.move_to_end(sample.task)
            if now - at < self.repeat_after and peak < self.worse_factor * last_peak:
                self._reported[sample.task] = (at, last_peak, count + 1)
                return []
            occurrences = count + 1
        else:
            occurrences = 1
        self._reported[sample.task] = (now, peak, 0)
        if len(self._reported) > self.max_tasks:
            self._reported.popitem(last=False)
        fields: dict[str, object] = {
            "task": sample.task,
            "task_id": sample.task_id,
            "peak_mib": mib(peak),
            "retained_mib": round((sample.mem_after - sample.mem_before) / MiB, 1),
            "pid": sample.pid,
            "occurrences": occurrences,
        }
        if self._typical is not None:
            fields["typical_peak_mib"] = mib(self._typical)
        fields["advice"] = advice(sample.task, peak, self._typical)
        return [Finding(HEAVY_TASK, fields, task=sample.task)]
