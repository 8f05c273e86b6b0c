"""The user cache directory and a JSON store safe to share between processes.

Location: ``$LOWMEM_NUMBA_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/lowmem_numba``
(default ``~/.cache/lowmem_numba``).  Files are replaced atomically and updated
under an advisory lock, so concurrent processes never see half a file; a file
that is unreadable, corrupted or of another schema is ignored and rewritten.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: atomic replacement still prevents torn files
    fcntl = None

SCHEMA = 1


def cache_dir() -> Path:
    """The directory lowmem-numba keeps its calibration and plans in."""
    override = os.environ.get("LOWMEM_NUMBA_CACHE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lowmem_numba"


def machine_id() -> str:
    """What a calibration or a measured plan is only valid for."""
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


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(str(path) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_store(path: Path) -> dict:
    """The entries of a store, or {} if it is missing, corrupted or foreign."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def update_store(path: Path, key: str, value) -> None:
    """Set one entry, keeping the others (read-merge-write under the lock)."""
    with _locked(path):
        entries = read_store(path)
        entries[key] = value
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"schema": SCHEMA, "entries": entries}, f, indent=1, sort_keys=True)
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

    from . import api  # noqa: F401  (imports every kernel module)

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
