"""multiprocessing's temporary folder, named so that a later run can remove it.

Tensors cross the asynchronous producer's queues by descriptor passing, for which
``multiprocessing`` makes a ``pymp-XXXX`` folder in TMPDIR (its sockets) and removes it at a
clean exit only: every killed run left one behind (issue #36.5). Here each process's folder
is ``rmx-<pid>.<host>`` instead (``<host>``: 4 hex digits of the host name; the name is as
short as multiprocessing's own, since socket paths inside it must stay under 108 bytes),
removed at a clean exit as before; a killed one is removed by the next remix process on the
same host that finds its pid gone (docs/design.md §1.6).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import zlib
from multiprocessing import process, util
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "rmx-"


def _host() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFF:04x}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _owner_pid(folder: Path, host: str) -> int | None:
    """The pid a folder of ours was made by; None for anything else (another host's too)."""
    pid, dot, tail = folder.name[len(PREFIX) :].partition(".")
    if not dot or not pid.isdigit() or tail != host:
        return None
    return int(pid)


def sweep_stale(base: Path) -> list[Path]:
    """Remove the folders of this host's remix processes that are gone; what was removed."""
    host, uid, removed = _host(), os.getuid(), []
    for folder in base.glob(PREFIX + "*"):
        pid = _owner_pid(folder, host)
        with contextlib.suppress(OSError):
            if pid is None or _alive(pid) or folder.stat().st_uid != uid:
                continue
            shutil.rmtree(folder)
            removed.append(folder)
    if removed:
        log.debug("removed %d temporary folder(s) of killed runs", len(removed))
    return removed


def use_private_tempdir() -> Path:
    """Make this process's multiprocessing temp folder one a later run can clean up (and
    clean up those of killed processes). Children spawned afterwards share it."""
    config = process.current_process()._config  # read by multiprocessing.util.get_temp_dir
    current = config.get("tempdir")
    if current and Path(current).name.startswith(PREFIX) and Path(current).is_dir():
        return Path(current)
    base = Path(tempfile.gettempdir())
    sweep_stale(base)
    folder = str(base / f"{PREFIX}{os.getpid()}.{_host()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)  # exists: a dead process's of our pid
    config["tempdir"] = folder
    # as multiprocessing does for its own folder: removed when this process exits cleanly
    util.Finalize(None, shutil.rmtree, args=(folder, True), exitpriority=-100)
    return Path(folder)
