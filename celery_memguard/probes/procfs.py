"""Linux /proc readers: one fd per file kept open and read with ``pread``.

Parse functions take the raw bytes so they are tested on recorded /proc text.
"""

from __future__ import annotations

import errno
import os

from .base import ProbeError, ProcessGone

__all__ = ["ProcfsProbe", "parse_statm_rss", "parse_stat_minflt", "parse_smaps_rollup", "PAGE_SIZE"]

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


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
    fields: dict[bytes, int] = {}
    for line in data.splitlines():
        name, _, rest = line.partition(b":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == b"kB":
            fields[name] = int(parts[0]) * 1024
    if b"Rss" not in fields:
        raise ProbeError(errno.EINVAL, "no Rss line in smaps_rollup")
    uss = fields.get(b"Private_Clean", 0) + fields.get(b"Private_Dirty", 0) + fields.get(b"Private_Hugetlb", 0)
    return {"rss": fields[b"Rss"], "pss": fields.get(b"Pss", fields[b"Rss"]), "uss": uss}


class ProcfsProbe:
    """Reads ``statm``, ``stat`` and ``smaps_rollup`` of one pid through fds opened once."""

    __slots__ = ("pid", "_root", "_statm", "_stat", "_rollup")

    def __init__(self, pid: int, proc_root: str = "/proc") -> None:
        self.pid = pid
        self._root = f"{proc_root}/{pid}"
        self._rollup: int | None = None
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
        if self._rollup is None:
            try:
                self._rollup = os.open(f"{self._root}/smaps_rollup", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if not os.path.exists(self._root):
                    raise ProcessGone(errno.ESRCH, f"process {self.pid} exited") from None
                raise ProbeError(errno.ENOENT, "smaps_rollup needs Linux 4.14+") from None
            except PermissionError as exc:
                raise ProbeError(errno.EACCES, f"cannot read {self._root}/smaps_rollup: {exc}") from None
        return parse_smaps_rollup(self._read(self._rollup, 4096))[metric]

    def close(self) -> None:
        for fd in (self._statm, self._stat, self._rollup):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._rollup = None
