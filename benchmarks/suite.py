"""`mmzoo benchmark`: the suites, and the run that writes their results.

    mmzoo benchmark --suite quick --out bench/

writes `bench/results.json` (every figure, rewritten after each
configuration so an interrupted run keeps what it measured),
`bench/results.md` (the tables) and `bench/*.png` (the plots).

The quick suite takes a few minutes on two CPU cores: MobileNetV3-Small at
224 px bare and fused (concat, weighted sum, gated and cross-attention,
each with the bag-of-words and the CNN text tower: the fusions the issue
sets overhead targets for), small_cnn bare and fused, the input pipeline,
and serving and TFLite latency. The full suite sweeps every image tower x
text tower x fusion x batch size x precision x XLA setting; it is meant
for an accelerator, and any flag below narrows it.

Each group (a bare tower and the fused models over it, at one batch size,
precision and XLA setting) runs in a fresh process, its models taking
turns repeat by repeat (see `throughput.measure_group`). The pipeline,
serving and TFLite parts need TensorFlow and run on that backend only;
on `--backend jax` or `torch` they are recorded as skipped, with the
reason.
"""

import argparse
import datetime
import importlib.util
import itertools
import json
import os
import shlex
import subprocess
import sys
import time

from benchmarks import child_environment
from mmzoo import registry

BACKENDS = ("tensorflow", "jax", "torch")
PARTS = ("throughput", "pipeline", "serving", "tflite")
TOWERS = ("vgg16", "resnet50", "mobilenet_v3_small", "small_cnn")
# The text towers trained from scratch, which build on every backend (the
# pretrained ones need their hub's files).
TEXT_TOWERS = tuple(
    name
    for name, spec in registry.TEXT_TOWERS.items()
    if spec.tokenizer == "word" and spec.portable
)
# Every fusion but the unimodal baselines, which the bare tower stands for.
FUSIONS = tuple(
    name for name, spec in registry.FUSIONS.items() if len(spec.modalities) == 2
)
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# The fusions the overhead targets are set for (README, "Targets").
TARGETED_FUSIONS = ("concat", "weighted_sum", "gated", "cross_attention")

SUITES = {
    "quick": {
        "description": "a few minutes on 2 CPU cores",
        # (tower, image size, text towers, fusions); the bare tower is
        # always measured too.
        "models": [
            (
                "mobilenet_v3_small",
                224,
                ("bow", "cnn"),
                TARGETED_FUSIONS,
            ),
            ("small_cnn", 64, ("bow",), ("concat",)),
        ],
        "batch_sizes": (16,),
        "precisions": ("float32",),
        "xla": (False,),
        "steps": 2,
        "repeats": 5,
        "warmup": 2,
        "min_seconds": 1.0,
        "memory": "group",
        "pipeline": {"repeats": 3, "photos": 64, "batches": 20, "training": False},
        "latency_models": [("small_cnn", 64), ("mobilenet_v3_small", 224)],
        "batch_sizes_serving": (1, 16),
        "calls": 20,
    },
    "gpu": {
        "description": "the GPU figures (benchmarks/gpu.sh): about 25 min on one "
        "H100-class GPU with JAX",
        # Every tower of the design card at batch 256, float32 (TF32) and
        # bfloat16, XLA: the fusions the targets are set for, over the two
        # text towers they name.
        "models": [
            (tower, 224, ("bow", "cnn"), TARGETED_FUSIONS)
            for tower in ("resnet50", "vgg16", "mobilenet_v3_small", "small_cnn")
        ],
        "batch_sizes": (256,),
        "precisions": ("float32", "mixed_bfloat16"),
        "xla": (True,),
        "parts": ("throughput",),
        "steps": 10,
        "repeats": 3,
        "warmup": 2,
        "min_seconds": 1.0,
        # One process per group: a fresh one per model would add a start-up
        # and an XLA compilation each, for memory figures nobody asked for.
        "memory": "group",
        "pipeline": {},
        "latency_models": [],
        "batch_sizes_serving": (),
        "calls": 0,
    },
    "full": {
        "description": "every combination; hours, meant for an accelerator",
        "models": [(tower, 224, TEXT_TOWERS, FUSIONS) for tower in TOWERS],
        "batch_sizes": (64, 256),
        "precisions": PRECISIONS,
        "xla": (False, True),
        "steps": 10,
        "repeats": 5,
        "warmup": 3,
        "min_seconds": 2.0,
        "memory": "isolated",
        "pipeline": {"repeats": 5, "photos": 300, "batches": 60},
        "latency_models": [
            ("small_cnn", 64),
            ("mobilenet_v3_small", 224),
            ("mobilenet_v3_large", 224),
            ("efficientnet_b0", 224),
            ("resnet50", 224),
        ],
        "batch_sizes_serving": (1, 16, 64),
        "calls": 50,
    },
}


def _csv(kind, choices=None, cast=str):
    def parse(text):
        values = [cast(value.strip()) for value in text.split(",") if value.strip()]
        bad = [value for value in values if choices and value not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"{kind} must be a comma-separated list of {list(choices or [])}. "
                f"Received: {text!r}"
            )
        return values

    return parse


def build_parser():
    parser = argparse.ArgumentParser(
        prog="mmzoo benchmark",
        description="Measure training and inference throughput, fusion overhead, "
        "the input pipeline, and serving and TFLite latency.",
    )
    parser.add_argument("--suite", choices=sorted(SUITES), default="quick")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Keras backend (default: KERAS_BACKEND, else tensorflow)",
    )
    parser.add_argument("--out", required=True, help="folder for the results")
    parser.add_argument(
        "--parts",
        type=_csv("--parts", PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} (default: the "
        "suite's: all of them, the gpu suite's throughput alone)",
    )
    narrow = parser.add_argument_group("narrow the suite's sweep")
    narrow.add_argument("--towers", type=_csv("--towers", TOWERS))
    narrow.add_argument("--text-towers", type=_csv("--text-towers", TEXT_TOWERS))
    narrow.add_argument("--fusions", type=_csv("--fusions", FUSIONS))
    narrow.add_argument("--batch-sizes", type=_csv("--batch-sizes", cast=int))
    narrow.add_argument("--precisions", type=_csv("--precisions", PRECISIONS))
    narrow.add_argument("--xla", choices=("off", "on", "both"))
    narrow.add_argument("--image-size", type=int, help="one size for every tower")
    narrow.add_argument("--steps", type=int, help="steps per timed repeat")
    narrow.add_argument("--repeats", type=int, help="timed repeats (median taken)")
    narrow.add_argument("--warmup", type=int, help="untimed steps first")
    narrow.add_argument(
        "--min-seconds", type=float, help="shortest timed repeat (more steps if needed)"
    )
    narrow.add_argument("--calls", type=int, help="latency calls (median taken)")
    parser.add_argument(
        "--memory",
        choices=("group", "isolated"),
        help="peak memory from the group's shared process (quick's default: "
        "free, but on a CPU later models reuse memory earlier ones freed) or "
        "from each model alone in a fresh process (full's default: one more "
        "start-up and warm-up per model)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure every group in this process: faster, but peak memory "
        "is then only a lower bound",
    )
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per group")
    return parser


def settings(args):
    """The suite's settings with the command line's narrowing applied."""
    suite = SUITES[args.suite]
    # A tower the suite leaves out gets the text towers and fusions of the
    # suite's first model.
    _, _, default_texts, default_fusions = suite["models"][0]
    sizes = {tower: size for tower, size, _, _ in suite["models"]}
    models = []
    for tower in args.towers or [model[0] for model in suite["models"]]:
        texts, fusions = default_texts, default_fusions
        for name, _, suite_texts, suite_fusions in suite["models"]:
            if name == tower:
                texts, fusions = suite_texts, suite_fusions
        models.append(
            (
                tower,
                args.image_size or sizes.get(tower, 224),
                list(args.text_towers or texts),
                list(args.fusions or fusions),
            )
        )
    xla = {"off": (False,), "on": (True,), "both": (False, True)}.get(
        args.xla, suite["xla"]
    )
    latency_models = [
        (tower, args.image_size or size)
        for tower, size in suite["latency_models"]
        if not args.towers or tower in args.towers
    ]
    return {
        "suite": args.suite,
        "models": models,
        "batch_sizes": list(args.batch_sizes or suite["batch_sizes"]),
        "precisions": list(args.precisions or suite["precisions"]),
        "xla": list(xla),
        "steps": args.steps or suite["steps"],
        "repeats": args.repeats or suite["repeats"],
        "warmup": args.warmup or suite["warmup"],
        "min_seconds": suite["min_seconds"]
        if args.min_seconds is None
        else args.min_seconds,
        "pipeline": suite["pipeline"],
        "latency_models": latency_models,
        "batch_sizes_serving": list(suite["batch_sizes_serving"]),
        "calls": args.calls or suite["calls"],
        "parts": list(args.parts or suite.get("parts", PARTS)),
        "memory": args.memory or suite["memory"],
        "isolated": not args.in_process,
    }


def configurations(plan, backend):
    """The plan's `throughput.Config`s, in groups measured side by side.

    A group is one image tower at one size, batch size, precision and XLA
    setting: its bare tower first, then every text tower x fusion over it.
    """
    from benchmarks.throughput import BARE
    from benchmarks.throughput import Config

    xla = plan["xla"]
    if backend == "jax":
        xla = [True]  # JAX always compiles with XLA
    groups = []
    for tower, size, texts, fusions in plan["models"]:
        grid = itertools.product(plan["batch_sizes"], plan["precisions"], xla)
        for batch, precision, jit in grid:
            common = dict(image_size=size, batch_size=batch, precision=precision)
            group = [Config(tower, None, BARE, xla=jit, **common)]
            for text, fusion in itertools.product(texts, fusions):
                group.append(Config(tower, text, fusion, xla=jit, **common))
            groups.append(group)
    return groups


def _backend_available(backend):
    return importlib.util.find_spec(backend) is not None


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    backend = args.backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    if not _backend_available(backend):
        print(
            f"--backend {backend} needs the `{backend}` package, which is not "
            f"installed here: `python3 -m pip install {backend}`.",
            file=sys.stderr,
        )
        return 2
    import keras

    if keras.backend.backend() != backend:
        # Keras picks its backend once, at import: go on in a process that
        # starts on the one asked for.
        command = [sys.executable, "-m", "benchmarks.suite", *argv]
        return subprocess.call(command, env=child_environment(backend))
    return run(args, backend, argv)


def run(args, backend, argv):
    from benchmarks import machine
    from benchmarks import report
    from benchmarks import throughput

    plan = settings(args)
    os.makedirs(args.out, exist_ok=True)
    results = {
        "suite": args.suite,
        "command": shlex.join(["mmzoo", "benchmark", *argv]),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine.describe(backend),
        "settings": plan,
        "anchors": machine.ANCHORS,
        "throughput": [],
        "skipped": {},
    }
    path = os.path.join(args.out, "results.json")

    def save():
        with open(path, "w") as file:
            json.dump(results, file, indent=2)

    started = time.perf_counter()
    if "throughput" in plan["parts"]:
        groups = configurations(plan, backend)
        peaks = {p: machine.peak_tflops(backend, p) for p in plan["precisions"]}
        flops = {}
        for number, group in enumerate(groups, start=1):
            print(
                f"[{number}/{len(groups)}] {group[0].label()} and "
                f"{len(group) - 1} fused models ...",
                flush=True,
            )
            tic = time.perf_counter()
            count = {config.model_key for config in group} - set(flops)
            arguments = dict(
                steps=plan["steps"],
                repeats=plan["repeats"],
                warmup=plan["warmup"],
                count_flops=sorted(count, key=str),
                min_seconds=plan["min_seconds"],
            )
            if plan["isolated"]:
                rows = throughput.measure_isolated(
                    group, **arguments, timeout=args.timeout
                )
            else:
                rows = throughput.measure_group(group, **arguments)
            for config, row in zip(group, rows, strict=True):
                row["group"] = number
                if plan["memory"] == "isolated" and "error" not in row:
                    alone = throughput.measure_memory(config, plan["warmup"])
                    if "error" not in alone:
                        row["train_peak_memory_mb"] = alone["train_peak_memory_mb"]
                        row["memory_measure"] = alone["memory_measure"] + (
                            ", each model alone in a fresh process"
                        )
                if config.model_key in count and "error" not in row:
                    flops[config.model_key] = row.get("forward_gflops_per_image")
                row = throughput.add_flops(row, flops.get(config.model_key))
                peak, source = peaks[config.precision]
                if peak and "train_tflops" in row:
                    row["peak_tflops"] = peak
                    row["peak_source"] = source
                    row["train_fraction_of_peak"] = row["train_tflops"] / peak
                    row["infer_fraction_of_peak"] = row["infer_tflops"] / peak
                results["throughput"].append(row)
                print("   ", _progress(row), flush=True)
            results["overhead"] = throughput.overhead(results["throughput"])
            save()
            print(f"    ({time.perf_counter() - tic:.0f} s)", flush=True)

    needs_tensorflow = [
        p for p in ("pipeline", "serving", "tflite") if p in plan["parts"]
    ]
    if backend != "tensorflow":
        for part in needs_tensorflow:
            results["skipped"][part] = (
                "needs the TensorFlow backend (tf.data, SavedModel, TFLite): "
                "run with --backend tensorflow"
            )
        needs_tensorflow = []
    if "pipeline" in needs_tensorflow:
        from benchmarks import pipeline

        print("input pipeline ...", flush=True)
        results["pipeline"] = pipeline.measure(**plan["pipeline"])
        save()
    if "serving" in needs_tensorflow or "tflite" in needs_tensorflow:
        _latency(results, plan, needs_tensorflow)
        save()

    results["targets"] = report.targets(results)
    results["seconds"] = time.perf_counter() - started
    save()
    markdown = report.write(results, args.out)
    print()
    print(markdown)
    errors = [row for row in results["throughput"] if "error" in row]
    if errors:
        print(
            f"{len(errors)} of {len(results['throughput'])} configurations "
            f"failed; their errors are in {path}.",
            file=sys.stderr,
        )
        return 1
    return 0


def _latency(results, plan, parts):
    from benchmarks import latency
    from benchmarks.throughput import Config
    from benchmarks.throughput import build

    results.setdefault("serving", {})
    results.setdefault("tflite", {})
    for tower, size in plan["latency_models"]:
        config = Config(tower, "bow", "concat", size, 1)
        name = f"{tower} + bow + concat @{size}px"
        model = build(config)
        if "serving" in parts:
            print(f"serving latency: {name} ...", flush=True)
            results["serving"][name] = latency.serving_latency(
                model, size, plan["batch_sizes_serving"], plan["calls"], 3
            )
        if "tflite" in parts:
            print(f"TFLite latency: {name} ...", flush=True)
            results["tflite"][name] = latency.tflite_latency(model, plan["calls"], 3)


def _progress(row):
    if "error" in row:
        return f"{row['label']}: FAILED: {row['error']}"
    return (
        f"{row['label']}: train {row['train_images_per_s']:,.1f} img/s, "
        f"infer {row['infer_images_per_s']:,.1f} img/s"
    )


if __name__ == "__main__":
    sys.exit(main())
