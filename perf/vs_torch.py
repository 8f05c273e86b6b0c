"""The whole-network scoreboard: every layer of the five tables against torch.

Two tables:

* ``auto``: functional :func:`lowmem_numba.conv2d` calls with
  ``algorithm="auto"`` (weights packed per call, output allocated per call),
  against ``torch.nn.functional.conv2d`` (which also allocates its output);
* ``layer`` (on request): :class:`lowmem_numba.Conv2d` layers, ``"auto"``,
  no memory limit;
* ``layer-1MiB``: :class:`lowmem_numba.Conv2d` layers built with
  ``memory_limit=1 MiB`` (weights prepacked once), beside torch's transient
  memory on the same layer (measured by the OS in a fresh process per layer,
  batch 1; ``--no-torch-memory`` skips it).

Each engine runs in its own fresh worker process (ours as this script's
``--worker``, torch through :func:`lowmem_numba.bench.torch_worker`), and the
two time each layer in lockstep: torch, ours, torch, ours (``--rounds``
turns each, 3), before the next layer; each layer keeps its best call.  On
the shared machines the speed drifts by a quarter over seconds (one layer
timed every half second in one process: 1.25 ms, then 1.45-1.55 for several
seconds, then 1.25 again); timed a minute apart, as whole runs of one engine
then the other, a layer's ratio moved 1.3-1.6x between runs.  Ratios are
torch's time over ours (> 1: we are faster); a network's ratio is that of
its summed times; the geometric means are over networks and over layers.

Writes ``perf/results/vs_torch.md``, ``vs_torch.json`` (every time) and
``vs_torch.png``.

Usage::

    python perf/vs_torch.py                       # everything (about 15 minutes on 2 cores)
    python perf/vs_torch.py --networks vgg16 --batches 1 --threads 1 --modes auto
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
NETWORKS = ("alexnet", "vgg16", "googlenet", "resnet50", "mobilenet")
MODES = ("auto", "layer-1MiB")
ONE_MIB = 2**20


# ------------------------------------------------------------------ our side (worker process)

class OurSide:
    """Our side of the jobs of one mode and thread count (the ``--worker``
    process): each job's layer or call is built once, then timed whenever
    the job comes back."""

    def __init__(self, mode: str, threads: int):
        import lowmem_numba

        self.ln, self.mode, self.threads = lowmem_numba, mode, threads
        self.prepared = {}

    def prepare(self, job):
        ln, mode, threads = self.ln, self.mode, self.threads
        rng = np.random.default_rng(0)
        x = rng.random(job["x_shape"], dtype=np.float32)
        w = rng.random(job["w_shape"], dtype=np.float32)
        args = job["args"]
        if mode == "auto":
            def call():
                return ln.conv2d(x, w, algorithm="auto", threads=threads, **args)
            chosen = ln.plan(x.shape, w.shape, threads=threads, **args)
        elif mode in ("layer-1MiB", "layer"):
            limit = ONE_MIB if mode == "layer-1MiB" else None
            layer = ln.Conv2d(w, threads=threads, memory_limit=limit, input_shape=x.shape, **args)
            call = lambda: layer(x)  # noqa: E731
            chosen = layer.plan_for(x.shape)
        else:  # "named:<algorithm>": a layer running that algorithm
            name = mode.split(":", 1)[1]
            layer = ln.Conv2d(w, threads=threads, algorithm=name, **args)
            call = lambda: layer(x)  # noqa: E731
            chosen = None
        picked = f"{chosen.algorithm} t{chosen.threads}" if chosen is not None else mode.split(":", 1)[1]
        return call, picked, (chosen.workspace_bytes if chosen is not None else None)

    def time(self, job) -> dict:
        from lowmem_numba.bench import measure

        if job["label"] not in self.prepared:
            self.prepared[job["label"]] = self.prepare(job)
        call, picked, workspace = self.prepared[job["label"]]
        seconds = measure(call, repeats=job["repeats"], warmup=job["warmup"], min_seconds=job["min_seconds"]).best
        return dict(label=job["label"], seconds=seconds, algorithm=picked, workspace=workspace)


def serve(mode: str, threads: int):
    """The ``--worker`` loop: one JSON job per line in, one answer per line out."""
    import lowmem_numba

    ours = OurSide(mode, threads)
    print(json.dumps({"version": lowmem_numba.__version__}), flush=True)
    for line in sys.stdin:
        print(json.dumps(ours.time(json.loads(line))), flush=True)


# ------------------------------------------------------------------ orchestration

def unique_jobs(layers, batch, repeats, min_seconds):
    """One job per distinct shape, and each layer's job label."""
    jobs, label_of = {}, {}
    for layer in layers:
        key = (layer.x_shape(batch), layer.w_shape, layer.stride, layer.padding, layer.groups)
        if key not in jobs:
            jobs[key] = dict(label=layer.label, x_shape=layer.x_shape(batch), w_shape=layer.w_shape,
                             args=dict(stride=layer.stride, padding=layer.padding, groups=layer.groups),
                             warmup=1, repeats=repeats, min_seconds=min_seconds)
        label_of[layer.label] = jobs[key]["label"]
    return list(jobs.values()), label_of


def side_by_side(jobs, threads, mode, rounds=3):
    """Best seconds per job label for torch and for us, in lockstep: each
    engine in its own worker process, every job timed ``rounds`` times by
    each, in turn (torch, ours, torch, ours), before the next; plus each
    turn's best (``turns``: the spread of a layer's ratio over the turns
    shows how far the machine's noise reaches), torch's version and our
    algorithm picks."""
    from lowmem_numba.bench import TimingWorker, torch_available, torch_worker

    turns, version, picks, spaces = {"torch": {}, "ours": {}}, None, {}, {}
    with contextlib.ExitStack() as workers:
        torch = workers.enter_context(torch_worker(threads, timeout=3600)) if torch_available() else None
        us = workers.enter_context(TimingWorker([sys.executable, __file__, "--worker", mode, str(threads)],
                                                timeout=3600))
        version = torch.version if torch is not None else None
        for job in jobs:
            label = job["label"]
            for _ in range(rounds):
                if torch is not None:
                    turns["torch"].setdefault(label, []).append(min(torch.ask(job)["times"]))
                answer = us.ask(job)
                turns["ours"].setdefault(label, []).append(answer["seconds"])
            picks[label] = answer["algorithm"]
            if answer["workspace"] is not None:
                spaces[label] = answer["workspace"]
    best = {side: {label: min(times) for label, times in by_label.items()} for side, by_label in turns.items()}
    return dict(torch=best["torch"], ours=best["ours"], turns=turns, version=version, algorithm=picks,
                workspace=spaces)


def torch_memory(layers):
    """torch's transient bytes per distinct layer shape at batch 1 (OS-measured)."""
    from lowmem_numba.bench import peak_added_bytes

    memory = {}
    for layer in layers:
        key = layer.label
        measurement = peak_added_bytes("torch", layer.x_shape(1), layer.w_shape, stride=layer.stride,
                                       padding=layer.padding, groups=layer.groups, threads=1)
        memory[key] = measurement.peak_added_bytes
    return memory


def geomean(values):
    values = [v for v in values if v > 0 and np.isfinite(v)]
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def summarize(results, networks, layers_of):
    """Per (mode, config): per-network ratios of summed times, per-layer ratios."""
    summary = {}
    for key, run in results.items():
        mode, batch, threads = key.split("|")
        label_of = run["label_of"]
        per_network, per_layer, spread = {}, {}, {}
        turns = run["turns"]
        for net in networks:
            ours_sum = theirs_sum = 0.0
            for layer in layers_of[net]:
                job = label_of[layer.label]
                if job not in run["torch"]:
                    continue
                ours_sum += run["ours"][job]
                theirs_sum += run["torch"][job]
                per_layer[layer.label] = run["torch"][job] / run["ours"][job]
                pairs = list(zip(turns.get("torch", {}).get(job, ()), turns.get("ours", {}).get(job, ())))
                if pairs:
                    spread[layer.label] = (min(t / o for t, o in pairs), max(t / o for t, o in pairs))
            if ours_sum:
                per_network[net] = dict(ours=ours_sum, torch=theirs_sum, ratio=theirs_sum / ours_sum)
        summary[key] = dict(networks=per_network, layers=per_layer, spread=spread)
    return summary


def write_report(results, summary, networks, layers_of, path, command, memory, rounds):
    from lowmem_numba.bench import format_bytes

    version = next((r["version"] for r in results.values() if r["version"]), None)
    lines = ["# lowmem-numba against torch, layer by layer and network by network", "",
             f"`{command}` on {platform.processor() or platform.machine()}, torch {version}. "
             "Ratio = torch's time / ours (> 1: we are faster); a network's ratio is that of its summed "
             f"times. Each engine in its own process, the two timing each layer in turn ({rounds} turns each, "
             "torch, ours, torch, ours), best call kept: the shared machine's speed drifts over seconds, "
             "and both see the same drift. A layer under 0.9 in every turn is under it whatever the drift; "
             "the JSON file has each turn's times.", ""]
    keys = list(results)
    for mode in dict.fromkeys(k.split("|")[0] for k in keys):
        mode_keys = [k for k in keys if k.startswith(mode + "|")]
        title = {"auto": "functional `conv2d(algorithm=\"auto\")`",
                 "layer-1MiB": "`Conv2d` layers under `memory_limit=1 MiB` (weights prepacked)",
                 "layer": "`Conv2d(algorithm=\"auto\")` layers (weights prepacked)"}.get(mode, mode)
        lines += [f"## {title}", "", "| network | " + " | ".join(
            f"b{k.split('|')[1]} t{k.split('|')[2]}" for k in mode_keys) + " |",
            "|---|" + "---|" * len(mode_keys)]
        for net in networks:
            cells = []
            for k in mode_keys:
                entry = summary[k]["networks"].get(net)
                cells.append(f"{entry['ratio']:.2f}" if entry else "-")
            lines.append(f"| {net} | " + " | ".join(cells) + " |")
        lines.append("| **geometric mean over networks** | " + " | ".join(
            f"**{geomean([e['ratio'] for e in summary[k]['networks'].values()]):.2f}**" for k in mode_keys) + " |")
        lines.append("| geometric mean over layers | " + " | ".join(
            f"{geomean(summary[k]['layers'].values()):.2f}" for k in mode_keys) + " |")
        lines.append("| layers under 0.9 (under 0.9 in every turn) | " + " | ".join(
            f"{sum(r < 0.9 for r in summary[k]['layers'].values())} "
            f"({sum(hi < 0.9 for _, hi in summary[k]['spread'].values())})" for k in mode_keys) + " |")
        lines.append("| worst layer | " + " | ".join(
            (lambda items: f"{items[0][0]} {items[0][1]:.2f}" if items else "-")(
                sorted(summary[k]["layers"].items(), key=lambda kv: kv[1])) for k in mode_keys) + " |")
        lines.append("")
        lines += ["<details><summary>every layer</summary>", "",
                  "| layer | C→M, HxW, k/s/g | " + " | ".join(
                      f"b{k.split('|')[1]} t{k.split('|')[2]}" for k in mode_keys) + " | pick (last column) |"
                  + (" workspace | torch transient |" if mode == "layer-1MiB" else ""),
                  "|---|---|" + "---|" * len(mode_keys) + "---|" + ("---|---|" if mode == "layer-1MiB" else "")]
        for net in networks:
            for layer in layers_of[net]:
                cells = [f"{summary[k]['layers'].get(layer.label, float('nan')):.2f}" for k in mode_keys]
                last = results[mode_keys[-1]]
                job = last["label_of"][layer.label]
                row = (f"| {layer.label} | {layer.in_channels}→{layer.out_channels}, {layer.height}x{layer.width}, "
                       f"{layer.kernel_h}/{layer.stride}/{layer.groups} | " + " | ".join(cells)
                       + f" | {last['algorithm'].get(job, '-')} |")
                if mode == "layer-1MiB":
                    space = last["workspace"].get(job)
                    row += (f" {format_bytes(space) if space is not None else '-'} | "
                            f"{format_bytes(memory[layer.label]) if layer.label in memory else '-'} |")
                lines.append(row)
        lines += ["", "</details>", ""]
    path.write_text("\n".join(lines) + "\n")


def plot(summary, networks, layers_of, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in summary if k.startswith("auto|")] or list(summary)
    fig, axes = plt.subplots(len(networks), 1, figsize=(12, 2.6 * len(networks)), squeeze=False)
    for ax, net in zip(axes[:, 0], networks):
        labels = [layer.label for layer in layers_of[net]]
        for k in keys:
            ax.plot(range(len(labels)), [summary[k]["layers"].get(l, np.nan) for l in labels], "o-", ms=3,
                    label=f"b{k.split('|')[1]} t{k.split('|')[2]}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("torch / ours")
        ax.set_title(net, fontsize=9)
        ax.set_xticks([])
    axes[0, 0].legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "THREADS"), help=argparse.SUPPRESS)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=3,
                        help="turns per engine on each layer, interleaved; each layer keeps its best call")
    parser.add_argument("--torch-memory", action=argparse.BooleanOptionalAction, default=True,
                        help="measure torch's transient memory per layer for the 1 MiB table (a process per "
                             "layer, a few minutes)")
    parser.add_argument("--output", type=Path, default=RESULTS / "vs_torch.md")
    args = parser.parse_args(argv)
    if args.worker:
        serve(args.worker[0], int(args.worker[1]))
        return

    import lowmem_numba as ln
    import lowmem_numba.bench  # noqa: F401

    layers_of = {net: list(ln.bench.layers(net)) for net in args.networks}
    every = [layer for net in args.networks for layer in layers_of[net]]
    results = {}
    for mode in args.modes:
        for batch in args.batches:
            for threads in args.threads:
                jobs, label_of = unique_jobs(every, batch, args.repeats, args.min_seconds)
                run = side_by_side(jobs, threads, mode, rounds=args.rounds)
                run["label_of"] = label_of
                key = f"{mode}|{batch}|{threads}"
                results[key] = run
                done = summarize({key: run}, args.networks, layers_of)[key]["networks"]
                print(f"{mode} b{batch} t{threads}: " + ", ".join(
                    f"{net} {r['ratio']:.2f}" for net, r in done.items()), flush=True)
    memory = {}
    if args.torch_memory and "layer-1MiB" in args.modes:
        memory = torch_memory(every)
    summary = summarize(results, args.networks, layers_of)
    command = "python perf/vs_torch.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(
        sys.argv[1:] if argv is None else argv))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_report(results, summary, args.networks, layers_of, args.output, command, memory, args.rounds)
    args.output.with_suffix(".json").write_text(json.dumps(
        {"command": command, "results": results, "torch_memory": memory}, indent=1))
    plot(summary, args.networks, layers_of, args.output.with_suffix(".png"))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
