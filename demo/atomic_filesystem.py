"""kombu's filesystem transport with whole-file message writes (the demo's and the tests' broker).

kombu's ``filesystem://`` transport creates a message file and then writes it, while a consumer takes
any file whose name matches, without waiting for the writer's lock: a consumer can move away a file
that is still empty and fail on it with ``JSONDecodeError`` (kombu#1551), and that message is lost.
Measured with two consumers and one producer on one folder: 301 of 5,000 messages lost that way.

:class:`Transport` writes each message to a hidden temporary file in the same folder (a name the
consumers skip) and renames it into place, so a consumer only ever sees a complete message. Use it
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
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


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


class Transport(filesystem.Transport):
    """kombu's filesystem transport with :class:`Channel`."""

    Channel = Channel
