"""Peak resident memory that one convolution call adds, measured by the OS.

Each measurement runs in a fresh Python process, so nothing else of this
process (other arrays, earlier calls, allocator caches) blurs it:

1. build the inputs and output, make two warm calls (compilation, first-touch
   of any persistent buffer);
2. release freed heap memory to the OS (``malloc_trim``), reset the peak
   resident set size (Linux: write "5" to ``/proc/self/clear_refs``) and read
   the resident size;
3. make one call and read the peak (``VmHWM`` in ``/proc/self/status``).

The difference is the memory the call touched beyond what was already
resident: its workspace, as the operating system sees it.  Where the peak
cannot be reset (not Linux, or ``clear_refs`` not writable) the result says
so (``method="unavailable"``) instead of guessing.

Run ``python -m lowmem_numba.bench.memory --help`` for the command-line form.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Optional

from ._baselines import NUMPY_IM2COL, torch_available
from ._cli import OneLineParser, debug


@dataclass(frozen=True)
class MemoryMeasurement:
    """Peak resident memory added by one warm call.

    Attributes
    ----------
    target : str
        What was measured: an algorithm name (``"layer:<name>"`` for a
        :class:`Conv2d` call with prepacked weights), ``"torch"`` or
        ``"numpy-im2col"``.
    peak_added_bytes : int or None
        Largest increase of the peak resident set over the repeats; None when
        unavailable.
    runs : tuple of int
        The increase measured in each repeat.
    method : str
        ``"VmHWM"`` or ``"unavailable"``.
    reason : str
        Why the measurement is unavailable (empty otherwise).
    output_bytes : int
        Bytes of a result the call allocated itself (torch, which cannot write
        into a preallocated output); 0 when the call wrote into ``out``.
        ``peak_added_bytes - output_bytes`` is the transient memory.
    """

    target: str
    peak_added_bytes: Optional[int]
    runs: tuple
    method: str
    reason: str = ""
    output_bytes: int = 0

    @property
    def transient_bytes(self) -> Optional[int]:
        """Peak added beyond the result itself."""
        if self.peak_added_bytes is None:
            return None
        return max(0, self.peak_added_bytes - self.output_bytes)


def _status_bytes(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def _peak_reset_available():
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        _status_bytes("VmHWM")
        return ""
    except OSError as error:
        return f"cannot reset the peak resident size ({error})"


def _trim_heap():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _measure_in_this_process(spec):
    """Child side: run the spec and return the per-repeat increases."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec["x_shape"]).astype(np.float32)
    w = rng.standard_normal(spec["w_shape"]).astype(np.float32)
    args = spec["args"]
    target = spec["target"]
    if target == "torch":
        try:
            import torch
        except ImportError as error:
            raise RuntimeError(f"torch cannot be imported ({error}); install it to measure torch") from None

        if spec["threads"]:
            torch.set_num_threads(spec["threads"])
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        if spec["layout"] == "NHWC":
            xt = xt.to(memory_format=torch.channels_last)

        def call():
            with torch.no_grad():
                return torch.nn.functional.conv2d(xt, wt, **args)
        output_bytes = call().numel() * 4
    elif target == NUMPY_IM2COL:
        from threadpoolctl import threadpool_limits

        from lowmem_numba.bench._baselines import numpy_im2col_conv2d
        from lowmem_numba._geometry import make_geometry

        if spec["threads"]:
            # Held for the life of this process, which exists only to measure.
            blas_limit = threadpool_limits(limits=spec["threads"], user_api="blas")  # noqa: F841
        output_bytes = 0
        out = np.empty(make_geometry(x.shape, w.shape, **args).output_shape, np.float32)

        def call():
            numpy_im2col_conv2d(x, w, out=out, **args)
    else:
        import lowmem_numba as ln

        output_bytes = 0
        kwargs = dict(threads=spec["threads"], layout=spec["layout"], **args)
        if spec["layout"] == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if target.startswith("layer:"):
            layer = ln.Conv2d(w, algorithm=target[len("layer:"):], **kwargs)
            out = layer(x)
            def call():
                layer(x, out=out)
        else:
            out = ln.conv2d(x, w, algorithm=target, **kwargs)
            def call():
                ln.conv2d(x, w, algorithm=target, out=out, **kwargs)
    call()
    call()
    reason = _peak_reset_available()
    if reason:
        return {"runs": [], "method": "unavailable", "reason": reason, "output_bytes": output_bytes}
    runs = []
    for _ in range(spec["repeats"]):
        result = None
        _trim_heap()
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        before = _status_bytes("VmRSS")
        result = call()
        runs.append(max(0, _status_bytes("VmHWM") - before))
        del result
    return {"runs": runs, "method": "VmHWM", "reason": "", "output_bytes": output_bytes}


def _child_error(process):
    """The measuring process's error, in one line (all of its stderr with ``LOWMEM_NUMBA_DEBUG=1``)."""
    if os.environ.get("LOWMEM_NUMBA_DEBUG", "").strip().lower() not in ("", "0", "no", "false"):
        return "\n" + process.stderr[-5000:]
    lines = [line.strip() for line in process.stderr.splitlines() if line.strip()]
    if not lines:
        return f"exit status {process.returncode}"
    return lines[-1].removeprefix(_CHILD_ERROR)


def peak_added_bytes(target, x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, *,
                     threads=None, layout="NCHW", repeats=3, timeout=600) -> MemoryMeasurement:
    """Measure, in a fresh process, the peak memory one warm call adds.

    Parameters
    ----------
    target : str
        An algorithm name for :func:`lowmem_numba.conv2d` (weights packed per
        call), ``"layer:<name>"`` for a :class:`lowmem_numba.Conv2d` with
        prepacked weights, ``"torch"`` for ``torch.nn.functional.conv2d``, or
        ``"numpy-im2col"`` for :func:`lowmem_numba.bench._baselines.numpy_im2col_conv2d`
        (the naive numpy baseline; NCHW only).
    x_shape : tuple of int
        NCHW input shape (the measuring process converts it to ``layout``).
    w_shape, stride, padding, dilation, groups
        As for :func:`lowmem_numba.conv2d`.
    threads : int, optional
        Thread count (torch: ``torch.set_num_threads``).
    layout : {"NCHW", "NHWC"}, default "NCHW"
    repeats : int, default 3
        Measured calls; the result is the largest.
    timeout : float, default 600
        Seconds before the measuring process is abandoned.

    Returns
    -------
    MemoryMeasurement

    Raises
    ------
    RuntimeError
        If the measuring process fails (its error, in one line, is included)
        or takes longer than ``timeout``.
    ValueError
        For ``"numpy-im2col"`` with a layout other than NCHW.
    """
    if target == NUMPY_IM2COL and layout != "NCHW":
        raise ValueError(f"{NUMPY_IM2COL} measures NCHW calls only; got layout={layout!r}")
    spec = {"target": target, "x_shape": list(x_shape), "w_shape": list(w_shape),
            "args": {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups},
            "threads": threads, "layout": layout, "repeats": int(repeats)}
    try:
        process = subprocess.run([sys.executable, "-m", "lowmem_numba.bench.memory", "--spec", json.dumps(spec)],
                                 capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"measuring {target} took more than {timeout:g} s; abandoned") from None
    if process.returncode != 0:
        raise RuntimeError(f"measuring {target} failed: {_child_error(process)}")
    try:
        result = json.loads(process.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"measuring {target} failed: no result from the measuring process") from None
    runs = tuple(result["runs"])
    return MemoryMeasurement(target, max(runs) if runs else None, runs, result["method"],
                             result["reason"], result["output_bytes"])


#: How the measuring process starts its one-line error on stderr.
_CHILD_ERROR = "measuring process error: "

PROG = "python -m lowmem_numba.bench.memory"


def _argument(parse, what):
    def convert(text):
        try:
            return parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}") from None
    return convert


def _whole(text, minimum):
    text = text.strip()
    if not text.isdecimal() or len(text) > 9 or int(text) < minimum:
        raise ValueError(text)
    return int(text)


def _shape(text):
    items = text.split(",")
    if len(items) != 4:
        raise ValueError(text)
    return tuple(_whole(item, 1) for item in items)


def check_target(target, x_shape, w_shape, padding=0, threads=None) -> None:
    """Check a measurement's arguments before a process is started for it.

    Raises
    ------
    ValueError
        For an unknown target, inconsistent shapes, a convolution the
        algorithm does not support, or a thread count out of range.
    """
    from .. import _registry as registry
    from .._geometry import make_geometry
    from .._threads import max_threads

    if threads is not None and not 1 <= threads <= max_threads():
        raise ValueError(f"thread count {threads} is out of range: Numba has {max_threads()} thread(s) "
                         f"(NUMBA_NUM_THREADS)")
    geometry = make_geometry(x_shape, w_shape, padding=padding)
    if target in ("torch", NUMPY_IM2COL):
        return
    name = target[len("layer:"):] if target.startswith("layer:") else target
    reason = registry.get(name).unsupported(geometry)
    if reason is not None:
        raise ValueError(f"{name} does not support this convolution: {reason}")


def main(argv=None):
    """Measure one call from the command line; returns the exit status.

    Errors are one line on stderr: exit status 2 for bad arguments (checked
    before the measuring process starts), 1 when the measurement fails (the
    measuring process's own error, in one line), 130 after Ctrl-C.
    ``LOWMEM_NUMBA_DEBUG=1`` shows full tracebacks instead.
    """
    parser = OneLineParser(prog=PROG, description="Peak memory one convolution call adds (fresh process).")
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("target", nargs="?", help='algorithm name, "layer:<name>", "torch" or "numpy-im2col"')
    parser.add_argument("--x-shape", type=_argument(_shape, "shape"), default=(1, 64, 224, 224),
                        metavar="N,C,H,W", help="NCHW input shape (default 1,64,224,224)")
    parser.add_argument("--w-shape", type=_argument(_shape, "shape"), default=(64, 64, 3, 3),
                        metavar="M,C,KH,KW", help="weight shape (default 64,64,3,3)")
    parser.add_argument("--padding", type=_argument(lambda text: _whole(text, 0), "padding"), default=1,
                        help="zero padding on each side (default 1)")
    parser.add_argument("--threads", type=_argument(lambda text: _whole(text, 1), "thread count"),
                        default=None, help="thread count (default: all)")
    args = parser.parse_args(argv)
    try:
        if args.spec:  # the measuring process: errors as one line the parent relays
            try:
                result = _measure_in_this_process(json.loads(args.spec))
            except (OSError, ValueError, TypeError, RuntimeError, MemoryError) as error:
                if debug():
                    raise
                message = " ".join(str(error).split()) or type(error).__name__
                print(f"{_CHILD_ERROR}{message}", file=sys.stderr)
                return 1
            print(json.dumps(result))
            return 0
        if not args.target:
            parser.error("give a target")
        try:
            check_target(args.target, args.x_shape, args.w_shape, args.padding, args.threads)
        except (ValueError, TypeError) as error:  # bad arguments: a usage error
            if debug():
                raise
            parser.error(" ".join(str(error).split()))
        try:
            if args.target == "torch" and not torch_available():
                raise RuntimeError("torch is not installed: cannot measure torch")
            result = peak_added_bytes(args.target, args.x_shape, args.w_shape, padding=args.padding,
                                      threads=args.threads)
        except (OSError, ValueError, RuntimeError, MemoryError) as error:
            if debug():
                raise
            print(f"{PROG}: error: {' '.join(str(error).split()) or type(error).__name__}", file=sys.stderr)
            return 1
        print(json.dumps(asdict(result)))
        return 0
    except KeyboardInterrupt:
        if debug():
            raise
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
