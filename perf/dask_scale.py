"""Scale-out on Dask: images/s and per-worker peak memory for workers x threads splits of this machine.

Runs ``lowmem-numba scale`` (a network's convolution stack, ReLU and max-pools
between, over a synthetic image set) once per configuration, each in a fresh
process:

- one process, no Dask, all threads per call (``--workers 0``);
- a LocalCluster for every split of the cores into workers x threads per
  worker (on 2 cores: 1 x 2 and 2 x 1), plus 1 x 1 (one task at a time, all
  cores in its kernels); each task's kernel threads follow
  ``lowmem_numba.dask``'s rule, cores // (workers x threads per worker);
- torch (``torch.nn.functional.conv2d``, its own thread pool on all cores) on
  the same stack, weights and images, chunk by chunk, in its own process.

Peak memory is the operating system's: each process's peak resident size
(``VmHWM``) is reset after a warm-up chunk and read after the run; "added" is
that peak minus the resident size at the reset.  Writes
``perf/results/dask_scale.md`` (and ``dask_scale.json``).

Usage::

    python perf/dask_scale.py                                   # vgg16, 64 images, chunks of 4
    python perf/dask_scale.py --images 8 --image-size 64        # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from pathlib import Path

from lowmem_numba._units import format_bytes

RESULTS = Path(__file__).resolve().parent / "results"

TORCH = """
import json, sys, time
import numpy as np
import torch
from lowmem_numba.bench import _scale as scale

settings = json.loads(sys.argv[1])
torch.set_num_threads(settings["threads"])
segments, shape = scale.conv_stack(settings["network"], settings["image_size"])
weights = [[(torch.from_numpy(w), torch.from_numpy(b)) for w, b in row]
           for row in scale.layer_weights(segments, settings["seed"])]

def run(x):
    y = torch.from_numpy(x)
    with torch.no_grad():
        for row, (layers, pool) in zip(weights, segments):
            for layer, (w, b) in zip(layers, row):
                y = torch.relu_(torch.nn.functional.conv2d(y, w, b, **layer.conv_args))
            if pool is not None:
                y = torch.nn.functional.max_pool2d(y, pool[0], pool[1])
    return float(y.double().sum())

chunks = scale._chunks(settings["images"], settings["chunk"])
run(scale.images_chunk(0, chunks[0], shape, settings["seed"] + 1))
before = scale._reset_peak()
start = time.perf_counter()
total, offset = 0.0, 0
for count in chunks:
    total += run(scale.images_chunk(offset, count, shape, settings["seed"]))
    offset += count
seconds = time.perf_counter() - start
peak, _ = scale._read_peak()
print(json.dumps({"seconds": seconds, "checksum": total, "peak": peak, "before": before,
                  "torch": torch.__version__}))
"""


def run_scale(args, extra):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        command = [sys.executable, "-m", "lowmem_numba", "scale", "--network", args.network, "--images",
                   str(args.images), "--chunk", str(args.chunk), "--seed", str(args.seed), "--json", path, *extra]
        if args.image_size:
            command += ["--image-size", str(args.image_size)]
        print("$", " ".join(command[2:]), flush=True)
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        if done.returncode:
            raise SystemExit(f"failed: {done.stderr.strip()[-2000:]}")
        return json.loads(Path(path).read_text())


def run_torch(args, cores):
    settings = {"network": args.network, "images": args.images, "chunk": args.chunk, "seed": args.seed,
                "image_size": args.image_size, "threads": cores}
    print("$ torch", json.dumps(settings), flush=True)
    done = subprocess.run([sys.executable, "-c", TORCH, json.dumps(settings)], capture_output=True, text=True,
                          timeout=3600)
    if done.returncode:
        print(f"torch failed or is not installed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def splits(cores):
    """(workers, threads per worker) for every split of the cores, and 1 x 1."""
    found = [(1, 1)] + [(w, cores // w) for w in range(1, cores + 1) if cores % w == 0]
    return list(dict.fromkeys(found))


def _mib(value):
    return "-" if value is None else format_bytes(value)


def _algorithms(worker):
    counts = Counter(p["algorithm"] for p in worker["plans"])
    return ", ".join(f"{name} x{count}" for name, count in counts.most_common())


def _note(rows, cores, torch_result, args):
    by_name = dict(rows)
    rate = {name: result["images_per_second"] for name, result in rows}
    total = {name: sum(w["peak_rss_bytes"] or 0 for w in result["workers"]) for name, result in rows}
    one = "Dask: 1 worker(s) x 1 thread(s)"
    threads = f"Dask: 1 worker(s) x {cores} thread(s)"
    procs = f"Dask: {cores} worker(s) x 1 thread(s)"
    local = "one process, no Dask"
    measured = ""
    if cores > 1 and all(name in by_name for name in (one, threads, procs)):
        measured = (f"Measured above: one task per core, each on one kernel thread, runs {rate[threads]:.2f} images/s "
                    f"as {cores} threads of one worker and {rate[procs]:.2f} as {cores} worker processes, against "
                    f"{rate[one]:.2f} for one task at a time on all {cores} cores (1 x 1) and {rate[local]:.2f} for "
                    f"the same stack in one process without Dask; the threads of one worker peak at "
                    f"{format_bytes(total[threads])} in all, the worker processes at {format_bytes(total[procs])}.")
    if torch_result is not None:
        torch_rate = args.images / torch_result["seconds"]
        measured += f" torch (oneDNN, all cores in each call, one process) runs {torch_rate:.2f} images/s."
    return textwrap.dedent(f"""\
        {measured}

        - **Speed: parallel tasks against parallel kernels.**  A task on all cores
          splits every layer call across threads: each call synchronises them, and the
          late layers (small planes) give each thread little work.  One task per core
          runs every call on one thread and keeps each core busy with its own images,
          which wins when the image set has a few chunks per core and the layers are
          large enough that the per-task costs (below) do not dominate.  The kernels
          release the GIL, so a worker's threads run tasks in parallel as well as
          separate processes do.
        - **Memory: threads, not processes.**  Every worker process carries its own
          interpreter, numpy, Numba's loaded kernels and dask (about 210 MiB on the
          2-core development machine, measured after one small convolution) and its
          own copy of the weights, raw and packed (`Conv2d.persistent_bytes`), plus
          the graph's copy while a computation runs.
          Threads of one worker share all of that; each running task adds only its
          arena (at most lowmem's `memory_limit`) and its chunk's activations.  One
          task at a time on all cores (1 x 1) holds the least memory, at the speed of
          parallel kernels.
        - **Chunk size** amortises the per-task costs (scheduling, generating or
          loading images, the Python between layers) and costs activation memory per
          image in flight.
        - **Several workers per machine** are for isolation (a crash, a memory
          limit per process) or NUMA domains; on more machines the same rule holds per
          machine, and the weights travel once to each worker per computation.
        """)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="vgg16")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "dask_scale.md")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1

    rows = []
    local = run_scale(args, ["--workers", "0"])
    rows.append(("one process, no Dask", local))
    for workers, threads in splits(cores):
        rows.append((f"Dask: {workers} worker(s) x {threads} thread(s)",
                     run_scale(args, ["--workers", str(workers), "--threads-per-worker", str(threads)])))
    torch_result = run_torch(args, cores)

    first = local
    shape = "x".join(map(str, first["input_shape"]))
    lines = [f"# Scale-out on Dask: {args.network}, {args.images} images of {shape}, chunks of {args.chunk}", "",
             f"`python perf/dask_scale.py{' ' + ' '.join(argv) if argv else ''}` on {first['machine']['cpu']} "
             f"({cores} cores, Numba threads {first['machine']['numba_threads']}), Python "
             f"{platform.python_version()}, lowmem-numba {first['version']}.  Stack: {len(first['layers'])} conv "
             f"layers with ReLU, max-pools {first['pools'] or 'none'}; algorithm auto (planned per layer and "
             f"chunk shape at each task's thread count).  Each row is a fresh process (and cluster); the timed "
             f"run follows a warm-up chunk on every worker.  Peak = the process's peak resident size during "
             f"the timed run (OS, VmHWM); added = peak minus its resident size at the start of the run.", "",
             "| configuration | kernel threads per task | images/s | vs one process | peak per worker | "
             "added per worker | peak, all workers | images per worker | checksum |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = local["images_per_second"]
    for name, result in rows:
        workers = result["workers"]
        threads = sorted({t for w in workers for t in w["task_threads"]})
        peaks = [w["peak_rss_bytes"] for w in workers]
        total = None if None in peaks else sum(peaks)
        lines.append(f"| {name} | {', '.join(map(str, threads))} | {result['images_per_second']:.2f} | "
                     f"{result['images_per_second'] / base:.2f}x | {' / '.join(_mib(p) for p in peaks)} | "
                     f"{' / '.join(_mib(w['peak_added_bytes']) for w in workers)} | {_mib(total)} | "
                     f"{' / '.join(str(w['images']) for w in workers)} | {result['checksum']:.6g} |")
    if torch_result is not None:
        rate = args.images / torch_result["seconds"]
        added = (None if torch_result["peak"] is None or torch_result["before"] is None
                 else max(0, torch_result["peak"] - torch_result["before"]))
        lines.append(f"| torch {torch_result['torch']} (oneDNN), one process | {cores} | {rate:.2f} | "
                     f"{rate / base:.2f}x | {_mib(torch_result['peak'])} | {_mib(added)} | "
                     f"{_mib(torch_result['peak'])} | {args.images} | {torch_result['checksum']:.6g} |")
    best_name, best = max(rows, key=lambda row: row[1]["images_per_second"])
    lines += ["", f"Fastest here: {best_name}, {best['images_per_second']:.2f} images/s.", "",
              "Plans (algorithms chosen over the stack, first worker of each configuration):", ""]
    for name, result in rows:
        worker = next((w for w in result["workers"] if w["plans"]), result["workers"][0])
        arenas = " + ".join(format_bytes(a) for a in worker["arena_bytes"])
        lines.append(f"- {name}: {_algorithms(worker)}; arena(s) {arenas}")
    lines += ["", "## What decides the best split", "", _note(rows, cores, torch_result, args), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "torch": torch_result}, indent=1))
    print("\n".join(lines[:len(rows) + 8 + (torch_result is not None)]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
