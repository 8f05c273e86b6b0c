"""How lowmem_numba's kernels are compiled: JIT required, and where they are cached.

Imported by the package before any kernel module, and imports nothing from the
package, so that the decisions below are taken once, before the first kernel is
decorated.

JIT.  Every kernel calls BLAS through a Numba intrinsic, which exists only in
compiled code, so ``NUMBA_DISABLE_JIT=1`` is refused at import with an
ImportError that says so (instead of a NotImplementedError deep inside a call).

Cache.  Kernels are declared with :func:`njit` (this module's), which takes
``cache=True`` to mean "cache wherever it is safe":

1. where Numba itself would cache: ``$NUMBA_CACHE_DIR``, else ``__pycache__``
   beside the sources, else Numba's user-wide directory (``~/.cache/numba``);
2. otherwise (a service user running a package installed by root, with an
   unwritable home) in lowmem_numba's user cache directory,
   ``$LOWMEM_NUMBA_CACHE_DIR/numba``, else ``$XDG_CACHE_HOME/lowmem_numba/numba``
   or ``~/.cache/lowmem_numba/numba``;
3. otherwise in ``lowmem_numba-numba-<uid>`` under :func:`tempfile.gettempdir`,
   created with mode 0o700 and used only if it is a real directory owned by this
   user that nobody else can write.  A cache file is machine code that will be
   executed, so a directory someone else could plant files in is never used;
4. otherwise (or when ``$NUMBA_CACHE_DIR`` is set but unusable: the user asked
   for that place and no other) kernels are compiled in every process, and one
   RuntimeWarning says why.

A cached kernel is reused only while the sources of the whole package are
unchanged (:data:`PACKAGE_STAMP`), not only its own file, which is all Numba
checks: a kernel inlines the micro-kernel intrinsics of ``_microkernel`` and
jitted helpers of other modules, so an edit there (a ``git pull`` into an
editable install) left kernels of the other modules running the old code
from their cache, silently.

:data:`CACHE_DIR` and :data:`CACHE_REASON` record the outcome.

Inlining.  A call from one compiled function to another that takes arrays
updates each array's reference count on entry and exit, with atomic
instructions, which on x86 also wait for every pending store to reach the
cache.  Helpers called per tile, per row or per run of a kernel are
therefore declared ``inline="always"``, so that the call disappears (Numba
inlines them into the kernel before compiling it).  On the Intel Xeon kind a
pixel tile called through a helper cost about 45-70 ns more than inlined
(about 20 of its reduction steps, in a loop over cached tiles), and at batch 1
or 8 on one thread MobileNet's pw1 then ran 1.09-1.10x faster, its conv1
1.07x, AlexNet's and GoogLeNet's first layers on the channel-lane tile
1.04-1.16x, Winograd layers up to 1.11x (best of two or three alternating
processes).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import types
import warnings
from typing import Optional

import numba
from numba.core import caching

if numba.config.DISABLE_JIT:
    raise ImportError(
        "lowmem_numba needs Numba's JIT compiler: its kernels call BLAS from compiled code, "
        "which has no pure-Python fallback. Unset NUMBA_DISABLE_JIT (it is set to "
        f"{os.environ.get('NUMBA_DISABLE_JIT', '1')!r}) to use lowmem_numba."
    )

#: Numba's own locators work for this package (``"numba"``), a fallback
#: directory is used (``"fallback"``), or nothing is cached (``"none"``).
CACHE_MODE: str = "numba"
#: The fallback directory compiled kernels are cached in, if one is used.
CACHE_DIR: Optional[str] = None
#: Why the cache is where it is (or why there is none), for diagnostics.
CACHE_REASON: str = ""


def _probe():
    """Stands in for a kernel of this package when asking Numba where it would cache."""


def _numba_can_cache_here() -> bool:
    # Ask Numba itself (its full locator logic, including NUMBA_CACHE_DIR and
    # NUMBA_CACHE_LOCATOR_CLASSES) about a function defined in this package.
    # Creating a dispatcher compiles nothing.
    try:
        numba.njit(_probe).enable_caching()
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return False
    return True


def _private_directory(path: str, strict: bool) -> Optional[str]:
    """``path`` created if missing and returned if it is safe and writable, else None.

    Safe means a real directory (not a symlink) owned by this user that no
    other user can write; with ``strict`` (a shared parent such as /tmp) no
    other user may read or enter it either.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return None
    forbidden = 0o077 if strict else 0o022
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()
            or info.st_mode & forbidden):
        return None
    try:
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return None
    return path


def _user_cache_directory() -> str:
    # The same rule as lowmem_numba._cache.cache_dir (repeated so that this
    # module stays a leaf imported before everything else).
    override = os.environ.get("LOWMEM_NUMBA_CACHE_DIR")
    if override:
        return os.path.join(override, "numba")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lowmem_numba", "numba")


def _temporary_directory() -> Optional[str]:
    try:
        parent = tempfile.gettempdir()
    except OSError:  # no usable temporary directory at all
        return None
    return os.path.join(parent, f"lowmem_numba-numba-{os.geteuid()}")


def _fallback_directory() -> tuple[Optional[str], str]:
    """The first safe, writable fallback directory (or None) and why."""
    user = _private_directory(_user_cache_directory(), strict=False)
    if user is not None:
        return user, f"Numba cannot cache beside the sources or in its user directory; using {user}"
    temporary = _temporary_directory()
    if temporary is not None and _private_directory(temporary, strict=True) is not None:
        return temporary, ("Numba cannot cache beside the sources or in its user directory, and "
                           f"{_user_cache_directory()} is not writable; using {temporary}")
    return None, (
        "no writable cache directory: not beside the sources, not Numba's user directory, "
        f"not {_user_cache_directory()}, and {temporary or 'the temporary directory'} "
        "is unusable (missing, not writable, or not a private directory of this user)"
    )


def _decide() -> None:
    global CACHE_MODE, CACHE_DIR, CACHE_REASON
    if _numba_can_cache_here():
        CACHE_MODE, CACHE_REASON = "numba", "Numba's own cache locations are writable"
        return
    if numba.config.CACHE_DIR:
        CACHE_MODE = "none"
        CACHE_REASON = f"NUMBA_CACHE_DIR={numba.config.CACHE_DIR!r} is not a writable directory"
    else:
        CACHE_DIR, CACHE_REASON = _fallback_directory()
        CACHE_MODE = "none" if CACHE_DIR is None else "fallback"
    if CACHE_MODE == "none":
        warnings.warn(
            f"lowmem_numba: compiled kernels will not be cached ({CACHE_REASON}); each process "
            "compiles the kernels it uses again (about a second each). Set NUMBA_CACHE_DIR to a "
            "directory you own to cache them.",
            RuntimeWarning,
            stacklevel=2,
        )


def _package_stamp() -> str:
    """A digest of every Python source of the package (paths and contents)."""
    root = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                digest.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as source:
                    digest.update(hashlib.sha256(source.read()).digest())
    return digest.hexdigest()


#: What a cached kernel's freshness is checked against, besides its own file.
PACKAGE_STAMP: str = _package_stamp()


class _PackageStampedLocator:
    """A Numba cache locator whose source stamp is its own file's and the
    package's (:data:`PACKAGE_STAMP`); everything else is the locator's."""

    def __init__(self, locator):
        self._locator = locator

    def __getattr__(self, name):
        return getattr(self._locator, name)

    def get_source_stamp(self):
        return self._locator.get_source_stamp(), PACKAGE_STAMP


class _StampedCacheImpl(caching.CompileResultCacheImpl):
    def __init__(self, py_func):
        super().__init__(py_func)
        self._locator = _PackageStampedLocator(self._locator)


class _StampedCache(caching.FunctionCache):
    _impl_class = _StampedCacheImpl


class _FallbackLocator(caching.UserProvidedCacheLocator):
    # Numba's locator for NUMBA_CACHE_DIR, pointed at CACHE_DIR instead, so that
    # the process-wide numba.config is left alone for other libraries.
    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(CACHE_DIR, self.get_suitable_cache_subpath(py_file))

    @classmethod
    def from_function(cls, py_func, py_file):
        if CACHE_DIR is None:
            return None
        return super(caching.UserProvidedCacheLocator, cls).from_function(py_func, py_file)


class _FallbackCacheImpl(_StampedCacheImpl):
    _locator_classes = [_FallbackLocator]


class _FallbackCache(caching.FunctionCache):
    _impl_class = _FallbackCacheImpl


def _enable_cache(dispatcher) -> None:
    if CACHE_MODE == "numba":
        try:
            dispatcher._cache = _StampedCache(dispatcher.py_func)  # what enable_caching does, stamped
            return
        except RuntimeError:
            # Numba could cache this package's top directory but not this
            # file's (a subpackage with other permissions): run it uncached
            # rather than fail the import.
            return
    if CACHE_MODE == "fallback":
        try:
            dispatcher._cache = _FallbackCache(dispatcher.py_func)
        except RuntimeError:  # NUMBA_CACHE_LOCATOR_CLASSES overrides every locator list
            pass


#: ``index & NONNEG`` is the index itself for every valid (non-negative) index
#: and tells LLVM it is non-negative: Numba wraps negative indices with a select
#: per access, which otherwise keeps loops over computed offsets from
#: vectorising (layout transposes: 1.3 ns per element without it, 0.42-0.58
#: with; im2col's copy runs 3.6x faster).
NONNEG = (1 << 62) - 1


def njit(*args, cache: bool = False, **options):
    """``numba.njit`` for lowmem_numba's kernels, with ``cache=True`` made safe.

    Parameters
    ----------
    *args
        As for :func:`numba.njit`: the function (bare ``@njit``) or signatures.
    cache : bool
        Cache compiled code on disk where this module decided it is safe to
        (see the module docstring); never raise because no location is writable.
    **options
        Passed to :func:`numba.njit` (``parallel``, ``nogil``, ...).

    Returns
    -------
    numba.core.dispatcher.Dispatcher or callable
        The dispatcher, or a decorator making one.
    """
    signatures = None
    if args and not callable(args[0]):
        signatures, args = args[0], args[1:]

    def decorate(py_func):
        dispatcher = numba.njit(**options)(py_func)
        if cache:
            _enable_cache(dispatcher)
        if signatures is not None:  # compiled after caching is set up, as numba.jit does
            for signature in signatures if isinstance(signatures, list) else [signatures]:
                dispatcher.compile(signature)
            dispatcher.disable_compile()
        return dispatcher

    if args:
        return decorate(args[0])
    return decorate


def serial_twin(kernel, name: str):
    """``kernel`` (a parallel dispatcher) compiled again from the same source
    without ``parallel=True`` (with ``cache=True, nogil=True``), as the
    function ``name`` of its module: its ``prange`` loops run as plain
    loops, outside any parallel region.

    A twin of its own name, because Numba names and keys a function's cache
    files by its module, name and first line, not by its compile options:
    the same Python function compiled both ways would load one from the
    other's cache.
    """
    py_func = kernel.py_func
    twin = types.FunctionType(py_func.__code__, py_func.__globals__, name, py_func.__defaults__,
                              py_func.__closure__)
    twin.__qualname__ = name
    twin.__module__ = py_func.__module__
    twin.__doc__ = f"{py_func.__name__} without parallel=True (see lowmem_numba._compile.serial_twin)."
    return njit(cache=True, nogil=True)(twin)


_decide()
