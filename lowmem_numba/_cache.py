"""The user cache directory and a JSON store safe to share between processes.

Location: ``$LOWMEM_NUMBA_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/lowmem_numba``
(default ``~/.cache/lowmem_numba``; a relative ``XDG_CACHE_HOME`` is ignored, as
the XDG Base Directory specification requires).  Files are replaced atomically
and updated under an advisory lock, so concurrent processes never see half a
file; a file that is unreadable, corrupted or of another schema is ignored and
rewritten.

Hygiene: only regular files are read, written or locked.  A FIFO, device or
directory where a cache file should be is treated as absent and never opened
for blocking I/O (opening a FIFO for reading blocks until a writer appears), and
nothing is written through it.  Files are created readable by the other users of
a shared cache directory (``0o644`` less the umask), and a file larger than
:data:`MAX_STORE_BYTES` is ignored rather than read.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import stat
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: atomic replacement still prevents torn files
    fcntl = None

SCHEMA = 1

#: A store larger than this is not read (treated as corrupted and rewritten):
#: the bounded stores this library writes stay far below it (a full plans.json
#: of ``scheduler.MAX_STORED_PLANS`` compact entries is about 200 KB).
MAX_STORE_BYTES = 8 * 2**20

#: Permissions of the files written, before the umask: readable by the other
#: users of a shared cache directory (mkstemp alone would create them 0o600).
FILE_MODE = 0o644

# O_NONBLOCK makes opening a FIFO return at once instead of waiting for a peer;
# O_NOCTTY keeps a terminal device from becoming the controlling terminal.
_OPEN_FLAGS = os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def cache_dir() -> Path:
    """The directory lowmem-numba keeps its calibration and plans in."""
    override = os.environ.get("LOWMEM_NUMBA_CACHE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME")
    if not base or not os.path.isabs(base):
        # The XDG spec: "If an implementation encounters a relative path in any
        # of these variables it should consider the path invalid and ignore it."
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lowmem_numba"


@functools.lru_cache(maxsize=1)
def machine_id() -> str:
    """What a calibration or a measured plan is only valid for (read once per
    process: every "auto" call's plan key holds it)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu} x{os.cpu_count()}"


class NotRegularFile(OSError):
    """A cache path exists but is not a regular file (a FIFO, device, directory...)."""


def _open_regular(path, flags: int, mode: int = FILE_MODE) -> int:
    """Open ``path`` without blocking and return the descriptor of a regular file.

    The path is checked before opening (so that no device is opened at all) and
    the descriptor after (so that a file swapped in between is caught too).

    Raises
    ------
    FileNotFoundError
        If the path does not exist and ``flags`` do not create it.
    NotRegularFile
        If the path is anything but a regular file (symbolic links to regular
        files are followed).
    """
    try:
        before = os.stat(path)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
    else:
        if not stat.S_ISREG(before.st_mode):
            raise NotRegularFile(f"{path} is not a regular file; lowmem-numba does not use it")
    fd = os.open(path, flags | _OPEN_FLAGS, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(f"{path} is not a regular file; lowmem-numba does not use it")
    except BaseException:
        os.close(fd)
        raise
    return fd


_umask_lock = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    # Read-only is enough for flock, so other users of a shared directory can
    # lock a lock file they did not create.
    fd = _open_regular(str(path) + ".lock", os.O_RDONLY | os.O_CREAT, FILE_MODE & ~_umask())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_store(path: Path) -> dict:
    """The entries of a store, or {} if it is missing, corrupted, foreign, too
    large or not a regular file."""
    try:
        fd = _open_regular(path, os.O_RDONLY)
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_STORE_BYTES + 1)
    except OSError:
        return {}
    if len(raw) > MAX_STORE_BYTES:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def update_store(path: Path, key: str, value, max_entries=None) -> None:
    """Set one entry, keeping the others (read-merge-write under the lock).

    Parameters
    ----------
    path : Path
        The store; its directory is created if needed.
    key : str
    value
        Anything JSON can write.
    max_entries : int, optional
        Keep at most this many entries, dropping the least recently written
        (entries are kept in the order they were written, newest last).

    Raises
    ------
    OSError
        If the store cannot be written, or its path (or its lock file's) is not
        a regular file, which is left untouched.
    """
    with _locked(path):
        try:
            os.close(_open_regular(path, os.O_RDONLY))
        except FileNotFoundError:
            pass  # a new store
        entries = read_store(path)
        entries.pop(key, None)  # re-insert at the end: the newest entry
        entries[key] = value
        if max_entries is not None:
            for old in list(entries)[:max(0, len(entries) - max_entries)]:
                del entries[old]
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                if hasattr(os, "fchmod"):
                    os.fchmod(f.fileno(), FILE_MODE & ~_umask())
                # Compact: the store is rewritten whole on each update.
                json.dump({"schema": SCHEMA, "entries": entries}, f, separators=(",", ":"))
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise


def clear_compiled() -> int:
    """Delete the kernels Numba compiled and cached for lowmem_numba.

    Numba invalidates its on-disk cache per source file, so a kernel that
    inlined a helper from another module keeps its old machine code after that
    helper changes (for example when editing the library).  Clearing forces a
    recompilation at the next call.

    Returns
    -------
    int
        Number of cache files removed.
    """
    import sys

    from numba.core.dispatcher import Dispatcher

    # Importing any submodule ran the package's __init__, which imports every
    # kernel module: their dispatchers are all in sys.modules already.

    places = set()
    for name, module in list(sys.modules.items()):
        if not name.startswith("lowmem_numba") or not getattr(module, "__file__", None):
            continue
        for obj in vars(module).values():
            cache = getattr(obj, "_cache", None) if isinstance(obj, Dispatcher) else None
            if cache is not None and getattr(cache, "cache_path", None):
                places.add((Path(cache.cache_path), Path(module.__file__).stem))
    removed = 0
    for directory, stem in places:
        for pattern in (f"{stem}.*.nbi", f"{stem}.*.nbc"):
            for path in directory.glob(pattern):
                path.unlink(missing_ok=True)
                removed += 1
    return removed
