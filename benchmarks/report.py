"""Markdown tables and PNG plots of a `mmzoo benchmark` results JSON.

    python -m benchmarks.report bench/results.json

rewrites `bench/results.md` and the plots from the JSON alone, so a run
from another machine can be reported here.
"""

import json
import os
import sys

from mmzoo.export.tflite import QUANTIZATIONS

INT8_SIZE_TARGET = 0.30
INT8_SPEEDUP_TARGET = 1.5  # int8 / float32 speed, XNNPACK on one thread (issue 17)
# What `latency.serving_latency` times, in the order the report shows.
SERVING_TIMINGS = (
    "keras_predict",
    "keras_predict_on_batch",
    "saved_model_predict_tensors",
    "saved_model_serving_default",
)


def targets(results):
    """The issue's targets, each with its measured value and verdict."""
    checks = []
    for row in results.get("overhead", []):
        if "target" in row:
            checks.append(
                {
                    "what": f"{row['label']}: fused / bare training images/s",
                    "target": f">= {row['target']:.2f}",
                    "measured": round(row["train_ratio"], 3),
                    "met": row["meets_target"],
                }
            )
    for name, tflite in results.get("tflite", {}).items():
        if "int8_size_vs_float32" not in tflite:
            continue
        checks.append(
            {
                "what": f"{name}: int8 TFLite size / float32",
                "target": f"<= {INT8_SIZE_TARGET:.2f}",
                "measured": round(tflite["int8_size_vs_float32"], 3),
                "met": tflite["int8_size_vs_float32"] <= INT8_SIZE_TARGET,
            }
        )
        checks.append(
            {
                "what": f"{name}: int8 TFLite speed-up over float32 (XNNPACK, "
                "1 thread)",
                "target": f">= {INT8_SPEEDUP_TARGET}",
                "measured": round(tflite["int8_speedup_1_thread"], 3),
                "met": tflite["int8_speedup_1_thread"] >= INT8_SPEEDUP_TARGET,
            }
        )
    return {
        "checks": checks,
        "met": sum(check["met"] for check in checks),
        "missed": sum(not check["met"] for check in checks),
    }


# === Markdown ===


def _number(value, digits=1):
    if value is None:
        return ""
    if isinstance(value, float) and abs(value) < 10**-digits and value:
        return f"{value:.2g}"
    return f"{value:,.{digits}f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _machine_line(results):
    machine = results["machine"]
    device = machine.get("gpu") or "no GPU"
    versions = ", ".join(
        f"{name} {machine[name]}"
        for name in ("keras", "tensorflow", "jax", "torch", "mmzoo")
        if machine.get(name)
    )
    return (
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {device}; "
        f"Python {machine['python']}, backend {machine['backend']}; {versions}. "
        f"Suite `{results['suite']}`, started {results['started']}."
    )


def markdown(results):
    """The whole report as markdown text."""
    plan = results["settings"]
    lines = [
        f"# mmzoo benchmark: {results['suite']} suite",
        "",
        _machine_line(results),
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    if results.get("throughput"):
        lines += [
            "## Training and inference throughput",
            "",
            f"Synthetic in-memory batches; images/s is the median of "
            f"{plan['repeats']} repeats of at least {plan['steps']} steps and "
            f"{plan.get('min_seconds', 0)} s each, after {plan['warmup']} "
            "warm-up steps. vs bare: the fused model's images/s "
            "over its bare image tower's (same batch, precision, XLA). Training "
            "TFLOP/s counts 3x the forward FLOPs. Train peak MB: the weights "
            "plus the largest rise in memory over the warm-up training steps "
            f"({_memory_kind(results)}"
            + (
                "; measured in the group's shared process, where later models "
                "reuse memory earlier ones freed, so on a CPU only the first "
                "model's figure is whole: `--memory isolated` measures each "
                "alone)."
                if plan.get("memory") == "group"
                else ")."
            ),
            "",
        ]
        ratios = {row["label"]: row for row in results.get("overhead", [])}
        rows = []
        for row in results["throughput"]:
            if "error" in row:
                rows.append([row["label"], "failed: " + row["error"][:80]] + [""] * 8)
                continue
            ratio = ratios.get(row["label"], {})
            rows.append(
                [
                    row["label"],
                    _number(row["train_images_per_s"]),
                    _number(ratio.get("train_ratio"), 2),
                    _number(row["infer_images_per_s"]),
                    _number(ratio.get("infer_ratio"), 2),
                    _number(row.get("train_peak_memory_mb"), 0),
                    _number(row.get("forward_gflops_per_image"), 3),
                    _number(row.get("train_tflops"), 3),
                    _percent(row.get("train_fraction_of_peak")),
                    _number(row["parameters"] / 1e6, 2),
                ]
            )
        lines += _table(
            [
                "configuration",
                "train img/s",
                "vs bare",
                "infer img/s",
                "vs bare",
                "train peak MB",
                "GFLOP/img",
                "train TFLOP/s",
                "of peak",
                "params M",
            ],
            rows,
        )
        peaks = {
            (row["peak_source"], row["peak_tflops"])
            for row in results["throughput"]
            if row.get("peak_tflops")
        }
        for source, peak in sorted(peaks):
            lines += ["", f"Peak used for 'of peak': {peak:,.3g} TFLOP/s ({source})."]
        lines += ["", *_anchors(results)]
    checks = results.get("targets", {}).get("checks", [])
    if checks:
        lines += ["", "## Targets", ""]
        lines += _table(
            ["what", "target", "measured", "met"],
            [
                [c["what"], c["target"], c["measured"], "yes" if c["met"] else "NO"]
                for c in checks
            ],
        )
    if results.get("pipeline"):
        from benchmarks.pipeline import markdown as pipeline_markdown

        lines += [
            "",
            "## Input pipeline (tf.data)",
            "",
            pipeline_markdown(results["pipeline"]),
        ]
    if results.get("serving"):
        lines += ["", "## Serving latency: SavedModel against Keras", ""]
        lines += [
            "Milliseconds per call, median (90th percentile). `serving_default` "
            "takes JPEG bytes and raw text (decode, resize and tokenize in the "
            "graph); `predict_tensors` takes the same tensors as Keras.",
            "",
        ]
        rows = []
        for name, batches in results["serving"].items():
            for batch, row in batches.items():
                rows.append(
                    [name, batch] + [_latency(row[key]) for key in SERVING_TIMINGS]
                )
        lines += _table(
            [
                "model",
                "batch",
                "Keras predict",
                "Keras predict_on_batch",
                "SavedModel predict_tensors",
                "SavedModel serving_default",
            ],
            rows,
        )
    if results.get("tflite"):
        lines += ["", "## TFLite (LiteRT interpreter), batch 1", ""]
        lines += [
            "Milliseconds per call, median (90th percentile); XNNPACK is the "
            "interpreter's default delegate; the reference kernels run without "
            "it. XNNPACK partitions: the pieces of the graph the delegate took "
            "(1: all of it; more: ops left to the builtin kernels between them). "
            "max diff: largest absolute difference from Keras on one "
            "synthetic example (int8 calibrated on 32 synthetic examples).",
            "",
        ]
        rows = []
        for name, table in results["tflite"].items():
            cores = table["threads_all_cores"]
            for quantize in QUANTIZATIONS:
                if quantize not in table:
                    continue
                row = table[quantize]
                rows.append(
                    [
                        name,
                        quantize,
                        _number(row["bytes"] / 2**20, 2),
                        _number(row.get("size_vs_float32"), 2),
                        _latency(row["xnnpack_1_thread"]),
                        _latency(row[f"xnnpack_{cores}_threads"]),
                        _latency(row["reference_kernels_1_thread"]),
                        _blank(row.get("xnnpack_partitions")),
                        f"{row['max_abs_diff_vs_keras']:.1g}",
                    ]
                )
        lines += _table(
            [
                "model",
                "quantize",
                "MiB",
                "size vs float32",
                "XNNPACK 1 thread",
                f"XNNPACK {cores} threads",
                "reference 1 thread",
                "XNNPACK partitions",
                "max diff",
            ],
            rows,
        )
    for part, reason in results.get("skipped", {}).items():
        lines += ["", f"Skipped {part}: {reason}."]
    if "seconds" in results:
        lines += ["", f"Wall time: {results['seconds']:.0f} s."]
    plots = [name for name in PLOTS if _has(results, PLOTS[name][0])]
    if plots:
        lines += [""] + [f"![{name}]({name}.png)" for name in plots]
    return "\n".join(lines) + "\n"


def _blank(value):
    return "" if value is None else value


def _memory_kind(results):
    kinds = {row.get("memory_measure") for row in results["throughput"]} - {None}
    return ", ".join(sorted(kinds)) or "not measured"


def _percent(fraction):
    return "" if fraction is None else f"{100 * fraction:.1f}%"


def _latency(timing):
    return f"{timing['median_ms']:.2f} ({timing['p90_ms']:.2f})"


def _anchors(results):
    ours = [
        row
        for row in results["throughput"]
        if row["image_tower"] == "resnet50"
        and row["fusion"] == "bare"
        and "error" not in row
    ]
    lines = ["Public anchors (ResNet50 training, images/s):", ""]
    rows = [
        [a["what"], f"{a['images_per_s']:,}", a["source"]] for a in results["anchors"]
    ]
    for row in ours:
        rows.append(
            [f"ours: {row['label']}", _number(row["train_images_per_s"]), "this run"]
        )
    return lines + _table(["", "images/s", "source"], rows)


# === Plots ===


def _has(results, part):
    return bool(results.get(part))


def _plot_throughput(results, axes_factory):
    rows = [row for row in results["throughput"] if "error" not in row]
    figure, axes = axes_factory(len(rows))
    labels = [row["label"] for row in rows]
    positions = range(len(rows))
    axes.barh(
        [p + 0.2 for p in positions],
        [row["train_images_per_s"] for row in rows],
        0.4,
        label="training",
    )
    axes.barh(
        [p - 0.2 for p in positions],
        [row["infer_images_per_s"] for row in rows],
        0.4,
        label="inference",
    )
    axes.set_yticks(list(positions), labels, fontsize=7)
    axes.set_xscale("log")
    axes.set_xlabel("images/s (log scale)")
    axes.invert_yaxis()
    axes.legend()
    return figure


def _plot_overhead(results, axes_factory):
    rows = results["overhead"]
    figure, axes = axes_factory(len(rows))
    axes.barh(range(len(rows)), [row["train_ratio"] for row in rows], label="training")
    axes.scatter(
        [row["infer_ratio"] for row in rows],
        range(len(rows)),
        color="black",
        zorder=3,
        label="inference",
    )
    for value, style in ((0.9, "--"), (0.8, ":")):
        axes.axvline(value, color="red", linestyle=style, label=f"target {value}")
    axes.axvline(1.0, color="grey", linewidth=0.5)
    axes.set_yticks(range(len(rows)), [row["label"] for row in rows], fontsize=7)
    axes.set_xlabel("fused / bare image tower images/s")
    axes.invert_yaxis()
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return figure


def _plot_tflite(results, axes_factory):
    bars = []
    for name, table in results["tflite"].items():
        cores = table["threads_all_cores"]
        for quantize in QUANTIZATIONS:
            if quantize in table:
                row = table[quantize]
                bars.append(
                    (
                        f"{name} {quantize}",
                        row["xnnpack_1_thread"]["median_ms"],
                        row[f"xnnpack_{cores}_threads"]["median_ms"],
                    )
                )
    figure, axes = axes_factory(len(bars))
    positions = range(len(bars))
    axes.barh([p + 0.2 for p in positions], [b[1] for b in bars], 0.4, label="1 thread")
    axes.barh(
        [p - 0.2 for p in positions], [b[2] for b in bars], 0.4, label="all cores"
    )
    axes.set_yticks(list(positions), [b[0] for b in bars], fontsize=7)
    axes.set_xlabel("ms per call, batch 1 (XNNPACK)")
    axes.invert_yaxis()
    axes.legend()
    return figure


def _plot_serving(results, axes_factory):
    groups = [
        (f"{name} b{batch}", row)
        for name, batches in results["serving"].items()
        for batch, row in batches.items()
    ]
    figure, axes = axes_factory(len(groups) * 2)
    width = 0.8 / len(SERVING_TIMINGS)
    for offset, key in enumerate(SERVING_TIMINGS):
        axes.barh(
            [index + offset * width for index in range(len(groups))],
            [row[key]["median_ms"] for _, row in groups],
            width,
            label=key,
        )
    axes.set_yticks(
        [index + 0.4 - width / 2 for index in range(len(groups))],
        [name for name, _ in groups],
        fontsize=7,
    )
    axes.set_xscale("log")
    axes.set_xlabel("ms per call (log scale)")
    axes.invert_yaxis()
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return figure


PLOTS = {
    "throughput": ("throughput", _plot_throughput),
    "overhead": ("overhead", _plot_overhead),
    "serving": ("serving", _plot_serving),
    "tflite": ("tflite", _plot_tflite),
}


def plot(results, folder):
    """Write one PNG per part measured; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    def axes_factory(count):
        figure, axes = pyplot.subplots(figsize=(9, 1.5 + 0.3 * max(count, 1)))
        return figure, axes

    paths = []
    for name, (part, draw) in PLOTS.items():
        if not _has(results, part):
            continue
        figure = draw(results, axes_factory)
        figure.suptitle(
            f"{name} ({results['machine']['backend']}, "
            f"{results['machine'].get('gpu') or results['machine']['cpu']})",
            fontsize=9,
        )
        figure.tight_layout()
        path = os.path.join(folder, f"{name}.png")
        figure.savefig(path, dpi=100)
        pyplot.close(figure)
        paths.append(path)
    return paths


def write(results, folder):
    """Write `results.md` and the plots into `folder`; return the markdown."""
    plot(results, folder)
    text = markdown(results)
    with open(os.path.join(folder, "results.md"), "w") as file:
        file.write(text)
    return text


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.report RESULTS_JSON", file=sys.stderr)
        return 2
    with open(argv[0]) as file:
        results = json.load(file)
    results["targets"] = targets(results)
    print(write(results, os.path.dirname(os.path.abspath(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
