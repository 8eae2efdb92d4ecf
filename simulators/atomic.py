"""Outputs that are whole or absent: atomic files, swapped directories, one writer at a time.

- `atomic_write(path, write)`: write a temporary sibling, fsync, rename over `path`; readers
  never see half a file, and an interruption leaves the earlier file as it was.
- `swap_directory(tmp, out)`: put a fully written directory in place of `out` with one atomic
  exchange (Linux `renameat2(RENAME_EXCHANGE)`; two renames elsewhere), then delete the old
  one, so the earlier complete output survives any interruption.
- `exclusive_output(out)`: an advisory lock (`flock`) on a hidden sibling of `out`, held while a
  command writes it: a second writer fails at once with `OutputBusyError`, and the lock goes
  with the process if it dies. The holder removes the lock file when it is done (a process
  that locked a removed file notices and locks the new one), so only a killed writer leaves it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class OutputBusyError(RuntimeError):
    """Another process is writing the same output; the message names it and the lock file."""


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call write(tmp_path) then rename tmp_path onto path (see the module docstring).

    A symbolic link is followed (its target is replaced, the link kept).

    Raises:
        ValueError: `path` is a device, FIFO or socket (renaming over it would replace it).
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and not path.is_file() and not path.is_dir():
        raise ValueError(f"{path} is not a regular file (a device, FIFO or socket)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the call is unavailable."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    res = fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EPERM):
        return False  # unsupported here (old kernel, some filesystems)
    raise OSError(err, os.strerror(err), str(b))


def temporary_sibling(out: str | Path) -> Path:
    """A fresh, empty hidden directory beside `out` (same filesystem, for the final rename).

    Call it holding `exclusive_output(out)`: earlier siblings of the same output were left by
    writers that died (a kill), so they are deleted first. The directory gets the mode a plain
    `mkdir` would give (mkdtemp's 0700 would become the output's mode after the swap).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent, f".{glob.escape(out.name)}.*.tmp")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def swap_directory(tmp: str | Path, out: str | Path) -> None:
    """Replace `out` (absent or a directory) by the directory `tmp`.

    Atomic where the platform allows; the old contents are deleted afterwards.
    """
    tmp, out = Path(tmp), Path(out)
    if not out.exists():
        os.replace(tmp, out)
        return
    if _exchange(tmp, out):  # out now holds the new tree, tmp the old one
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def lock_path(out: str | Path) -> Path:
    """The hidden lock file of an output path."""
    out = Path(out)
    return out.parent / f".{out.name}.lock"


_HELD: set[str] = set()
"""Lock files this process holds (a nested `exclusive_output` of the same output is a no-op)."""


@contextlib.contextmanager
def exclusive_output(out: str | Path) -> Iterator[None]:
    """Hold the write lock of `out` for the block (see the module docstring).

    Re-entrant within a process: a command can take the lock before its work starts and the
    library functions that write can take it again.

    Raises:
        OutputBusyError: another process holds it.
    """
    import fcntl

    path = lock_path(out)
    key = str(path.resolve())
    if key in _HELD:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fh = open(path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise OutputBusyError(
                f"{out}: {holder} is writing this output right now (lock {path}); wait for it "
                "or choose another output"
            ) from None
        try:  # the file may have been removed by its last holder before we locked it
            same = os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"llm-usersim (pid {os.getpid()})")
        fh.flush()
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # still locked: a process that opened it retries on the new one
    finally:
        fh.close()


def remove_stale_temporaries(directory: str | Path, pattern: str = ".*.tmp") -> None:
    """Delete `.NAME.*.tmp` leftovers of interrupted atomic writes inside a directory.

    `pattern` narrows them to one output's (a glob); call it only while no live writer can own
    a match (holding that output's `exclusive_output`).
    """
    d = Path(directory)
    if not d.is_dir():
        return
    for p in d.glob(pattern):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
