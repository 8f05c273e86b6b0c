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

Run ``python -m lowmem_numba.memory --help`` for the command-line form.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Optional

from .baselines import NUMPY_IM2COL


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
        import torch

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

        from lowmem_numba.baselines import numpy_im2col_conv2d
        from lowmem_numba.geometry import make_geometry

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


def peak_added_bytes(target, x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1, *,
                     threads=None, layout="NCHW", repeats=3, timeout=600) -> MemoryMeasurement:
    """Measure, in a fresh process, the peak memory one warm call adds.

    Parameters
    ----------
    target : str
        An algorithm name for :func:`lowmem_numba.conv2d` (weights packed per
        call), ``"layer:<name>"`` for a :class:`lowmem_numba.Conv2d` with
        prepacked weights, ``"torch"`` for ``torch.nn.functional.conv2d``, or
        ``"numpy-im2col"`` for :func:`lowmem_numba.baselines.numpy_im2col_conv2d`
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
        If the measuring process fails (its error output is included).
    ValueError
        For ``"numpy-im2col"`` with a layout other than NCHW.
    """
    if target == NUMPY_IM2COL and layout != "NCHW":
        raise ValueError(f"{NUMPY_IM2COL} measures NCHW calls only; got layout={layout!r}")
    spec = {"target": target, "x_shape": list(x_shape), "w_shape": list(w_shape),
            "args": {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups},
            "threads": threads, "layout": layout, "repeats": int(repeats)}
    process = subprocess.run([sys.executable, "-m", "lowmem_numba.memory", "--spec", json.dumps(spec)],
                             capture_output=True, text=True, timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"measuring {target} failed:\n{process.stderr[-3000:]}")
    result = json.loads(process.stdout.strip().splitlines()[-1])
    runs = tuple(result["runs"])
    return MemoryMeasurement(target, max(runs) if runs else None, runs, result["method"],
                             result["reason"], result["output_bytes"])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lowmem_numba.memory",
                                     description="Peak memory one convolution call adds (fresh process).")
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("target", nargs="?", help='algorithm name, "layer:<name>", "torch" or "numpy-im2col"')
    parser.add_argument("--x-shape", default="1,64,224,224")
    parser.add_argument("--w-shape", default="64,64,3,3")
    parser.add_argument("--padding", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.spec:
        print(json.dumps(_measure_in_this_process(json.loads(args.spec))))
        return 0
    if not args.target:
        parser.error("give a target")
    shape = lambda text: tuple(int(v) for v in text.split(","))
    result = peak_added_bytes(args.target, shape(args.x_shape), shape(args.w_shape),
                              padding=args.padding, threads=args.threads)
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
