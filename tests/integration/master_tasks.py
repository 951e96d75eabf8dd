"""Worker-side helper for ``tests/integration/test_master_growth.py``: makes the worker's main process grow.

The worker loads this module through Celery's ``imports`` setting (the harness's
``conf``: ``{"imports": ["tests.integration.master_tasks"], ...}``), in its main
process. A setting in the same ``conf`` (plain ``app.conf`` keys, not
``memguard_*``) drives it:

* ``it_master_grow_kib``: a :data:`celery.signals.task_received` handler keeps
  this many KiB alive in :data:`KEPT` per message received. ``task_received``
  runs in the worker's main process (the consumer, before the request goes to
  the pool), so the master itself grows, steadily, with the stream of messages
  -- code in the main process that keeps something per message. ``0`` or unset
  (the control): the handler keeps nothing.
"""

from __future__ import annotations

from typing import Any

from celery.signals import task_received

from tests.integration.proj import _touched, app

KiB = 1024

#: Memory the main process keeps, one buffer per message received (with ``it_master_grow_kib`` set).
KEPT: list[bytearray] = []

#: KiB kept per message received; 0: off.
GROW_KIB = int(app.conf.get("it_master_grow_kib") or 0)

@task_received.connect
def keep_per_message(sender: Any = None, request: Any = None, **_kwargs: Any) -> None:
    """Keep ``GROW_KIB`` KiB (every page written, so resident and private) per message the master receives."""
    if GROW_KIB > 0:
        KEPT.append(_touched(GROW_KIB * KiB))
