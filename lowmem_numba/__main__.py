"""Command line: ``lowmem-numba`` or ``python -m lowmem_numba``.

Benchmark the algorithms on a network's layers, see what the scheduler picks
under a memory limit, and turn saved results into a report.

    lowmem-numba                      the AlexNet table: every algorithm at 1 thread and at all
                                      threads, against torch and numpy, with the scheduler's pick
                                      (the same as ``lowmem-numba bench``)
    lowmem-numba bench --network vgg16 --threads 1,2 --quick --json vgg16.json
    lowmem-numba plan --network mobilenet --memory-limit 1MiB
    lowmem-numba report vgg16.json --out-dir reports/
    lowmem-numba scale --network vgg16 --images 64 --workers 2 --threads-per-worker 1

Errors are one line on stderr and a non-zero exit status: 2 for a usage error
(bad arguments), 1 for a failure while running (a file that cannot be read or
written, an invalid result file, a layer that does not fit a limit), 130 after
Ctrl-C.  When stdout is closed early (``lowmem-numba plan | head -1``) the
command stops quietly.  Only the expected kinds of failure (OSError,
ValueError, TypeError, RuntimeError, MemoryError) are shortened to one line;
anything else is a bug and keeps its traceback.  Set the environment variable
``LOWMEM_NUMBA_DEBUG=1`` to see the full traceback of every error.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time

from . import _registry as registry
from ._version import __version__
from .bench._cli import OneLineParser, debug, printable
from .bench._suite import (LAYOUTS, BenchConfig, Progress, check_writable, count_steps, run_bench, write_json,
                        select_layers)
from .bench._networks import NETWORKS
from .bench._scale import DASK_EXTRA_HINT, SCALE_NETWORKS
from ._scheduler import MODES, plan, plan_network
from ._units import format_bytes, parse_size
from ._threads import max_threads

PROG = "lowmem-numba"

def parse_threads(text):
    """Parse a thread list such as ``1,2`` (``all`` is every Numba thread).

    Returns
    -------
    tuple of int
        Distinct counts in the order given.

    Raises
    ------
    ValueError
        For anything but counts from 1 to ``numba.config.NUMBA_NUM_THREADS``.
    """
    counts = []
    for item in text.split(","):
        item = item.strip()
        if item.lower() == "all":
            count = max_threads()
        elif item.isdecimal() and len(item) < 10:
            count = int(item)
        else:
            raise ValueError(f"invalid thread list {text!r}: give counts separated by commas, e.g. 1,2 or 1,all")
        if not 1 <= count <= max_threads():
            raise ValueError(f"thread count {count} is out of range: Numba has {max_threads()} thread(s) "
                             f"(NUMBA_NUM_THREADS)")
        if count not in counts:
            counts.append(count)
    return tuple(counts)


def parse_algorithms(text):
    """Parse ``all`` or a comma-separated list of registered algorithm names.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones).
    """
    if text.strip().lower() == "all":
        return registry.names()
    names = []
    for name in (item.strip() for item in text.split(",")):
        registry.get(name)
        if name not in names:
            names.append(name)
    return tuple(names)


class _ParsingBug(Exception):
    """A TypeError in an argument's parser: a bug, which argparse would show as a usage error."""


def _argument_type(parse, name):
    """An argparse type calling ``parse``, whose ValueError becomes a usage error."""
    def convert(text):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        except TypeError as error:
            raise _ParsingBug(f"parsing {name} {text!r}") from error
    convert.__name__ = name
    return convert


def _thread_budget(text):
    counts = parse_threads(text)
    if len(counts) != 1:
        raise ValueError(f"give one thread budget, e.g. 2; got {text!r}")
    return counts[0]


def _names(text):
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _non_negative_float(text):
    value = float(text)
    if not value >= 0:
        raise ValueError(f"expected a number of seconds >= 0; got {text!r}")
    return value


def _positive_int(text):
    if not text.strip().isdecimal() or len(text.strip()) > 9 or int(text) < 1:
        raise ValueError(f"expected a whole number from 1 to 999999999; got {text!r}")
    return int(text)


def _non_negative_int(text):
    if not text.strip().isdecimal() or len(text.strip()) > 9:
        raise ValueError(f"expected a whole number from 0 to 999999999; got {text!r}")
    return int(text)


def _worker_count(text):
    count = _non_negative_int(text)
    most = 4 * (os.cpu_count() or 1)
    if count > most:
        raise ValueError(f"{count} workers is more than 4 per core ({os.cpu_count()} cores); give 0 to {most}")
    return count


def _algorithm_or_auto(text):
    text = text.strip()
    return "auto" if text.lower() == "auto" else registry.get(text).name


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lowmem-numba`` and its subcommands."""
    parser = OneLineParser(prog=PROG, description="\n\n".join(__doc__.split("\n\n")[1:3]),
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="Without a command: the AlexNet table (lowmem-numba bench with its defaults).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{bench,plan,report,calibrate,scale}")

    bench = commands.add_parser("bench", help="time every algorithm on a network's layers",
                                description="Time every algorithm on a network's layers, in this process "
                                            "(best of a few calls), with the baselines and the scheduler's pick.")
    bench.add_argument("--network", choices=NETWORKS, default="alexnet", help="layer table (default alexnet)")
    bench.add_argument("--layers", type=_names, default=None, metavar="NAMES",
                       help="comma-separated layer names of the network (default: all; --quick: a few)")
    bench.add_argument("--threads", type=_argument_type(parse_threads, "thread list"), default=None,
                       metavar="LIST", help="comma-separated thread counts, 'all' for every Numba thread "
                                            "(default 1,all)")
    bench.add_argument("--algorithms", type=_argument_type(parse_algorithms, "algorithm list"),
                       default=None, metavar="NAMES", help="comma-separated algorithm names (default: all)")
    bench.add_argument("--quick", action="store_true",
                       help="one timed call per measurement and, unless --layers, a few layers")
    bench.add_argument("--repeats", type=_argument_type(_positive_int, "count"), default=3,
                       help="timed calls per measurement, the best counts (default 3)")
    bench.add_argument("--max-seconds", type=_argument_type(_non_negative_float, "seconds"), default=0.25,
                       metavar="S", help="skip calls the cost model predicts slower than S seconds, such as "
                                         "the direct loop nest on large layers (default 0.25; inf: none)")
    bench.add_argument("--layout", choices=LAYOUTS, default="NCHW",
                       help="layout of the calls; native: each algorithm's own (default NCHW)")
    bench.add_argument("--no-baselines", action="store_true", help="skip torch and numpy im2col")
    bench.add_argument("--memory", action="store_true",
                       help="also measure each call's peak memory in a fresh process (slow)")
    bench.add_argument("--json", metavar="FILE", help="write every result, machine and version to FILE")
    bench.set_defaults(run=_run_bench)

    planner = commands.add_parser("plan", help="the scheduler's choice per layer, with reasons",
                                  description="The scheduler's algorithm and thread count for each layer of "
                                              "a network under a workspace limit, and why the others lost.")
    planner.add_argument("--network", choices=NETWORKS, default="alexnet", help="layer table (default alexnet)")
    planner.add_argument("--layers", type=_names, default=None, metavar="NAMES",
                         help="comma-separated layer names (default: all)")
    planner.add_argument("--memory-limit", type=_argument_type(parse_size, "size"), default=None,
                         metavar="SIZE", help="largest workspace, e.g. 1MiB, 512KiB, 2GB, 1000, 0 "
                                              "(default: none)")
    planner.add_argument("--threads", type=_argument_type(_thread_budget, "thread count"), default=None,
                         metavar="N", help="thread budget (default: all of Numba's)")
    planner.add_argument("--mode", choices=MODES, default="model",
                         help="model: calibrated cost model; measure: time the candidates (default model)")
    planner.add_argument("--layout", choices=("NCHW", "NHWC"), default="NCHW", help="layout of the calls")
    planner.add_argument("-v", "--verbose", action="store_true", help="also every candidate of every layer")
    planner.set_defaults(run=_run_plan)

    report = commands.add_parser("report", help="markdown table and PNG plot of a bench --json file",
                                 description="Write <name>.md and <name>.png (time against workspace per "
                                             "layer) for a file written by bench --json.")
    report.add_argument("file", metavar="FILE.json")
    report.add_argument("--out-dir", metavar="DIR", default=None,
                        help="directory for the report (default: the JSON file's)")
    report.set_defaults(run=_run_report)

    calibrate = commands.add_parser("calibrate", help="measure the cost model's machine constants again",
                                    description="Measure the cost model's machine constants again, store "
                                                "them (unless a measurement stayed implausible) and say what "
                                                "they imply; --show prints the stored ones without measuring.")
    calibrate.add_argument("--show", action="store_true", help="print the stored calibration, measure nothing")
    calibrate.set_defaults(run=_run_calibrate)

    scale = commands.add_parser(
        "scale", help="a network's convolution stack over an image set, on Dask workers",
        description="Run a network's convolution stack (ReLU and max-pools between) over a synthetic image "
                    "set on a local Dask cluster (or an existing one, --scheduler), one task per chunk of "
                    "images, and print images/s, each worker's peak memory as the OS measured it and the "
                    "plan each worker used.  Needs the dask extra: " + DASK_EXTRA_HINT + ".")
    scale.add_argument("--network", choices=SCALE_NETWORKS, default="vgg16",
                       help="a network whose table is a chain (default vgg16)")
    scale.add_argument("--images", type=_argument_type(_positive_int, "count"), default=64,
                       help="images in the set (default 64)")
    scale.add_argument("--chunk", type=_argument_type(_positive_int, "count"), default=4, metavar="N",
                       help="images per task (default 4)")
    scale.add_argument("--workers", type=_argument_type(_worker_count, "worker count"), default=None,
                       metavar="N", help="worker processes of the local cluster (default 1); 0: no Dask, "
                                         "this process on all threads (the baseline)")
    scale.add_argument("--threads-per-worker", type=_argument_type(_positive_int, "count"), default=None,
                       metavar="N", help="tasks each worker runs at once (default 1)")
    scale.add_argument("--threads", type=_argument_type(_thread_budget, "thread count"), default=None,
                       metavar="N", help="kernel threads per task (default: cores / tasks that run at once "
                                         "on the machine)")
    scale.add_argument("--algorithm", type=_argument_type(_algorithm_or_auto, "algorithm"), default="auto",
                       metavar="NAME", help="an algorithm name, or auto (default): planned per layer")
    scale.add_argument("--memory-limit", type=_argument_type(parse_size, "size"), default=None, metavar="SIZE",
                       help="largest workspace per task, e.g. 1MiB (default: none)")
    scale.add_argument("--image-size", type=_argument_type(_positive_int, "pixels"), default=None,
                       metavar="PIXELS", help="square images of this size instead of the network's own")
    scale.add_argument("--scheduler", metavar="ADDRESS", default=None,
                       help="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786, instead of a local cluster")
    scale.add_argument("--seed", type=_argument_type(_non_negative_int, "seed"), default=0,
                       help="seed of the images and weights (default 0)")
    scale.add_argument("--json", metavar="FILE", help="write the result to FILE")
    scale.set_defaults(run=_run_scale, parser=scale)
    return parser


def _run_bench(args):
    from .bench._report import layer_table, legend

    threads = args.threads or tuple(dict.fromkeys((1, max_threads())))
    config = BenchConfig(network=args.network, threads=threads, algorithms=args.algorithms or registry.names(),
                         layer_names=args.layers, quick=args.quick, repeats=args.repeats,
                         max_seconds=args.max_seconds, layout=args.layout, baselines=not args.no_baselines,
                         memory=args.memory)
    if args.json is not None:
        check_writable(args.json)  # before anything is measured
    chosen = select_layers(config.network, config.layer_names, config.quick)
    extras = "" if args.no_baselines else " (+ baselines)"
    print(f"{PROG} {__version__}: {config.network}, {len(chosen)} layer(s) x {len(config.algorithms)} "
          f"algorithm(s){extras} at {', '.join(map(str, threads))} thread(s); best of {config.timed_repeats}+ "
          f"in-process call(s); {config.layout} layout\n", flush=True)
    progress = Progress(count_steps(config, len(chosen)), sys.stderr)
    start = time.perf_counter()

    def show(result, layer):
        progress.clear()
        print(layer_table(result, layer.label) + "\n", flush=True)

    try:
        result = run_bench(config, progress=progress, on_layer=show)
    finally:
        progress.clear()  # an error message starts on a clean line
    print(legend(result))
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"{time.perf_counter() - start:.0f} s in all")
    if args.json is not None:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _rejections(p):
    """Why the other candidates of a plan lost, grouped by reason."""
    unsupported, over, slower, other = {}, {}, {}, {}
    for c in p.candidates:
        if (c.algorithm, c.threads) == (p.algorithm, p.threads):
            continue
        kind, _, detail = c.rejected.partition(": ")
        if kind == "unsupported":
            names = unsupported.setdefault(detail, [])
            if c.algorithm not in names:
                names.append(c.algorithm)
        elif kind == "over budget":
            over[c.algorithm] = min(over.get(c.algorithm, c.workspace_bytes), c.workspace_bytes)
        elif kind == "slower":
            ratio = c.seconds / p.predicted_seconds
            if c.algorithm not in slower or ratio < slower[c.algorithm][0]:
                slower[c.algorithm] = (ratio, c.threads)
        else:
            other.setdefault(c.rejected, []).append(f"{c.algorithm} on {c.threads}")
    lines = []
    if over:
        lines.append("over budget: " + ", ".join(f"{name} ({format_bytes(space)})"
                                                 for name, space in sorted(over.items(), key=lambda i: i[1])))
    lines += [f"unsupported: {', '.join(names)} - {reason}" for reason, names in unsupported.items()]
    if slower:
        lines.append("slower: " + ", ".join(f"{name} {ratio:.2f}x on {threads}" for name, (ratio, threads)
                                            in sorted(slower.items(), key=lambda i: i[1])))
    lines += [f"{reason}: {', '.join(names)}" for reason, names in other.items()]
    return lines


def _run_plan(args):
    threads = args.threads
    chosen = select_layers(args.network, args.layers)
    limit = "no limit" if args.memory_limit is None else format_bytes(args.memory_limit)
    for layer in chosen:  # one layer's failure named here; plan_network reuses these memoised plans
        x_shape = layer.x_shape() if args.layout == "NCHW" else (1, layer.height, layer.width, layer.in_channels)
        try:
            plan(x_shape, layer.w_shape, memory_limit=args.memory_limit, threads=threads, layout=args.layout,
                 mode=args.mode, **layer.conv_args)
        except ValueError as error:
            raise ValueError(f"{layer.label}: {error} ({limit}); try a larger --memory-limit") from None
    network_plan = plan_network(chosen, memory_limit=args.memory_limit, threads=threads, mode=args.mode,
                                layout=args.layout)
    print(network_plan.explain())
    print(f"\nWhy ({args.mode} mode, {args.layout}, workspace {limit}, at most {threads or max_threads()} "
          f"thread(s); times relative to the choice, 'on N' = threads):")
    for name, p in network_plan.plans:
        print(f"\n{name}: {p.algorithm} on {p.threads} thread(s), workspace {format_bytes(p.workspace_bytes)}, "
              f"{'predicted' if p.mode == 'model' else 'measured'} {p.predicted_seconds * 1e3:.3f} ms")
        for line in _rejections(p):
            print(textwrap.fill(line, width=110, initial_indent="  ", subsequent_indent="      ",
                                break_on_hyphens=False))
        if args.verbose:
            print(textwrap.indent(p.explain(), "    "))
    return 0


def _run_calibrate(args):
    from ._costmodel import calibrate_command

    print(calibrate_command(show=args.show))
    return 0


def _run_scale(args):
    from .bench._scale import ScaleConfig, describe_run, format_result, run_scale

    if args.scheduler is not None and (args.workers is not None or args.threads_per_worker is not None):
        args.parser.error("--scheduler uses the cluster's own workers: drop --workers and --threads-per-worker")
    if args.workers == 0 and args.threads_per_worker is not None:
        args.parser.error("--threads-per-worker needs Dask workers (--workers 0 runs in this process)")
    config = ScaleConfig(network=args.network, images=args.images, chunk=args.chunk,
                         workers=None if args.scheduler else (1 if args.workers is None else args.workers),
                         threads_per_worker=None if args.scheduler else (args.threads_per_worker or 1),
                         threads=args.threads, algorithm=args.algorithm, memory_limit=args.memory_limit,
                         scheduler=args.scheduler, image_size=args.image_size, seed=args.seed)
    if args.json is not None:
        check_writable(args.json)
    print(describe_run(config), flush=True)
    chunks = -(-config.images // config.chunk)
    progress = Progress(chunks, sys.stderr)
    try:
        result = run_scale(config, progress=progress)
    finally:
        progress.clear()
    print(format_result(result))
    if args.json is not None:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _run_report(args):
    from .bench._report import BENCH_EXTRA_HINT, write_report

    try:
        md_path, png_path = write_report(args.file, args.out_dir)
    except ModuleNotFoundError as error:
        if error.name != "matplotlib":
            raise
        raise RuntimeError(f"report needs matplotlib, which is not installed: {BENCH_EXTRA_HINT}") from None
    print(f"wrote {md_path}\nwrote {png_path}")
    return 0


#: Failures shortened to one line; anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (OSError, ValueError, TypeError, RuntimeError, MemoryError)


def _one_line(error):
    if isinstance(error, MemoryError):
        return f"out of memory{': ' + str(error) if str(error) else ''}"
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    return printable(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}")


def _silence_stdout():
    """After a broken pipe: send stdout to /dev/null, so the flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests)
        pass


def main(argv=None) -> int:
    """Run the command line; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).  No command runs the AlexNet
        table (``bench`` with its defaults).

    Returns
    -------
    int
        0 on success, 1 after an error (one line on stderr), 130 after an
        interrupt, 141 when stdout was closed early.  Usage errors raise
        SystemExit(2) from the argument parser, also after one line.
    """
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        finally:
            sys.stdout.flush()  # after --help or --version, a closed pipe shows here
        if args.command is None:
            args = parser.parse_args(["bench"])
        try:
            status = args.run(args)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return status
        except BrokenPipeError:
            raise
        except EXPECTED_ERRORS as error:
            if debug():
                raise
            print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
            return 1
    except BrokenPipeError:  # the reader went away (lowmem-numba plan | head -1): nothing to say
        if debug():
            raise
        _silence_stdout()
        return 141
    except KeyboardInterrupt:
        if debug():
            raise
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
