"""The brokers the harness talks to (Redis, RabbitMQ), and cleaning up after a worker in them.

Tests use Redis DB 13 as broker and DB 14 for results; every test has a queue of its own, so they
can share both. Benchmarks use a dedicated DB (11 or 12) that they flush before and after.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Any

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RABBIT_HOST, RABBIT_PORT = "127.0.0.1", 5672
#: Broker database (Redis) and result backend database; queues are unique per test, so sharing is safe.
REDIS_BROKER_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/13"
RABBIT_BROKER_URL = f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}//"
BACKEND_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/14"
#: kombu's filesystem transport with whole-file message writes (``demo/atomic_filesystem.py``: kombu#1551).
FILESYSTEM_TRANSPORT = "demo.atomic_filesystem:Transport"


def filesystem_broker(root: Path, **options: Any) -> tuple[str, dict[str, Any]]:
    """kombu's filesystem transport in ``root``: the broker URL and the ``app.conf`` keys it needs.

    The transport is :data:`FILESYSTEM_TRANSPORT`, kombu's own with messages written to a temporary
    file and renamed into place: with kombu's, a consumer can take a message file before its writer
    wrote it and lose the message to a ``JSONDecodeError``. ``options`` go into the transport options
    (e.g. ``polling_interval``).
    """
    folders = {name: root / name for name in ("broker", "processed", "control")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    transport_options = {
        "data_folder_in": str(folders["broker"]),
        "data_folder_out": str(folders["broker"]),
        "processed_folder": str(folders["processed"]),
        "control_folder": str(folders["control"]),
        "store_processed": False,
        **options,
    }
    return "filesystem://", {"broker_transport": FILESYSTEM_TRANSPORT, "broker_transport_options": transport_options}


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_ports(count: int) -> tuple[int, int]:
    """``count`` consecutive ports free on 127.0.0.1 right now, as (low, high)."""
    for _ in range(200):
        low = random.randint(20000, 60000)
        try:
            for port in range(low, low + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return low, low + count - 1
    raise RuntimeError("no free port block")


def redis_up(url: str) -> bool:
    """Whether the Redis server of ``url`` answers a PING."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def flush_db(url: str) -> None:
    """Empty the Redis database of ``url`` (a benchmark's own DB)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def delete_queue(app: Any, queue: str, broker: str) -> None:
    """Remove ``queue`` and its exchange (and kombu's Redis binding keys) so nothing leaks into the broker.

    Never raises: where the broker went away there is nothing to clean up.
    """
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            channel.queue_delete(queue)
            try:
                channel.exchange_delete(queue)
            except Exception:
                pass
        if broker.startswith("redis://"):
            import redis

            client = redis.Redis.from_url(broker)
            try:
                keys = list(client.scan_iter(match=f"*{queue}*"))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()
    except Exception:
        pass
