"""Structured events: the names and keys here are MemGuard's public API.

Events are rendered by structlog (``memguard_log_format``: ``"json"`` lines or
``"console"`` text) and go where ``memguard_log_target`` says:

* ``"direct"`` (default): MemGuard writes each line itself with one ``os.write``
  to a file descriptor of its own: ``memguard_log_file`` when set, else the
  worker's ``--logfile``, else standard error, or ``memguard-<node>.log`` in the
  worker's working directory when standard error is ``/dev/null`` or closed (a
  ``--detach``-ed worker without ``--logfile``). See :func:`default_log_file`.
* ``"logging"``: each line becomes the message of a record on the stdlib
  ``celery_memguard`` logger (level info/warning/error as the event's), with the
  event's fields as ``record.memguard``; the project's handlers (Sentry, JSON
  formatters, journald) see them and decide where they go.
* ``"both"``: both of the above.

The line is byte-for-byte the same whichever way it goes, so ``report`` reads it
(a handler's prefix before the JSON object is skipped by the reader).

Direct writes never block a worker and never take it down: the file is opened
with ``O_APPEND | O_NONBLOCK`` (a FIFO with no reader is opened read-write, so
the open cannot hang either), standard error is reopened non-blocking where it
is a pipe or terminal, and a line that cannot be written at once (``EAGAIN``,
``ENOSPC``, ``EIO``...) is dropped and counted. Dropped events are counted
across the master and the pool children (a shared counter; a lower bound when
two processes drop at the same instant), shown by the ``memguard`` status
command and in ``memguard.stopped``, and the first drop prints one warning on
standard error. A log file moved away (logrotate) is noticed within a second
and reopened by path, like :class:`logging.handlers.WatchedFileHandler`; the
check is one ``stat`` per process at most once a second.

Master and pool children (forked) share the open file description; a line is a
single ``write`` to an ``O_APPEND`` file, so lines from different processes never
interleave mid-line. A line cut short by a full pipe is ended with a newline
before the next one, so at most that one line is corrupt.

Every event carries ``ts`` (ISO 8601 UTC), ``level``, ``source_pid`` (the
emitting process) and ``hostname`` (the Celery node name, once known). ``pid``,
where present, is always the pool child the event is about.

:func:`error` implements fail-open reporting: ``memguard.error`` is logged once
per cause (``where`` + exception type), later repeats are counted, not logged.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import socket
import stat
import struct
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, MutableMapping


if TYPE_CHECKING:
    from .detectors.base import Finding

__all__ = [
    "log_finding",
    "STARTED",
    "POOL_UNSUPPORTED",
    "CHILD_RECYCLED",
    "TASK_KILLED",
    "WOULD_RECYCLE",
    "WOULD_KILL",
    "ERROR",
    "STOPPED",
    "DRAINING",
    "CHILD_UNGUARDED",
    "LEAK_SUSPECTED",
    "LEAK_CLEARED",
    "LEAK_SITES",
    "LEAK_TYPES",
    "HEAVY_TASK",
    "MASTER_GROWTH",
    "CHILD_LOST",
    "RECYCLE_STORM",
    "LIMIT_UNREACHABLE",
    "PRESSURE_UNRELIEVED",
    "PRESSURE_WATCH",
    "PAUSED",
    "RESUMED",
    "EVENT_KEYS",
    "EVENT_DOCS",
    "EXTRA_KEYS",
    "KEY_DOCS",
    "EVENT_KEY_DOCS",
    "key_doc",
    "LOGGER_NAME",
    "TARGETS",
    "ORDER_SIGNAL_REPLACED",
    "SAMPLE",
    "METRICS_SERVING",
    "INTAKE_UNBOUNDED",
    "EventLog",
    "default_log_file",
    "open_log_file",
    "stderr_lost",
    "configure",
    "emit",
    "error",
    "get",
]

STARTED = "memguard.started"
POOL_UNSUPPORTED = "memguard.pool_unsupported"
CHILD_RECYCLED = "memguard.child_recycled"
TASK_KILLED = "memguard.task_killed"
WOULD_RECYCLE = "memguard.would_recycle"
WOULD_KILL = "memguard.would_kill"
ERROR = "memguard.error"
STOPPED = "memguard.stopped"
#: Warm shutdown began: the hard limit is enforced until the pool's last child has exited.
DRAINING = "memguard.draining"
#: A pool child with no board slot (its pool index is beyond the board): measured, only SIGKILL possible.
CHILD_UNGUARDED = "memguard.child_unguarded"
#: The configured metric (USS/PSS) cannot be read for a child: RSS stands in; logged once per worker.
METRIC_UNAVAILABLE = "memguard.metric_unavailable"
# Findings (detectors, diagnostics, forensics, pool policies); every module names events from here.
LEAK_SUSPECTED = "memguard.leak_suspected"
LEAK_CLEARED = "memguard.leak_cleared"
#: Informational: a task's retained memory grows but is not judged yet (or stopped before it was).
GROWTH_WATCH = "memguard.growth_watch"
LEAK_SITES = "memguard.leak_sites"
LEAK_TYPES = "memguard.leak_types"
HEAVY_TASK = "memguard.heavy_task"
MASTER_GROWTH = "memguard.master_growth"
CHILD_LOST = "memguard.child_lost"
RECYCLE_STORM = "memguard.recycle_storm"
LIMIT_UNREACHABLE = "memguard.limit_unreachable"
PRESSURE_UNRELIEVED = "memguard.pressure_unrelieved"
#: Once at start when a policy reads memory pressure: how the monitor learns of it between polls (``wake``: the
#: kernel notifications armed, e.g. ``["cgroup1-threshold"]`` or ``["psi"]``, empty when none; ``adaptive_poll``:
#: whether polling speeds up while available memory falls; ``fallback``: why no (or not every) kernel source).
PRESSURE_WATCH = "memguard.pressure_watch"
ORDER_SIGNAL_REPLACED = "memguard.order_signal_replaced"
#: Task intake paused (memguard_pause_below / memguard_pause_pool_above crossed): no message fetched, no task started.
PAUSED = "memguard.paused"
#: Task intake resumed (memory back past the threshold by the margin, for memguard_pause_resume_after seconds).
RESUMED = "memguard.resumed"
#: Every ``memguard_sample_interval`` seconds: the latest poll's memory readings (see celery_memguard.sampling).
SAMPLE = "memguard.sample"
#: The Prometheus exporter listens (``memguard_metrics_port``): where to scrape this worker.
METRICS_SERVING = "memguard.metrics_serving"
#: At start, with a pause threshold on a transport without an event loop and no prefetch limit: a pause
#: cannot stop fetching, so it would pull the whole queue into held requests.
INTAKE_UNBOUNDED = "memguard.intake_unbounded"

#: Every event name and the keys it carries (besides ts, level, source_pid, hostname).
EVENT_KEYS: dict[str, tuple[str, ...]] = {
    STARTED: ("pool", "concurrency", "metric", "soft_limit_mib", "hard_limit_mib", "poll_interval", "dry_run",
              "kill_grace", "effective_memory_mib", "policies", "leak_attribution", "log", "pool_limit_mib",
              "min_available_mib", "sample_interval"),
    POOL_UNSUPPORTED: ("pool", "can", "cannot"),
    CHILD_RECYCLED: ("pid", "reason", "mem_mib", "limit_mib", "metric", "tasks_run", "lifetime_s", "task", "task_id"),
    TASK_KILLED: ("task", "task_id", "pid", "mem_mib", "limit_mib", "metric", "reason", "signal"),
    WOULD_RECYCLE: ("pid", "reason", "mem_mib", "limit_mib", "metric", "tasks_run", "lifetime_s", "task", "task_id"),
    WOULD_KILL: ("task", "task_id", "pid", "mem_mib", "limit_mib", "metric", "reason", "signal"),
    ERROR: ("where", "error"),
    STOPPED: ("polls", "decisions", "shutdown", "drained_s", "events_dropped"),
    DRAINING: ("children", "busy", "enforcing"),
    CHILD_UNGUARDED: ("pid", "index", "board_slots", "effect", "fix"),
    METRIC_UNAVAILABLE: ("pid", "metric", "used", "error", "effect", "fix"),
    ORDER_SIGNAL_REPLACED: ("pid", "task", "task_id", "signal", "handler", "effect"),
    SAMPLE: ("metric", "children", "pool_mib", "pool_rss_mib", "master_mib", "master_rss_mib", "available_mib",
             "tasks", "spawn_time_s", "replace_gaps_s"),
    METRICS_SERVING: ("url", "addr", "port", "port_range", "busy_ports"),
    INTAKE_UNBOUNDED: ("transport", "prefetch_multiplier"),
    LEAK_SUSPECTED: ("task", "kib_per_call", "confidence", "calls_observed", "children",
                                "projected_calls_to_soft_limit", "since_calls"),
    LEAK_CLEARED: ("task", "reason", "kib_per_call", "calls_observed", "since_calls"),
    GROWTH_WATCH: ("task", "state", "kib_per_call", "growth_mib_per_child", "calls_observed", "children",
                   "reason", "note"),
    HEAVY_TASK: ("task", "task_id", "peak_mib", "retained_mib", "pid", "occurrences",
                            "typical_peak_mib", "advice"),
    MASTER_GROWTH: ("mem_mib", "mib_per_hour", "since_s", "growth_mib", "reserved", "note"),
    LEAK_SITES: ("task", "task_id", "pid", "calls_traced", "sites"),
    LEAK_TYPES: ("task", "task_id", "pid", "calls_traced", "types"),
    CHILD_LOST: ("pid", "signal", "exitcode", "task", "task_id", "task_source", "task_started_s_before",
                 "rss_at_task_start_mib", "last_mem_mib", "last_rss_mib", "last_poll_s_before",
                 "last_poll_during_task", "growth_mib_per_s", "oom_kill_delta", "likely_oom", "reason",
                 "hard_limit_mib"),
    RECYCLE_STORM: ("spawn_time_s", "recycles_per_minute", "max_recycles_per_minute",
                               "throughput_lost", "concurrency", "deferred", "reasons", "cause"),
    LIMIT_UNREACHABLE: ("reason", "limit_mib", "fresh_child_mib", "master_mib", "metric", "pid", "cause",
                                   "fix"),
    PRESSURE_WATCH: ("wake", "detail", "thresholds_mib", "psi_trigger", "adaptive_poll", "adaptive_floor_s",
                     "poll_interval", "mode", "fallback"),
    PRESSURE_UNRELIEVED: ("trigger", "available", "min_available", "psi_some_avg10", "psi_threshold",
                                     "children", "children_rss_mib", "fresh_rss_mib", "largest_pid",
                                     "largest_relief_mib", "min_relief_mib", "cause", "retry_s"),
    PAUSED: ("trigger", "available_mib", "pool_mib", "threshold_mib", "paused_s", "held", "running",
             "dry_run"),
    RESUMED: ("trigger", "available_mib", "pool_mib", "threshold_mib", "paused_s", "held", "running",
              "dry_run"),
}


#: When each event is logged (Markdown, for the events reference generated from this module).
EVENT_DOCS: dict[str, str] = {
    STARTED: "The worker started with MemGuard (level info): the settings it enforces.",
    POOL_UNSUPPORTED: "The worker runs a pool without child processes (solo, threads, gevent, eventlet): "
                      "MemGuard validated its settings and stays idle (level warning).",
    CHILD_RECYCLED: "A recycle was ordered: the child finishes its current task (its result and ack go out), "
                    "then exits and is replaced (level warning).",
    TASK_KILLED: "A running task was stopped: `MemoryLimitExceeded` raised in it, or `SIGKILL` after "
                 "`memguard_kill_grace` (level error).",
    WOULD_RECYCLE: "In dry run (`memguard_dry_run`): a recycle that would have been ordered; nothing was done.",
    WOULD_KILL: "In dry run (`memguard_dry_run`): a task that would have been stopped; nothing was done.",
    ERROR: "An internal error MemGuard caught and carried on from (fail-open); logged once per cause "
           "(`where` and the exception type), repeats are counted (level error).",
    STOPPED: "The monitor stopped: after the pool drained (warm shutdown) or at once (cold).",
    DRAINING: "Warm shutdown began: the hard limit (and its SIGKILL escalation) stays enforced until the pool's "
              "last child has exited; no soft recycles.",
    CHILD_UNGUARDED: "A pool child whose index is beyond the shared board (more than 256 children, or 4x the "
                     "configured maximum, alive at once): measured and SIGKILLed above the hard limit only.",
    METRIC_UNAVAILABLE: "Once per worker: the configured metric (USS/PSS) cannot be read for a child "
                        "(non-dumpable, another user); RSS stands in, hard limit only.",
    ORDER_SIGNAL_REPLACED: "Once per child: a task installed its own `SIGURG` handler (or ignored `SIGURG`). "
                           "Orders still reach the child (they go to its order-watcher thread); an idle child "
                           "asked to leave then does so after its next task.",
    SAMPLE: "Every `memguard_sample_interval` seconds (default 60): what the latest poll read, nothing measured "
            "for it, and the tasks finished since the previous sample (once more at stop); the HTML report's "
            "timelines and `celery memguard advise`'s evidence.",
    LEAK_SUSPECTED: "A task retains memory per call (level warning); logged once, then again on material change.",
    LEAK_CLEARED: "A leak suspect stopped growing.",
    GROWTH_WATCH: "Informational (level info), not a leak finding: a task's retained memory grows but is not "
                  "judged yet (`state` `watching`: children now measure every call of it), or it stopped "
                  "before being named (`settled`: a cache that filled).",
    LEAK_SITES: "After tracing a suspect's next calls in a child with tracemalloc: where the memory it kept "
                "was allocated.",
    LEAK_TYPES: "After tracing a suspect's next call in a child with pympler: which object types grew.",
    HEAVY_TASK: "A task's own peak is above `memguard_heavy_task_threshold`.",
    MASTER_GROWTH: "The worker's main process keeps growing beyond `memguard_master_growth_threshold`.",
    CHILD_LOST: "A child died by a signal MemGuard did not send (OOM killer, operator, ...): what it was running "
                "and whether the OOM killer is the likely cause (level error).",
    RECYCLE_STORM: "Soft recycles are being rate-limited (`memguard_max_recycles_per_minute`, "
                   "`memguard_max_throughput_loss`): how many, why, and what they cost.",
    LIMIT_UNREACHABLE: "A freshly forked child is already above the soft limit: recycling for it stops until a "
                       "fresh child starts below it.",
    PRESSURE_WATCH: "Once at start, when a pressure setting is on: what wakes the monitor between polls (kernel "
                    "notifications armed, adaptive polling) and, where nothing or not everything could be armed, "
                    "why (see docs/pressure.md).",
    PAUSED: "Task intake paused (`memguard_pause_below` / `memguard_pause_pool_above` crossed): no message is "
            "fetched and no task started until `memguard.resumed`; running tasks finish (level warning).",
    RESUMED: "Task intake resumed: memory is back past the threshold by its margin for "
             "`memguard_pause_resume_after` seconds; held tasks start.",
    PRESSURE_UNRELIEVED: "Under memory pressure, no child holds `memguard_pressure_min_relief` more than a fresh "
                         "one (once per episode). Trigger `paused`: the intake pause's resume level cannot be "
                         "reached with fresh children, intake resumes after `retry_s`; trigger `critical`: a task "
                         "stopped below `memguard_critical_available` freed too little, no task is stopped for "
                         "`retry_s`.",
    INTAKE_UNBOUNDED: "Once at start (level warning), with `memguard_pause_below` / `memguard_pause_pool_above` on a "
                      "transport without an event loop (kombu's filesystem transport) and "
                      "`worker_prefetch_multiplier = 0`: a pause cannot stop fetching there, so it would pull the "
                      "whole queue into held requests; set a prefetch multiplier.",
    METRICS_SERVING: "Once at start, with `memguard_metrics_port`: the Prometheus exporter listens; where to "
                     "scrape this worker (docs/metrics.md).",
}

#: Keys some occurrences of an event carry besides its :data:`EVENT_KEYS`: recycles and kills carry the
#: limit in the policy's unit and the policy's details (a custom policy's ``detail`` adds its own keys).
_DECISION_EXTRAS = ("limit_s", "limit_tasks", "ranking", "tasks_run", "lifetime_s", "max_lifetime_s", "max_tasks",
                    "total", "pool_limit", "pool_hard_limit", "over_hard_limit_s", "leak_bytes_per_second", "eta_s",
                    "horizon_s", "trigger", "available", "min_available", "psi_some_avg10", "psi_threshold", "idle",
                    "lasting_relief", "critical_available", "growth_mib_per_s", "woken_by", "since_wake_ms")
EXTRA_KEYS: dict[str, tuple[str, ...]] = {
    name: tuple(key for key in _DECISION_EXTRAS if key not in EVENT_KEYS[name])
    for name in (CHILD_RECYCLED, WOULD_RECYCLE, TASK_KILLED, WOULD_KILL)
}

#: What each key means (Markdown), wherever it appears; :data:`EVENT_KEY_DOCS` overrides it for one event.
KEY_DOCS: dict[str, str] = {
    "pool": "the worker's pool (`prefork`, `solo`, `threads`, ...)",
    "concurrency": "the pool's number of children",
    "metric": "what memory figures are in: `uss`, `pss`, or `rss` where RSS stands in for an unreadable metric",
    "soft_limit_mib": "`memguard_soft_limit` in MiB (null: none)",
    "hard_limit_mib": "`memguard_hard_limit` in MiB (null: none)",
    "poll_interval": "`memguard_poll_interval`, seconds",
    "dry_run": "`memguard_dry_run`",
    "kill_grace": "`memguard_kill_grace`, seconds",
    "effective_memory_mib": "the smaller of physical memory and the worker's cgroup limit, MiB: what `\"20%\"` "
                            "sizes refer to",
    "policies": "the reasons of the policies in force, built-in and custom",
    "leak_attribution": "how tasks are charged what they keep: `heap` (allocator counters), `rss` (RSS deltas "
                        "where `mallinfo2` is missing), null when leak detection is off",
    "log": "where events go: a file path, `stderr`, or `logging:celery_memguard` (+ the file with `both`)",
    "pool_limit_mib": "`memguard_pool_limit` in MiB (null: none)",
    "min_available_mib": "`memguard_min_available` in MiB (null: none)",
    "sample_interval": "`memguard_sample_interval`, seconds (null: no samples)",
    "can": "what MemGuard does on this pool",
    "cannot": "what it cannot do on this pool, and why",
    "pid": "the pool child the event is about",
    "reason": "why: the deciding policy's reason (`soft_limit`, `hard_limit` for an idle child, `pool_limit`, "
              "`pressure`, `leak_projection`, `lifetime`, `max_tasks`, or a custom policy's)",
    "mem_mib": "the child's memory when the decision was made, MiB in `metric`",
    "limit_mib": "the memory limit it crossed, MiB (memory policies)",
    "tasks_run": "tasks the child has run",
    "lifetime_s": "the child's age, seconds",
    "task": "the task's name",
    "task_id": "the task's id (null when the child is idle)",
    "signal": "how the task is stopped: `MemoryLimitExceeded` (raised in the task), or `SIGKILL` on escalation "
              "after `kill_grace`",
    "where": "the part of MemGuard that failed",
    "error": "the exception, as `Type: message`",
    "polls": "polls the monitor made",
    "decisions": "decisions carried out, by action and reason",
    "shutdown": "`warm` (the pool drained first) or `cold`",
    "drained_s": "seconds the warm shutdown took to drain the pool (null for cold)",
    "events_dropped": "event lines that could not be written (full pipe or disk, I/O error), across the master "
                      "and the children",
    "children": "the number of pool children",
    "busy": "children running a task",
    "enforcing": "what stays enforced while the pool drains",
    "index": "the child's pool index",
    "board_slots": "the shared board's number of slots",
    "effect": "what this means for the child",
    "fix": "how to fix it",
    "used": "the metric used instead",
    "handler": "the handler the task installed for the signal",
    "pool_mib": "all children together, MiB in `metric`",
    "pool_rss_mib": "all children's RSS together, MiB",
    "master_mib": "the worker's main process, MiB in `metric` (null when the master is not read)",
    "master_rss_mib": "the main process's RSS, MiB (null when the master is not read)",
    "available_mib": "available memory, MiB (null unless a pressure policy reads it)",
    "kib_per_call": "memory the task keeps per call, KiB",
    "confidence": "how sure the detector is, 0–1",
    "calls_observed": "calls of the task the judgement rests on",
    "projected_calls_to_soft_limit": "calls until a child reaches the soft limit at this rate (null without one)",
    "since_calls": "calls observed when it was first suspected",
    "state": "`watching` (children now measure every call) or `settled` (it stopped growing before being named)",
    "growth_mib_per_child": "retained growth per child so far, MiB",
    "note": "a sentence saying what the figures mean",
    "peak_mib": "the task's own peak, MiB",
    "retained_mib": "what the task left in use after it returned, MiB",
    "occurrences": "times the task was heavy so far",
    "typical_peak_mib": "the typical task's own peak, MiB",
    "advice": "what to do about it",
    "mib_per_hour": "the master's growth rate, MiB per hour",
    "since_s": "seconds of history the judgement rests on",
    "growth_mib": "growth above the post-start baseline, MiB",
    "reserved": "prefetched, unacknowledged messages the master holds now (growth that follows them is not a leak)",
    "calls_traced": "calls traced",
    "sites": "allocation sites of what was kept: `file`, `line`, `size_kib`, `count`",
    "types": "object types that grew: `type`, `count`, `size_kib`",
    "exitcode": "the child's exit code",
    "task_source": "where `task` comes from: `board` (what the child recorded at task start) or `last_poll`",
    "task_started_s_before": "seconds between the task's start and the loss",
    "rss_at_task_start_mib": "the child's RSS when the task started, MiB",
    "last_mem_mib": "the master's last reading of the child, MiB in `metric`",
    "last_rss_mib": "the master's last reading of the child's RSS, MiB",
    "last_poll_s_before": "seconds between that reading and the loss being noticed",
    "last_poll_during_task": "whether that reading was taken during the task (false: it predates the task)",
    "growth_mib_per_s": "how fast the child grew before it died, MiB/s",
    "oom_kill_delta": "OOM kills the cgroup (or host) counted since the previous loss",
    "likely_oom": "whether the OOM killer is the likely cause",
    "spawn_time_s": "measured time to start a replacement child, seconds",
    "recycles_per_minute": "recycles in the last minute",
    "max_recycles_per_minute": "the rate cap in force (configured, or derived from `memguard_max_throughput_loss`)",
    "throughput_lost": "the share of the pool's capacity spent restarting children at this rate",
    "deferred": "recycles held back this poll",
    "reasons": "recycles in the window, by reason",
    "cause": "a sentence naming the cause",
    "fresh_child_mib": "a freshly forked child's memory, MiB in `metric`",
    "trigger": "what signalled pressure: `available`, `psi`, `critical` (below `memguard_critical_available`) "
               "or `paused` (task intake is paused)",
    "available": "available memory, bytes",
    "min_available": "`memguard_min_available`, bytes",
    "psi_some_avg10": "memory PSI `some avg10`, percent (null where not readable)",
    "psi_threshold": "`memguard_psi_threshold` (null: none)",
    "children_rss_mib": "all children's RSS together, MiB",
    "fresh_rss_mib": "a freshly forked child's RSS, MiB",
    "largest_pid": "the child with the most RSS",
    "largest_relief_mib": "how much more RSS it holds than a fresh child, MiB",
    "min_relief_mib": "`memguard_pressure_min_relief`, MiB",
    "retry_s": "`memguard_pressure_retry`: seconds until the largest child is recycled anyway",
    "wake": "the kernel notifications armed: `cgroup1-threshold`, `psi` (empty: none)",
    "detail": "what each was armed on (the cgroup's `memory.usage_in_bytes`, a `pressure/memory` file)",
    "thresholds_mib": "the cgroup v1 usage thresholds, MiB",
    "psi_trigger": "the PSI trigger written (`some <stall µs> <window µs>`), null: none",
    "adaptive_poll": "whether polling speeds up while available memory falls",
    "adaptive_floor_s": "the shortest delay adaptive polling chooses, seconds (null: no adaptive polling)",
    "mode": "`memguard_pressure_wake`",
    "fallback": "why no (or not every) kernel notification was armed; null: nothing missing",
    "url": "the address to scrape (`http://ADDR:PORT/metrics`)",
    "addr": "`memguard_metrics_addr`: the address the server listens on",
    "port": "the port the server listens on (the first free one of `port_range`)",
    "port_range": "`memguard_metrics_port`: the port, or the range `LOW-HIGH`, the server could take",
    "busy_ports": "ports of the range passed over because something already listened there",
    # Keys only some recycles and kills carry (EXTRA_KEYS).
    "limit_s": "the lifetime limit it crossed, seconds (`lifetime`)",
    "limit_tasks": "the task-count limit it reached (`max_tasks`)",
    "ranking": "how a pool policy ranked the children when it chose this one: `pid`, `mem_mib`, the victim first",
    "max_lifetime_s": "`memguard_max_child_lifetime`, seconds (`lifetime`)",
    "max_tasks": "`memguard_max_child_tasks` (`max_tasks`)",
    "total": "all children together, bytes (`pool_limit`)",
    "pool_limit": "`memguard_pool_limit`, bytes (`pool_limit`)",
    "pool_hard_limit": "`memguard_pool_hard_limit`, bytes (`pool_limit`; null: none)",
    "over_hard_limit_s": "how long the total has been above the pool hard limit, seconds",
    "leak_bytes_per_second": "the child's projected growth from its confirmed leak, bytes/s (`leak_projection`)",
    "eta_s": "seconds until it would cross its limit (`leak_projection`)",
    "horizon_s": "`memguard_leak_horizon`, seconds (`leak_projection`)",
    "idle": "whether the child was idle (`pressure`)",
    "critical_available": "`memguard_critical_available`, bytes (`pressure`, trigger `critical`)",
    "woken_by": "the kernel pressure notification this decision followed (`cgroup1-threshold`, `psi`), within 1 s",
    "since_wake_ms": "milliseconds from that notification to the decision",
    "growth_mib_per_s": "how fast the stopped task's child grew since the previous poll, MiB/s (`pressure`, "
                        "trigger `critical`)",
    "lasting_relief": "whether the child holds `memguard_pressure_min_relief` more than a fresh one (`pressure`; "
                      "false for a fallback recycle)",
}

#: Meanings that differ for one event: ``(event, key) -> meaning``.
EVENT_KEY_DOCS: dict[tuple[str, str], str] = {
    (TASK_KILLED, "reason"): "why: `hard_limit`, `pool_limit` (the pool hard limit), `pressure` (below "
                             "`memguard_critical_available`), or a custom policy's",
    (WOULD_KILL, "reason"): "why: `hard_limit`, `pool_limit` (the pool hard limit), `pressure` (below "
                            "`memguard_critical_available`), or a custom policy's",
    (LEAK_CLEARED, "reason"): "why the suspicion was dropped",
    (GROWTH_WATCH, "reason"): "why the task is watched, or why it settled",
    (CHILD_LOST, "reason"): "why `likely_oom` says what it says",
    (CHILD_LOST, "signal"): "the signal that ended the child (null when it exited)",
    (CHILD_LOST, "hard_limit_mib"): "`memguard_hard_limit` in MiB (null: none): whether the child could have been "
                                    "stopped cleanly",
    (LIMIT_UNREACHABLE, "reason"): "the limit a fresh child is already above (`soft_limit`)",
    (LIMIT_UNREACHABLE, "limit_mib"): "that limit, MiB",
    (LIMIT_UNREACHABLE, "pid"): "the fresh child",
    (LIMIT_UNREACHABLE, "master_mib"): "the master's memory, MiB in `metric`",
    (ORDER_SIGNAL_REPLACED, "signal"): "the signal the task took over (`SIGURG`)",
    (ORDER_SIGNAL_REPLACED, "task"): "the task that installed the handler",
    (METRIC_UNAVAILABLE, "metric"): "the configured metric that could not be read",
    (METRIC_UNAVAILABLE, "error"): "why it could not be read",
    (SAMPLE, "children"): "one entry per child: `slot`, `pid`, `mem_mib`, `rss_mib`, `tasks`; `exact: false` when "
                          "`mem_mib` is the monitor's upper bound, `metric: \"rss\"` when RSS stands in",
    (SAMPLE, "metric"): "the configured metric",
    (SAMPLE, "tasks"): "the tasks that finished since the previous sample, by name (at most 64, the rest under "
                       "`(other)`): `calls`, `failed`, `own_peak_mib` (the most one call needed above its child's "
                       "RSS at the start), `peak_mib` (the child's largest RSS high-watermark during a call), "
                       "`retained_mib` (RSS kept, summed), `max_s`, `total_s`; what `celery memguard advise` "
                       "sizes limits from",
    (SAMPLE, "replace_gaps_s"): "for each child replaced since the previous sample (at most 32), seconds its pool "
                                "slot had no child: from the old child's last finished task to the new child's "
                                "start; with `spawn_time_s`, what a recycle costs a slot",
    (SAMPLE, "spawn_time_s"): "median measured time from fork to a ready pool child, seconds (null before one "
                              "is measured): what a recycle costs",
    (LEAK_SUSPECTED, "children"): "children the task grew in",
    (GROWTH_WATCH, "children"): "children the task grew in",
    (PRESSURE_UNRELIEVED, "children"): "children alive",
    (HEAVY_TASK, "pid"): "the child that ran it",
    (MASTER_GROWTH, "mem_mib"): "the master's memory now, MiB in `metric`",
    (DRAINING, "children"): "children still alive",
    (PAUSED, "trigger"): "the threshold crossed: `available` (`memguard_pause_below`) or `pool` "
                         "(`memguard_pause_pool_above`)",
    (RESUMED, "trigger"): "`recovered`: every threshold clear by its margin for `memguard_pause_resume_after` s; "
                          "`unreachable` (level warning): the pause was given up, as its resume level cannot be "
                          "reached with fresh children (see `memguard.pressure_unrelieved`); its threshold is "
                          "disarmed until a reading is clear of the resume level",
    (PAUSED, "available_mib"): "available memory in the reading that decided, MiB (null: not read)",
    (RESUMED, "available_mib"): "available memory in the reading that decided, MiB (null: not read)",
    (PAUSED, "threshold_mib"): "the pause threshold crossed, MiB",
    (RESUMED, "threshold_mib"): "the resume level reached (the pause threshold plus or minus its margin), MiB",
    (PAUSED, "paused_s"): "null",
    (RESUMED, "paused_s"): "how long intake was paused, seconds",
    (PAUSED, "held"): "tasks received and held unstarted when the pause began",
    (RESUMED, "held"): "tasks held unstarted, started now in the order they came",
    (PAUSED, "running"): "children running a task (they finish)",
    (RESUMED, "running"): "children running a task",
    (INTAKE_UNBOUNDED, "transport"): "the broker transport (`filesystem`, ...)",
    (INTAKE_UNBOUNDED, "prefetch_multiplier"): "`worker_prefetch_multiplier` (0: no limit)",
    (PAUSED, "dry_run"): "true in dry run (`memguard_dry_run`): intake was not paused",
    (RESUMED, "dry_run"): "true in dry run (`memguard_dry_run`): intake had not been paused",
}


def key_doc(event: str, key: str) -> str:
    """What ``key`` means in ``event`` (``KeyError`` when it is not documented)."""
    return EVENT_KEY_DOCS.get((event, key)) or KEY_DOCS[key]


#: Where events go (``memguard_log_target``).
TARGETS = ("direct", "logging", "both")
#: The stdlib logger events go to with ``memguard_log_target = "logging"`` or ``"both"``.
LOGGER_NAME = "celery_memguard"
#: How often (seconds) a process checks whether its log file was moved or removed.
REOPEN_CHECK_S = 1.0
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}
_SHARED = struct.Struct("<QB")  # dropped events, "the drop warning was printed" flag


def stderr_lost() -> bool:
    """Whether standard error goes nowhere: closed, or ``/dev/null`` (a ``--detach``-ed or daemonized worker)."""
    try:
        st = os.fstat(_stderr_fd())
    except (OSError, ValueError):
        return True
    try:
        null = os.stat(os.devnull)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev


def default_log_file(worker_logfile: str | None, node: str) -> str | None:
    """The file events go to when ``memguard_log_file`` is not set, or None for standard error.

    ``worker_logfile`` is the worker's ``--logfile`` (already node-formatted), where Celery's own log
    lines go; ``node`` is the node's short name, for ``memguard-<node>.log`` in the working directory
    when standard error is lost and the worker has no log file.
    """
    if worker_logfile:
        return worker_logfile
    if stderr_lost():
        safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in node) or "worker"
        return os.path.abspath(f"memguard-{safe}.log")
    return None


def open_log_file(path: str) -> int:
    """Open ``path`` for appending events, never blocking; raise :class:`OSError`/:class:`ValueError` if unusable.

    A FIFO nobody reads yet is opened read-write (a non-blocking write-only open would fail with
    ``ENXIO``, a blocking one would hang until a reader comes): lines then fill the pipe's buffer
    and are dropped when it is full.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        return os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
    return os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)


def _stderr_fd() -> int:
    return sys.__stderr__.fileno() if sys.__stderr__ is not None else 2


def _open_stderr() -> tuple[int, bool]:
    """A descriptor for standard error that never blocks where that is possible: ``(fd, owned)``.

    A pipe, FIFO or terminal is reopened through ``/proc/self/fd`` with ``O_NONBLOCK`` (a new open
    file description: the flag does not leak to the shell or to Celery's own writes). A regular file
    keeps the inherited descriptor (a file never blocks; reopening it would lose its offset), and so
    does a socket (journald's stream), which :class:`EventLog` writes with ``MSG_DONTWAIT``.
    """
    fd = _stderr_fd()
    try:
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError):
        return fd, False
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        try:
            return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC
                           | os.O_NOCTTY), True
        except OSError:
            pass
    return fd, False


class _Sink:
    """Where rendered lines go: a descriptor of our own (``direct``) and/or the ``celery_memguard`` logger.

    structlog's last processor hands over ``(line, fields)``; this object writes them.
    """

    def __init__(self, owner: "EventLog") -> None:
        self.owner = owner

    def msg(self, line: str, fields: MutableMapping[str, Any] | None = None, level: str = "info") -> None:
        self.owner._write(line, fields or {}, level)

    log = debug = info = warning = warn = error = critical = msg


def _iso_utc(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    import datetime as _dt

    event_dict.setdefault("ts", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"))
    return event_dict


class EventLog:
    """Emits MemGuard events; one per process (children inherit the master's).

    ``log_file`` None means standard error (the bootstep resolves the default with
    :func:`default_log_file` first). Opening an explicit ``log_file`` raises :class:`OSError` or
    :class:`ValueError` when it is unusable (the bootstep turns that into a clean start-up error);
    everything after that is fail-open.
    """

    def __init__(self, *, fmt: str = "console", log_file: str | None = None, hostname: str | None = None,
                 target: str = "direct") -> None:
        self.fmt = fmt
        self.hostname = hostname
        self.target = target
        self.log_file = log_file
        self._direct = target in ("direct", "both")
        self._logger_out = logging.getLogger(LOGGER_NAME) if target in ("logging", "both") else None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._cut = False  # the last line was cut short: end it before the next one
        self._checked = time.monotonic()
        self._identity: tuple[int, int] | None = None
        # Dropped-event count and the "warned" flag, shared with forked children (anonymous shared mmap).
        self._shared = mmap.mmap(-1, _SHARED.size)
        self._warn_fd: int | None = None
        self.fd, self._owns_fd = -1, False
        if self._direct:
            if log_file:
                self.fd, self._owns_fd = open_log_file(log_file), True
                self._identity = self._stat_identity(self.fd)
            else:
                self.fd, self._owns_fd = _open_stderr()
        self._send: Callable[[Any], int] | None = None
        if self.fd >= 0:
            try:
                if stat.S_ISSOCK(os.fstat(self.fd).st_mode):
                    sock = socket.socket(fileno=os.dup(self.fd))
                    self._send = lambda data: sock.send(data, socket.MSG_DONTWAIT)
            except (OSError, ValueError):
                self._send = None
        import structlog  # here, not at module level: importing the event names (the report does) stays light

        renderer: Callable[..., Any]
        if fmt == "json":
            renderer = structlog.processors.JSONRenderer(sort_keys=False)
        else:
            renderer = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)

        def render(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> Any:
            fields = dict(event_dict)
            return (renderer(logger, name, event_dict),), {"fields": fields, "level": name}

        self._logger = structlog.wrap_logger(
            _Sink(self),
            processors=[structlog.processors.add_log_level, _iso_utc, self._add_origin, render],
            cache_logger_on_first_use=False,
        )
        self._seen_errors: dict[tuple[str, str], int] = {}

    # -- public -------------------------------------------------------------
    def emit(self, event: str, level: str = "info", **keys: Any) -> None:
        try:
            getattr(self._logger, level)(event, **keys)
        except Exception:  # pragma: no cover - a renderer failure must not escape
            pass

    def error(self, where: str, exc: BaseException) -> None:
        """Log ``memguard.error`` once per (where, exception type); count repeats."""
        cause = (where, type(exc).__name__)
        with self._lock:
            count = self._seen_errors.get(cause, 0)
            self._seen_errors[cause] = count + 1
        if count == 0:
            self.emit(ERROR, level="error", where=where, error=f"{type(exc).__name__}: {exc}")

    @property
    def dropped(self) -> int:
        """Events that could not be written, by this process and every process forked from it."""
        try:
            return int(_SHARED.unpack_from(self._shared, 0)[0])
        except (ValueError, struct.error):
            return 0

    def describe(self) -> str:
        """Where events go, for ``memguard.started`` and the status command."""
        direct = (self.log_file or "stderr") if self._direct else None
        if self._logger_out is None:
            return str(direct)
        return f"logging:{LOGGER_NAME}" + (f"+{direct}" if direct else "")

    def close(self) -> None:
        """Close the log file (never standard error itself)."""
        if self._owns_fd:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self._owns_fd = False

    @property
    def error_counts(self) -> dict[tuple[str, str], int]:
        return dict(self._seen_errors)

    # -- internals ------------------------------------------------------------
    def _add_origin(self, _logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event_dict.setdefault("source_pid", os.getpid())
        if self.hostname:
            event_dict.setdefault("hostname", self.hostname)
        return event_dict

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may have been held by another thread at fork)."""
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _write(self, line: str, fields: MutableMapping[str, Any], level: str) -> None:
        if self._logger_out is not None:
            self._to_logging(line, fields, level)
        if not self._direct:
            return
        data = (line + "\n").encode("utf-8", "replace")
        if os.getpid() != self._pid:  # forked without the at-fork hook (e.g. os.fork in a test)
            self._after_fork()
        with self._lock:
            if self.log_file:
                self._reopen_if_moved()
            if self._cut:
                data = b"\n" + data
            error = self._write_all(data)
        if error is not None:
            self._count_drop(error)

    def _write_all(self, data: bytes) -> OSError | None:
        """Write ``data`` without blocking; on failure the error (the rest of the line is dropped)."""
        view = memoryview(data)
        try:
            while view:
                written = self._send(view) if self._send is not None else os.write(self.fd, view)
                view = view[written:]
                self._cut = bool(view)
            return None
        except OSError as exc:
            return exc
        except Exception as exc:  # never raised by os.write; counted as a drop all the same
            return OSError(errno.EIO, f"{type(exc).__name__}: {exc}")

    def _count_drop(self, error: OSError) -> None:
        try:
            count, warned = _SHARED.unpack_from(self._shared, 0)
            _SHARED.pack_into(self._shared, 0, count + 1, 1)
        except (ValueError, struct.error):
            return
        if not warned:
            self._warn(error)

    def _warn(self, error: OSError) -> None:
        """Say once, on standard error, that events are being dropped (never blocking)."""
        where = self.log_file or "standard error"
        message = (f"celery-memguard: cannot write events to {where} ({error.strerror or error}); "
                   "dropping them (counted in `celery memguard status` and memguard.stopped)\n")
        try:
            if self._warn_fd is None:
                self._warn_fd = self.fd if not self.log_file else _open_stderr()[0]
            if self._warn_fd != self.fd:
                os.write(self._warn_fd, message.encode("utf-8", "replace"))
        except OSError:
            pass

    @staticmethod
    def _stat_identity(fd: int) -> tuple[int, int] | None:
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None

    def _reopen_if_moved(self) -> None:
        """Reopen the log file by path when it was renamed or removed (logrotate), checked once a second."""
        now = time.monotonic()
        if self._identity is None or now - self._checked < REOPEN_CHECK_S:
            return
        self._checked = now
        assert self.log_file is not None
        try:
            st = os.stat(self.log_file)
            if (st.st_dev, st.st_ino) == self._identity:
                return
        except FileNotFoundError:
            pass
        except OSError:
            return
        try:
            fd = open_log_file(self.log_file)
        except (OSError, ValueError):
            return  # keep writing to the old file rather than losing events
        old, owned = self.fd, self._owns_fd
        self.fd, self._owns_fd, self._identity, self._cut = fd, True, self._stat_identity(fd), False
        if owned:
            try:
                os.close(old)
            except OSError:
                pass

    def _to_logging(self, line: str, fields: MutableMapping[str, Any], level: str) -> None:
        """One record on the ``celery_memguard`` logger; its message is exactly the line."""
        logger = self._logger_out
        assert logger is not None
        levelno = _LEVELS.get(level, logging.INFO)
        try:
            # A level set on the logger is respected; unset, every event passes (events are not debug chatter).
            if logger.level != logging.NOTSET and not logger.isEnabledFor(levelno):
                return
            record = logger.makeRecord(logger.name, levelno, "celery_memguard.events", 0, line, None, None,
                                       extra={"memguard": fields})
            logger.handle(record)
        except Exception:  # a broken handler must not break the worker
            pass


_current: EventLog | None = None


def configure(*, fmt: str = "console", log_file: str | None = None, hostname: str | None = None,
              target: str = "direct") -> EventLog:
    """Create the process-wide event log (called by the bootstep in the master).

    Raises :class:`OSError` or :class:`ValueError` when ``log_file`` cannot be opened; the previous log
    then stays in place.
    """
    global _current
    log = EventLog(fmt=fmt, log_file=log_file, hostname=hostname, target=target)
    previous, _current = _current, log
    if previous is not None:
        previous.close()
    return log


def _reinit_after_fork() -> None:
    if _current is not None:
        _current._after_fork()


os.register_at_fork(after_in_child=_reinit_after_fork)


def get() -> EventLog:
    global _current
    if _current is None:
        _current = EventLog()
    return _current


def emit(event: str, level: str = "info", **keys: Any) -> None:
    get().emit(event, level, **keys)


def error(where: str, exc: BaseException) -> None:
    get().error(where, exc)


def log_finding(finding: "Finding") -> None:
    """Log a detector's finding: the one place a finding becomes an event (``growth_watch`` at info,
    an error as error, every other finding as a warning)."""
    level = "error" if finding.event == ERROR else "info" if finding.event == GROWTH_WATCH else "warning"
    emit(finding.event, level, **finding.fields)
