"""Tables and plots of a benchmark result (the dict of :func:`lowmem_numba.bench._suite.run_bench`).

The terminal table puts thread counts side by side; the markdown report has one
table per layer and a PNG of time against workspace (``lowmem-numba report``).
"""

from __future__ import annotations

import json
import math
import os

from .. import _registry as registry
from ._suite import SCHEMA, check_writable, replacing
from .._units import format_bytes

#: What a report needs beyond the library's own dependencies.
BENCH_EXTRA_HINT = "pip install 'lowmem-numba[bench]'"


def _by_key(result, label):
    return {(r["algorithm"], r["threads"]): r for r in result["results"] if r["layer"] == label}


def _rows(result, label):
    """Row names in order: algorithms as configured, then baselines."""
    names = []
    for r in result["results"]:
        if r["layer"] == label and r["algorithm"] not in names:
            names.append(r["algorithm"])
    return names


def _plans(result, label):
    return {p["thread_budget"]: p for p in result["plans"] if p["layer"] == label}


def _is_pick(plans, record):
    p = plans.get(record["threads"])
    return p is not None and (p["algorithm"], p["threads"]) == (record["algorithm"], record["threads"])


def _cells(record, reference, with_memory):
    """ms, GFLOP/s, speed vs reference, workspace[, peak added] of one record."""
    space = "" if record["workspace_bytes"] is None else format_bytes(record["workspace_bytes"])
    if record["seconds"] is None:
        mark = "unsupported" if record["skipped"].startswith("unsupported") else "skipped"
        cells = [mark, "", "", space if mark == "skipped" else ""]
    else:
        relative = ""
        if reference is not None and reference["seconds"] is not None:
            relative = f"{reference['seconds'] / record['seconds']:.2f}x"
        cells = [f"{record['seconds'] * 1e3:.2f}", f"{record['gflops']:.1f}", relative, space]
    if with_memory:
        peak = record.get("transient_bytes")
        cells.append("" if peak is None else format_bytes(peak))
    return cells


def _layer_heading(layer):
    return (f"{layer['label']}: x {tuple(layer['x_shape'])}, w {tuple(layer['w_shape'])}, "
            f"stride {layer['stride']}, padding {layer['padding']}, groups {layer['groups']}, "
            f"{layer['flops'] / 1e9:.3f} GFLOP")


def _pick_lines(result, label):
    """The scheduler's pick at each thread budget, predicted and as measured."""
    by_key, lines = _by_key(result, label), []
    for budget, p in sorted(_plans(result, label).items()):
        measured = by_key.get((p["algorithm"], p["threads"]))
        seen = ""
        if measured is not None and measured["seconds"] is not None:
            seen = f", measured {measured['seconds'] * 1e3:.2f} ms"
        lines.append(f"<= {budget} thread(s): {p['algorithm']} on {p['threads']} thread(s), "
                     f"predicted {p['predicted_seconds'] * 1e3:.2f} ms{seen}")
    return lines


def _with_memory(result):
    return bool(result["settings"].get("memory"))


def layer_table(result, label) -> str:
    """The terminal table of one layer: a column group per thread count."""
    layer = next(entry for entry in result["layers"] if entry["label"] == label)
    threads = result["settings"]["threads"]
    reference_name = result["settings"]["reference"]
    with_memory = _with_memory(result)
    by_key, plans = _by_key(result, label), _plans(result, label)
    headers = ["ms", "GFLOP/s", "vs ref", "workspace"] + (["peak"] if with_memory else [])
    widths = [9, 8, 8, 10] + ([10] if with_memory else [])
    group_width = sum(widths) + len(widths) - 1
    kinds = {name: record["kind"] for (name, _), record in by_key.items()}
    shown = {name: name + (" (baseline)" if kinds[name] == "baseline" else "") for name in _rows(result, label)}
    name_width = max(len(text) for text in list(shown.values()) + ["algorithm"]) + 2
    lines = [_layer_heading(layer),
             " " * name_width + " | ".join(f"{t} thread{'s' if t > 1 else ''}".center(group_width)
                                           for t in threads),
             "algorithm".ljust(name_width) + " | ".join(
                 " ".join(h.rjust(w) for h, w in zip(headers, widths)) for _ in threads)]
    for name in _rows(result, label):
        groups = []
        for t in threads:
            record = by_key.get((name, t))
            if record is None:
                groups.append(" " * group_width)
                continue
            cells = _cells(record, by_key.get((reference_name, t)), with_memory)
            if record["seconds"] is None:  # the reason spans the time columns
                cells[:3] = [cells[0].rjust(sum(widths[:3]) + 2)]
                groups.append(" ".join(c.rjust(w) for c, w in zip(cells, [0] + widths[3:])))
                continue
            if _is_pick(plans, record):
                cells[2] += "*"
            groups.append(" ".join(c.rjust(w) for c, w in zip(cells, widths)))
        lines.append(shown[name].ljust(name_width) + " | ".join(groups))
    picks = _pick_lines(result, label)
    lead = "scheduler pick (*, cost model): "
    lines += [(lead if i == 0 else " " * len(lead)) + pick for i, pick in enumerate(picks)]
    return "\n".join(lines)


def legend(result) -> str:
    """What the table's columns mean."""
    settings = result["settings"]
    text = (f"ms: best of {settings['timed_repeats']} or more calls (at least "
            f"{settings['min_timed_seconds'] * 1e3:g} ms of them); vs ref: speed relative to {settings['reference']} "
            f"(> 1 is faster); workspace: declared temporary memory; skipped: predicted slower than "
            f"--max-seconds {settings['max_seconds']:g} s")
    if settings.get("memory"):
        text += "; peak: OS-measured peak memory added by one call, beyond its output"
    return text


def markdown(result, png_name=None) -> str:
    """A markdown report of a benchmark result: one table per layer."""
    settings, machine = result["settings"], result["machine"]
    with_memory = _with_memory(result)
    packages = ", ".join(f"{name} {version}" for name, version in machine.get("packages", {}).items() if version)
    lines = [f"# lowmem-numba {result['version']}: {settings['network']}", "",
             f"- machine: {machine.get('cpu')}, {machine.get('cores')} cores, Numba threads "
             f"{machine.get('numba_threads')} ({machine.get('threading_layer')} layer), {machine.get('platform')}",
             f"- Python {machine.get('python')}; {packages}",
             f"- created {result['created']}; layout {settings['layout']}; threads "
             f"{', '.join(map(str, settings['threads']))}; {legend(result)}"]
    if machine.get("environment"):
        lines.append("- environment: " + ", ".join(f"{k}={v}" for k, v in machine["environment"].items()))
    lines += [f"- note: {note}" for note in result["notes"]]
    if png_name:
        lines += ["", f"![time against workspace per layer]({png_name})"]
    columns = ["algorithm", "threads", "ms", "GFLOP/s", f"vs {settings['reference']}", "workspace"]
    columns += ["peak added"] if with_memory else []
    columns += ["note"]
    for layer in result["layers"]:
        label = layer["label"]
        by_key, plans = _by_key(result, label), _plans(result, label)
        lines += ["", f"## {label}", "", _layer_heading(layer) + ".", "",
                  "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for name in _rows(result, label):
            for t in settings["threads"]:
                record = by_key.get((name, t))
                if record is None:
                    continue
                cells = _cells(record, by_key.get((settings["reference"], t)), with_memory)
                note = record["skipped"]
                if record["kind"] == "baseline" and not note:
                    note = "baseline"
                if _is_pick(plans, record):
                    note = "scheduler pick"
                row = [name, str(t)] + [c if c not in ("unsupported", "skipped") else "-" for c in cells] + [note]
                lines.append("| " + " | ".join(row) + " |")
        lines += [""] + [f"- scheduler pick (cost model), {pick}" for pick in _pick_lines(result, label)]
    return "\n".join(lines) + "\n"


def _family(record):
    """Marker group of a record: the algorithm's family, or the baseline's name."""
    if record["kind"] == "baseline":
        return record["algorithm"]
    try:
        return registry.get(record["algorithm"]).family
    except ValueError:  # a result file from a version that had this algorithm
        return record["algorithm"]


def _pareto(points):
    """Points no other point beats on both time and workspace."""
    front, best = [], math.inf
    for space, seconds, name in sorted(points, key=lambda p: (p[0], p[1])):
        if seconds < best:
            front.append((space, seconds, name))
            best = seconds
    return front


def _byte_ticks(low, high):
    """At most about seven powers of two between ``low`` and ``high``."""
    first, last = math.ceil(math.log2(low)), math.floor(math.log2(high))
    step = max(1, math.ceil((last - first + 1) / 7))
    return [2.0 ** e for e in range(first, last + 1, step)]


def plot(result, path) -> None:
    """Write a PNG of time against workspace, one panel per layer.

    Both axes are logarithmic; zero-workspace algorithms sit in a "0 B" slot
    left of a dotted line.  Each thread count has a colour and each family a
    marker; the points no other point beats on both time and memory are named.
    torch without ``--memory`` has no workspace figure: a dashed line at its time.

    Parameters
    ----------
    result : dict
        A benchmark result.
    path : str or binary file
        Where to write the PNG.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    layers = result["layers"]
    threads = result["settings"]["threads"]
    columns = min(3, len(layers))
    rows = -(-len(layers) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(max(8.0, 5.4 * columns), 4.3 * rows + 0.6),
                                squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^v<>ph*XP"
    families = sorted({_family(r) for r in result["results"]})
    marker_of = {family: markers[i % len(markers)] for i, family in enumerate(families)}
    drawn = {}
    for axis, layer in zip(axes.flat, layers):
        records = [r for r in result["results"] if r["layer"] == layer["label"] and r["seconds"] is not None]
        space_of = {id(r): r["transient_bytes"] if r["workspace_bytes"] is None else r["workspace_bytes"]
                    for r in records}
        nonzero = [space for space in space_of.values() if space] or [1024]
        zero_slot = min(nonzero) / 8  # where "0 B" is drawn on the log axis
        for i, t in enumerate(threads):
            colour = colours[i % len(colours)]
            points = []
            for r in (r for r in records if r["threads"] == t):
                ms = r["seconds"] * 1e3
                if space_of[id(r)] is None:
                    axis.axhline(ms, color=colour, linestyle="--", linewidth=0.8)
                    axis.annotate(f"{r['algorithm']}, {t} thread(s)", (zero_slot / 1.8, ms), fontsize=6,
                                  color=colour, xytext=(0, 2), textcoords="offset points")
                    continue
                family = _family(r)
                space = space_of[id(r)] or zero_slot
                drawn.setdefault(("family", family),
                                 axis.scatter(space, ms, color=colour, marker=marker_of[family], s=22))
                points.append((space, r["seconds"], r["algorithm"]))
            drawn.setdefault(("threads", t), plt.Line2D([], [], color=colour, linewidth=4))
            for j, (space, seconds, name) in enumerate(_pareto(points)):
                axis.annotate(name, (space, seconds * 1e3), fontsize=6, color=colour,
                              xytext=(4, 3 if j % 2 == 0 else -9), textcoords="offset points")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlim(zero_slot / 2, max(nonzero) * 2.5)
        axis.axvline(zero_slot * 1.6, color="grey", linestyle=":", linewidth=0.8)
        ticks = [zero_slot] + _byte_ticks(zero_slot * 2, max(nonzero) * 2.5)
        axis.xaxis.set_major_locator(FixedLocator(ticks))
        axis.xaxis.set_minor_locator(NullLocator())
        axis.xaxis.set_major_formatter(FuncFormatter(
            lambda value, _, zero=zero_slot: "0 B" if value == zero else format_bytes(int(value))))
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        axis.yaxis.set_major_formatter(plain)
        low, high = axis.get_ylim()
        axis.yaxis.set_minor_formatter(plain if high / low < 30 else NullFormatter())
        axis.set_title(layer["label"], fontsize=9)
        axis.set_xlabel("workspace (bytes, log scale)", fontsize=8)
        axis.set_ylabel("time per call (ms, log scale)", fontsize=8)
        axis.tick_params(which="both", labelsize=7)
        axis.grid(True, which="major", linewidth=0.3)
    for axis in list(axes.flat)[len(layers):]:
        axis.set_visible(False)
    keys = sorted(drawn, key=lambda k: (k[0] != "threads", str(k[1])))
    labels = [f"{k[1]} thread(s)" if k[0] == "threads" else k[1] for k in keys]
    figure.legend([drawn[k] for k in keys], labels, loc="lower center", ncol=min(8, len(keys)), fontsize=7,
                  frameon=False)
    figure.suptitle(f"lowmem-numba {result['version']}: {result['settings']['network']}, time per call "
                    f"against workspace\n(named: the fastest for its memory; dashed: torch, workspace unknown)",
                    fontsize=10)
    figure.tight_layout(rect=(0, 0.05, 1, 0.97))
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)


# Validation of a loaded result: each check takes the value and where it is (``results[3].seconds``) and
# raises ValueError naming that place.  Every field the report reads is checked, so a damaged file is one
# clear error and never a crash half-way through the report.  Keys a later version adds are ignored.

def _describe(value):
    text = json.dumps(value, allow_nan=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _bad(where, expected, value):
    return ValueError(f"{where}: expected {expected}; got {_describe(value)}")


def _text(value, where):
    if not isinstance(value, str):
        raise _bad(where, "a string", value)


def _choice(*options):
    def check(value, where):
        if value not in options or not isinstance(value, str):
            raise _bad(where, " or ".join(map(repr, options)), value)
    return check


def _flag(value, where):
    if not isinstance(value, bool):
        raise _bad(where, "true or false", value)


def _whole(minimum):
    def check(value, where):
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < 2**63:
            raise _bad(where, f"a whole number >= {minimum}", value)
    return check


def _number(positive=False, infinite=False):
    """A JSON number >= 0 (> 0 if ``positive``), finite unless ``infinite``."""
    def check(value, where):
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)
                or not (value > 0 if positive else value >= 0) or (math.isinf(value) and not infinite)):
            raise _bad(where, f"a {'finite ' if not infinite else ''}number {'>' if positive else '>='} 0",
                       value)
    return check


def _optional(check):
    def optional(value, where):
        if value is not None:
            check(value, where)
    return optional


def _list_of(check, length=None, nonempty=False):
    def checked(value, where):
        if not isinstance(value, list):
            raise _bad(where, "a list", value)
        if length is not None and len(value) != length:
            raise _bad(where, f"a list of {length}", value)
        if nonempty and not value:
            raise _bad(where, "a non-empty list", value)
        for i, item in enumerate(value):
            check(item, f"{where}[{i}]")
    return checked


def _mapping_of(check):
    def checked(value, where):
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        for key, item in value.items():
            check(item, f"{where}.{key}")
    return checked


def _fields(spec):
    """An object with at least the keys of ``spec``, each passing its check."""
    def checked(value, where):
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        for key, check in spec.items():
            place = f"{where}.{key}" if where else key
            if key not in value:
                raise ValueError(f"{place}: missing")
            check(value[key], place)
    return checked


_LAYOUTS = ("NCHW", "NHWC")
_SECONDS = _number(positive=True)

_MACHINE = _fields({
    "cpu": _text, "cores": _optional(_whole(1)), "numba_threads": _whole(1),
    "threading_layer": _optional(_text), "platform": _text, "python": _text,
    "packages": _mapping_of(_optional(_text)), "environment": _mapping_of(_text),
})

_SETTINGS = _fields({
    "network": _text, "threads": _list_of(_whole(1), nonempty=True), "algorithms": _list_of(_text),
    "layer_names": _optional(_list_of(_text)), "quick": _flag, "repeats": _whole(1),
    "max_seconds": _number(infinite=True), "layout": _choice("NCHW", "NHWC", "native"), "baselines": _flag,
    "memory": _flag, "reference": _text, "timed_repeats": _whole(1), "min_timed_seconds": _number(),
    "torch_version": _optional(_text),
})

_LAYER = _fields({
    "label": _text, "network": _text, "name": _text, "x_shape": _list_of(_whole(1), length=4),
    "w_shape": _list_of(_whole(1), length=4), "stride": _whole(1), "padding": _whole(0), "groups": _whole(1),
    "flops": _number(),
})

_RECORD = _fields({
    "layer": _text, "algorithm": _text, "kind": _choice("algorithm", "baseline"), "threads": _whole(1),
    "layout": _choice(*_LAYOUTS), "seconds": _optional(_SECONDS), "median_seconds": _optional(_SECONDS),
    "runs": _list_of(_SECONDS), "gflops": _optional(_number()), "workspace_bytes": _optional(_whole(0)),
    "predicted_seconds": _optional(_number()), "peak_added_bytes": _optional(_whole(0)),
    "transient_bytes": _optional(_whole(0)), "skipped": _text,
})

_PLAN = _fields({
    "layer": _text, "thread_budget": _whole(1), "layout": _choice(*_LAYOUTS), "algorithm": _text,
    "threads": _whole(1), "workspace_bytes": _whole(0), "predicted_seconds": _number(),
})

_RESULT = _fields({
    "schema": _choice(SCHEMA), "version": _text, "created": _text, "machine": _MACHINE, "settings": _SETTINGS,
    "layers": _list_of(_LAYER, nonempty=True), "results": _list_of(_RECORD), "plans": _list_of(_PLAN),
    "notes": _list_of(_text),
})


def check_result(result) -> None:
    """Check that ``result`` is a complete benchmark result, as :func:`run_bench` writes it.

    Raises
    ------
    ValueError
        Naming the first field that is missing, of the wrong type, out of
        range or inconsistent with the rest (e.g. ``results[2].seconds``).
    """
    _RESULT(result, "")
    labels = [layer["label"] for layer in result["layers"]]
    if len(set(labels)) != len(labels):
        raise ValueError(f"layers: the label {next(l for l in labels if labels.count(l) > 1)!r} is repeated")
    for i, record in enumerate(result["results"]):
        where = f"results[{i}]"
        if record["layer"] not in labels:
            raise _bad(f"{where}.layer", "the label of one of the layers", record["layer"])
        timed = record["seconds"] is not None
        for key in ("median_seconds", "gflops"):
            if (record[key] is not None) != timed:
                raise ValueError(f"{where}.seconds and {where}.{key}: expected both numbers or both null; got "
                                 f"{_describe(record['seconds'])} and {_describe(record[key])}")
        if timed and not record["runs"]:
            raise _bad(f"{where}.runs", "the timed runs", record["runs"])
    for i, entry in enumerate(result["plans"]):
        if entry["layer"] not in labels:
            raise _bad(f"plans[{i}].layer", "the label of one of the layers", entry["layer"])


def read_result(json_path) -> dict:
    """Load and check a file written by ``lowmem-numba bench --json``.

    Raises
    ------
    OSError
        If the file cannot be read.
    ValueError
        If it is not JSON or not a complete benchmark result (the message
        names the file and the bad field).
    """
    with open(json_path, "rb") as handle:
        data = handle.read()
    try:
        result = json.loads(data)
    except ValueError as error:  # not UTF-8, not JSON, or a number too long to convert
        raise ValueError(f"{json_path} is not JSON ({error})") from None
    except RecursionError:
        raise ValueError(f"{json_path} is not a benchmark result: nested too deeply") from None
    if not isinstance(result, dict) or result.get("schema") != SCHEMA:
        raise ValueError(f"{json_path} is not a lowmem-numba bench result (written by bench --json): "
                         f"its schema is not {SCHEMA!r}")
    try:
        check_result(result)
    except ValueError as error:
        raise ValueError(f"{json_path} is a damaged bench result: {error}") from None
    return result


def write_report(json_path, out_dir=None) -> tuple[str, str]:
    """Write ``<name>.md`` and ``<name>.png`` for a benchmark JSON file.

    Each file is written to a temporary file next to it and renamed into
    place when complete, so a failure never leaves a truncated report behind
    (nor damages an earlier one).

    Parameters
    ----------
    json_path : str
        A file written by ``lowmem-numba bench --json``.
    out_dir : str, optional
        Directory for the report (created if missing); default the JSON file's.

    Returns
    -------
    tuple of str
        Paths of the markdown file and the PNG.

    Raises
    ------
    ImportError
        If matplotlib is missing (checked before anything is written).
    OSError, ValueError
        If the file cannot be read or is not a complete benchmark result, or
        the report cannot be written.
    """
    import matplotlib  # noqa: F401  (fail before writing anything)

    result = read_result(json_path)
    out_dir = out_dir or os.path.dirname(os.path.abspath(json_path))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(json_path))[0]
    md_path, png_path = os.path.join(out_dir, stem + ".md"), os.path.join(out_dir, stem + ".png")
    for path in (md_path, png_path):
        check_writable(path)
    text = markdown(result, os.path.basename(png_path))
    with replacing(png_path, "wb") as png, replacing(md_path) as md:
        plot(result, png)
        md.write(text)
    return md_path, png_path
