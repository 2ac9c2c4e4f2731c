"""Who owns a file or folder in an output folder: ``HOST-PID`` owner tags, and whether their owner still lives.

Output folders may sit on a file system that several hosts share (a cluster's), so a process id alone does not
say whose a staging folder or a lock is: host B would take host A's live run for dead whenever A's pid is not in
use on B. An owner tag is therefore the host name and the pid; a process can only tell whether an owner of its
own host is alive. An owner on another host counts as alive (never delete what may be in use), and the error
that says so names the file to remove if that run is known to be dead. A tag that cannot be read (a lock file of
garbage, a folder of the old ``PID``-only form whose pid is not running here) is stale.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from .errors import GeosegError


def this_host() -> str:
    """This machine's name as it appears in owner tags (characters safe in a file name)."""
    name = socket.gethostname() or "localhost"
    return "".join(c if c.isalnum() or c in "._" else "_" for c in name)


@dataclass(frozen=True)
class Owner:
    """A process on a host."""

    host: str
    pid: int

    @property
    def tag(self) -> str:
        return f"{self.host}-{self.pid}"

    @classmethod
    def me(cls) -> "Owner":
        return cls(this_host(), os.getpid())

    @classmethod
    def parse(cls, tag: str) -> "Owner | None":
        """``HOST-PID``, or a bare ``PID`` (written by earlier versions, on this host); None if neither."""
        tag = tag.strip()
        host, _, pid = tag.rpartition("-")
        if pid.isdigit() and host:
            return cls(host, int(pid))
        return cls(this_host(), int(tag)) if tag.isdigit() else None

    def alive(self) -> bool:
        """Whether this owner may still be running: always for another host's (it cannot be asked)."""
        if self.host != this_host():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class FileLock:
    """An exclusive lock file holding its owner's tag (``O_CREAT | O_EXCL``); a stale lock is taken over.
    ``what`` names what the lock is for in the error a second owner gets ("this job")."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = Path(path), what

    def __enter__(self) -> "FileLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    owner = Owner.parse(self.path.read_text(errors="replace"))
                except OSError:  # removed meanwhile: try again
                    continue
                if owner is not None and owner.alive():
                    raise GeosegError(f"{self.path.parent}: another run of {self.what} is in progress (host "
                                      f"{owner.host}, pid {owner.pid}); if that run is dead, remove {self.path}") from None
                self.path.unlink(missing_ok=True)
                continue
            os.write(fd, Owner.me().tag.encode())
            os.close(fd)
            return self
        raise GeosegError(f"{self.path}: cannot take the lock")

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)
