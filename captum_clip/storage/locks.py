"""Folder locks across processes: ``fcntl.flock`` / ``msvcrt.locking``, released by the OS.

A crashed process never leaves a stale lock (the OS drops it with the process); a waiter
gives up after ``timeout`` seconds with :class:`OutputBusyError`.
"""

from __future__ import annotations

import errno
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["OutputBusyError", "folder_lock"]


class OutputBusyError(ValueError, TimeoutError):
    """Another process held the output folder's lock for longer than ``lock_timeout``."""


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def _unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def folder_lock(lock_path: str | os.PathLike, timeout: float = 600.0) -> Iterator[None]:
    """Holds an exclusive lock on ``lock_path`` (created if needed) across processes.

    ``fcntl.flock`` (``msvcrt.locking`` on Windows): the OS releases it when the process
    dies, so a crash never leaves a stale lock. Not re-entrant: a second ``folder_lock`` on
    the same file in the same process waits like another process would (use
    :meth:`ResumableTable.lock` for a re-entrant one). On a file system without locks it
    warns and goes on unlocked.

    Raises:
        OutputBusyError: Another holder kept it for more than ``timeout`` seconds.
    """
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = _acquire(fd, lock_path, float(timeout))
        try:
            yield
        finally:
            if locked:
                _unlock(fd)
    finally:
        os.close(fd)


def _acquire(fd: int, lock_path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            if _try_lock(fd):
                return True
        except OSError as err:  # e.g. a file system without locks
            warnings.warn(
                f"cannot lock {str(lock_path)!r} ({err}); runs writing this folder at the "
                "same time are not protected",
                stacklevel=5,
            )
            return False
        if time.monotonic() >= deadline:
            raise OutputBusyError(
                f"{str(lock_path.parent)!r} is in use by another process (lock "
                f"{str(lock_path)!r} held for more than {timeout:g} s); wait for it to "
                "finish or choose another output folder"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
