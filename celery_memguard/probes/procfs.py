"""Linux /proc readers: one fd per file kept open and read with ``pread``.

Parse functions take the raw bytes so they are tested on recorded /proc text.
The exact USS/PSS come from ``/proc/PID/smaps_rollup`` (Linux 4.14+); where it is
missing (an older kernel, or a kernel built without it) they are summed from
``/proc/PID/smaps`` instead, as psutil does: slower (every mapping is listed), but
still exact. A process that has gone raises :class:`ProcessGone` whatever file
told; only a live process none of whose files can be read raises
:class:`ProbeError`, so the caller never takes RSS for an exact reading unknowingly.
"""

from __future__ import annotations

import errno
import os

from ..units import PAGE_SIZE
from .base import ProbeError, ProcessGone, close_fds

__all__ = ["ProcfsProbe", "parse_statm_rss", "parse_stat_minflt", "parse_smaps_rollup", "parse_smaps", "PAGE_SIZE"]

_SMAPS_CHUNK = 256 * 1024


def parse_statm_rss(data: bytes, page_size: int = PAGE_SIZE) -> int:
    """Resident set size in bytes from ``/proc/PID/statm``."""
    return int(data.split(None, 2)[1]) * page_size


def parse_stat_minflt(data: bytes) -> int:
    """Minor-fault count from ``/proc/PID/stat`` (field 10; ``comm`` may hold spaces and parens)."""
    return int(data[data.rindex(b")") + 2 :].split(None, 8)[7])


def parse_smaps_rollup(data: bytes) -> dict[str, int]:
    """``{"rss", "pss", "uss"}`` in bytes from ``/proc/PID/smaps_rollup``.

    USS is ``Private_Clean + Private_Dirty + Private_Hugetlb``: pages only this process
    maps, so pages still shared copy-on-write with the master are not counted.
    """
    return _memory_fields(data, "smaps_rollup")


def parse_smaps(data: bytes) -> dict[str, int]:
    """The same as :func:`parse_smaps_rollup`, summed over every mapping of ``/proc/PID/smaps``."""
    return _memory_fields(data, "smaps")


def _memory_fields(data: bytes, source: str) -> dict[str, int]:
    fields: dict[bytes, int] = {}
    for line in data.splitlines():
        name, _, rest = line.partition(b":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == b"kB":  # mapping headers and VmFlags never end in "kB"
            fields[name] = fields.get(name, 0) + int(parts[0]) * 1024
    if b"Rss" not in fields:
        raise ProbeError(errno.EINVAL, f"no Rss line in {source}")
    uss = fields.get(b"Private_Clean", 0) + fields.get(b"Private_Dirty", 0) + fields.get(b"Private_Hugetlb", 0)
    return {"rss": fields[b"Rss"], "pss": fields.get(b"Pss", fields[b"Rss"]), "uss": uss}


class ProcfsProbe:
    """Reads ``statm``, ``stat`` and ``smaps_rollup`` of one pid through fds opened once."""

    __slots__ = ("pid", "_root", "_statm", "_stat", "_rollup", "_smaps")

    def __init__(self, pid: int, proc_root: str = "/proc") -> None:
        self.pid = pid
        self._root = f"{proc_root}/{pid}"
        self._rollup: int | None = None
        self._smaps = False  #: smaps_rollup is missing: read /proc/PID/smaps instead
        try:
            self._statm = os.open(f"{self._root}/statm", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ProcessGone(errno.ESRCH, f"no process {pid}") from None
        try:
            self._stat = os.open(f"{self._root}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            os.close(self._statm)
            raise ProcessGone(errno.ESRCH, f"no process {pid}") from None

    def _read(self, fd: int, size: int) -> bytes:
        try:
            data = os.pread(fd, size, 0)
        except ProcessLookupError:
            raise ProcessGone(errno.ESRCH, f"process {self.pid} exited") from None
        if not data:
            raise ProcessGone(errno.ESRCH, f"process {self.pid} exited")
        return data

    def cheap(self) -> tuple[int, int]:
        return self.rss(), parse_stat_minflt(self._read(self._stat, 1024))

    def rss(self) -> int:
        rss = parse_statm_rss(self._read(self._statm, 256))
        if rss == 0:  # a zombie: it has exited and released its memory, not yet reaped
            raise ProcessGone(errno.ESRCH, f"process {self.pid} exited")
        return rss

    def exact(self, metric: str) -> int:
        if metric == "rss":
            return self.rss()
        if self._smaps:
            return parse_smaps(self._read_smaps())[metric]
        if self._rollup is None:
            try:
                self._rollup = os.open(f"{self._root}/smaps_rollup", os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, ProcessLookupError):
                self.rss()  # raises ProcessGone if the process has exited (ENOENT/ESRCH then mean that)
                self._smaps = True  # a live process without smaps_rollup: an older kernel
                return parse_smaps(self._read_smaps())[metric]
            except PermissionError as exc:
                raise ProbeError(errno.EACCES, f"cannot read {self._root}/smaps_rollup: {exc}") from None
        return parse_smaps_rollup(self._read(self._rollup, 4096))[metric]

    def _read_smaps(self) -> bytes:
        """The whole of ``/proc/PID/smaps`` (opened per reading: its size follows the mappings)."""
        try:
            fd = os.open(f"{self._root}/smaps", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            self.rss()  # gone: ProcessGone
            raise ProbeError(errno.ENOENT, f"{self._root} has neither smaps_rollup nor smaps: "
                                           "no exact USS/PSS on this kernel") from None
        except PermissionError as exc:
            raise ProbeError(errno.EACCES, f"cannot read {self._root}/smaps: {exc}") from None
        try:
            chunks = []
            while True:
                try:
                    chunk = os.read(fd, _SMAPS_CHUNK)
                except ProcessLookupError:
                    raise ProcessGone(errno.ESRCH, f"process {self.pid} exited") from None
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        if not chunks:  # an exited process lists no mappings
            self.rss()
            raise ProbeError(errno.ENODATA, f"{self._root}/smaps is empty")
        return b"".join(chunks)

    def close(self) -> None:
        close_fds(self._statm, self._stat, self._rollup)
        self._rollup = None
