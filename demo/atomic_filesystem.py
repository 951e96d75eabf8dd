"""kombu's filesystem transport with whole-file message writes (the demo's and the tests' broker).

kombu's ``filesystem://`` transport creates a message file and then writes it, while a consumer takes
any file whose name matches, without waiting for the writer's lock: a consumer can move away a file
that is still empty and fail on it with ``JSONDecodeError`` (kombu#1551), and that message is lost.
Measured with two consumers and one producer on one folder: 301 of 5,000 messages lost that way.
The exchange tables (``<control_folder>/<exchange>.exchange``) have the same gap: a process that
declares a queue creates the table file and then locks it, and another one that finds the file
(declaring too, or publishing) reads it empty and fails the same way.

:class:`Transport` writes each message to a hidden temporary file in the same folder (a name the
consumers skip) and renames it into place, so a consumer only ever sees a complete message; it
creates and updates an exchange table only under its lock, and reads an empty one as no binding yet. Use it
with ``broker_url="filesystem://"`` and ``broker_transport="<module>:Transport"``: kombu takes the
explicit transport over the URL's scheme. This is not part of celery-memguard; it only makes the
brokerless demo and the tests that run on the filesystem transport reliable.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads


class Channel(filesystem.Channel):
    """A filesystem channel whose messages appear in the folder whole."""

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        final = os.path.join(self.data_folder_out, f"{int(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg")
        # A leading dot: the consumers match names on what follows the first dot ("<queue>.msg").
        temporary = os.path.join(self.data_folder_out, f".{uuid.uuid4()}.tmp")
        try:
            with open(temporary, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.rename(temporary, final)
        except OSError as exc:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def get_table(self, exchange: str) -> list[Any]:
        """The exchange's bindings; a table file created but not written yet is no binding yet."""
        file = self.control_folder / f"{exchange}.exchange"
        try:
            with open(file, "rb") as f:
                filesystem.lock(f, filesystem.LOCK_SH)
                try:
                    text = bytes_to_str(f.read())
                finally:
                    filesystem.unlock(f)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc
        return [filesystem.exchange_queue_t(*q) for q in loads(text)] if text.strip() else []

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        """Add the binding to the exchange's table, created if missing, read and written under its lock."""
        file = self.control_folder / f"{exchange}.exchange"
        self.control_folder.mkdir(parents=True, exist_ok=True)
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        try:
            with open(file, "a+b", buffering=0) as f:  # creates without truncating: no empty window
                filesystem.lock(f, filesystem.LOCK_EX)
                try:
                    f.seek(0)
                    text = bytes_to_str(f.read())
                    table = [filesystem.exchange_queue_t(*q) for q in loads(text)] if text.strip() else []
                    if binding not in table:
                        table.insert(0, binding)
                        f.seek(0)
                        f.truncate()
                        f.write(str_to_bytes(dumps(table)))  # append mode: at the end, which is now 0
                finally:
                    filesystem.unlock(f)
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc


class Transport(filesystem.Transport):
    """kombu's filesystem transport with :class:`Channel`."""

    Channel = Channel
