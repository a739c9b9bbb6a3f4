"""The `mmzoo` command line."""

import argparse
import os
import sys

from mmzoo import __version__
from mmzoo import registry


def _list(args):
    sections = {
        "models": (
            "Presets (mmzoo.build_model(NAME, num_classes=...))",
            registry.list_models,
        ),
        "image-towers": ("Image towers", registry.list_image_towers),
        "text-towers": ("Text towers", registry.list_text_towers),
        "fusions": ("Fusions", registry.list_fusions),
        "tasks": ("Tasks (build_model(task=...))", registry.list_tasks),
        "losses": ("Losses (task contrastive: --loss)", registry.list_losses),
    }
    from mmzoo.losses import LOSSES

    tables = {
        "models": registry.PRESETS,
        "image-towers": registry.IMAGE_TOWERS,
        "text-towers": registry.TEXT_TOWERS,
        "fusions": registry.FUSIONS,
        "tasks": registry.TASKS,
        "losses": {
            name: {"description": loss.__doc__.strip().splitlines()[0]}
            for name, loss in LOSSES.items()
        },
    }
    chosen = [args.what] if args.what else list(sections)
    for key in chosen:
        title, lister = sections[key]
        names = lister(args.pattern)
        width = max((len(name) for name in names), default=0) + 2
        print(f"{title}: {len(names)}")
        for name in names:
            entry = tables[key][name]
            description = (
                entry["description"] if isinstance(entry, dict) else entry.description
            )
            print(f"  {name:<{width}} {description}")
        print()
    return 0


def _data_check(args):
    from mmzoo.data.check import check_manifest
    from mmzoo.data.manifest import ManifestError

    try:
        report = check_manifest(
            args.manifest,
            labels=args.labels,
            multilabel=args.multilabel,
            max_pixels=args.max_pixels,
            decode=not args.headers_only,
            progress=sys.stdout.isatty(),
            strict=args.strict,
        )
    except (ManifestError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(problem)
    print(report.summary())
    return 1 if report.problems else 0


def _data_to_tfrecord(args):
    from mmzoo.data.check import DataError
    from mmzoo.data.manifest import ManifestError
    from mmzoo.data.tfrecord import write_tfrecords

    for argument, problem in (
        ("out_dir", _folder(args.out_dir)),
        ("--max-bad-fraction", _fraction(args.max_bad_fraction)),
    ):
        if problem:
            return _usage_error("mmzoo data to-tfrecord", argument, problem)
    try:
        paths, report = write_tfrecords(
            args.manifest,
            args.out_dir,
            num_shards=args.shards,
            max_pixels=args.max_pixels,
        )
        report.enforce(args.max_bad_fraction)
    except (ManifestError, DataError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"Wrote {len(report.good):,} rows to {len(paths)} shard(s) in {args.out_dir}")
    return 0


def _data_easy_vqa(args):
    from mmzoo.data.builtin import easy_vqa

    if args.out is not None and _folder(args.out):
        return _usage_error("mmzoo data easy-vqa", "--out", _folder(args.out))
    for split, path in easy_vqa(args.out).items():
        print(f"{split}: {path}")
    return 0


# The command line's log lines; `mmzoo demo`'s worker processes log alike.
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def _configure_logging():
    import logging

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def _train(args):
    from mmzoo.training import trainer

    _configure_logging()
    given = {
        key: value
        for key, value in vars(args).items()
        if key not in ("command", "run", "config", "resume")
    }
    result = trainer.train(args.config, resume=args.resume, **given)
    from mmzoo.metrics import format_metrics

    for split in ("val", "test"):
        if split in result["metrics"]:
            print(f"\n{split} ({result['run_dir']}/best.keras):")
            print(format_metrics(result["metrics"][split]))
    print(f"\nRun written to {result['run_dir']}")
    return 0


def _ensemble(args):
    from mmzoo import ensembles

    if len(args.runs) < 2:
        return _usage_error(
            "mmzoo ensemble",
            "RUN_DIR",
            f"an ensemble combines at least 2 runs. Received: {len(args.runs)}",
        )
    _configure_logging()
    combined = ensembles.ensemble(
        args.runs,
        args.method,
        val=args.val,
        out=args.out,
        test=args.test,
        batch_size=args.batch_size,
        folds=args.folds,
        seed=args.seed,
    )
    print(ensembles.report_table(combined.report))
    print(f"Ensemble written to {combined.directory}")
    return 0


def _evaluate(args):
    import json

    from mmzoo.training.evaluation import evaluate

    _configure_logging()
    metrics, path = evaluate(
        args.model, args.data, out=args.out, batch_size=args.batch_size
    )
    from mmzoo.metrics import format_metrics

    print(format_metrics(metrics) if "examples" in metrics else json.dumps(metrics))
    print(f"\nMetrics written to {path}")
    return 0


def _predict(args):
    from mmzoo.runs import predict

    result = predict(args.model, args.image, args.text, top_k=args.top_k)
    # A model with several heads answers once per head.
    for head, answer in result.get("heads", {}).items():
        print(f"{head}:")
        _print_answer(answer, "  ")
    _print_answer(result)
    for index, member in enumerate(result.get("members", ())):
        # An ensemble's members, each with its own answer.
        if "labels" in member:
            answer = f"{member['labels'][0]} {member['scores'][0]:.4f}"
        else:
            answer = str(member["predictions"])
        print(f"member {index}: {answer}")
    if "modality_weights" in result:
        weights = result["modality_weights"]
        image, text = weights["image"], weights["text"]
        print(f"modality weights: image {image:.3f}, text {text:.3f}")
    return 0


def _print_answer(result, indent=""):
    if "labels" in result:
        for label, score in zip(result["labels"], result["scores"], strict=True):
            print(f"{indent}{score:8.4f}  {label}")
    elif "predictions" in result:
        print(f"{indent}predictions:", result["predictions"])
    elif "similarity" in result:
        line = f"similarity: {result['similarity']:.4f}"
        if "match" in result:
            verdict = "a match" if result["match"] else "no match"
            line += (
                f" ({verdict}: the threshold chosen on the validation set is "
                f"{result['match_threshold']:.4f})"
            )
        print(line)


def _export(args):
    from mmzoo.runs import load_run

    if not (args.saved_model or args.tflite):
        print("error: pass --saved-model DIR and/or --tflite FILE", file=sys.stderr)
        return 2
    if args.index and not args.saved_model:
        print(
            "error: --index is searched by the SavedModel's search signatures: "
            "pass --saved-model DIR with it",
            file=sys.stderr,
        )
        return 2
    _configure_logging()
    run = load_run(args.model)
    if args.saved_model:
        from mmzoo.export.saved_model import export_saved_model

        index = None
        if args.index:
            from mmzoo.retrieval import load_index

            index = load_index(args.index)
        folder = os.path.normpath(args.saved_model)
        path = export_saved_model(
            run,
            base=os.path.dirname(folder) or ".",
            name=os.path.basename(folder),
            version=args.version,
            index=index,
        )
        print(f"SavedModel written to {path}")
    if args.tflite and run.task.name == "captioning":
        from mmzoo.captioning.tflite import export_tflite as export_captioner

        # Two files and their loop: --tflite names the folder for them.
        folder = export_captioner(run, os.path.splitext(args.tflite)[0])
        print(f"TFLite encoder, decoder step and caption_loop.py written to {folder}")
    elif args.tflite:
        from mmzoo.export.tflite import export_tflite

        report = export_tflite(
            run,
            args.tflite,
            quantize=args.quantize,
            representative=args.representative,
        )
        # A dual encoder's report holds one entry per encoder file.
        files = report.get("encoders", {"model": report}).values()
        for file in files:
            print(
                f"TFLite ({report['quantize']}) written to {file['path']}: "
                f"{file['bytes']:,} bytes, {file['size_ratio']:.2f}x float32"
            )
    return 0


def _index(args):
    from mmzoo import retrieval
    from mmzoo.runs import load_run

    _configure_logging()
    run = load_run(args.model)
    modalities = retrieval.MODALITIES if args.modality == "both" else [args.modality]
    for modality in modalities:
        out = args.out
        if args.modality == "both":
            out = os.path.join(args.out, modality)
        existing = None
        if args.append and os.path.exists(out):
            existing = retrieval.load_index(out)
            retrieval.check_fingerprint(existing, run)
        elif os.path.exists(out) and os.listdir(out):
            raise retrieval.RetrievalError(
                f"{out!r} is not empty: pass --append to add to the index there, "
                "or choose another --out."
            )
        index, report = retrieval.build_index(
            run,
            args.data,
            modality,
            dtype=args.dtype,
            batch_size=args.batch_size,
            base=existing.info.get("base") if existing is not None else None,
        )
        if existing is not None:
            if existing.modality != modality or existing.dtype != index.dtype:
                raise retrieval.RetrievalError(
                    f"{out} holds {existing.dtype} {existing.modality} embeddings; "
                    f"cannot append {index.dtype} {modality} ones."
                )
            existing.add(index.embeddings, index.ids, index.items)
            index = existing
        index.save(out)
        skipped = f" ({report.num_bad:,} bad rows skipped)" if report.num_bad else ""
        print(f"{modality} index: {len(index):,} rows{skipped} -> {out}")
    return 0


def _search(args):
    from mmzoo import retrieval
    from mmzoo.runs import load_run

    indexes = retrieval.load_indexes(args.index)
    first = next(iter(indexes.values()))
    run = load_run(args.model or first.info.get("run", ""))
    if args.text is not None:
        query = retrieval.embed_texts(run, [args.text])
    else:
        query = retrieval.embed_images(run, [args.image])
    for modality, index in indexes.items():
        retrieval.check_fingerprint(index, run)
        results = index.search(query, args.k, backend=args.backend)
        kind = "text" if args.text is not None else "image"
        print(f"{kind} -> {modality}: top {results.rows.shape[1]} of {len(index):,}")
        for rank, (item, score) in enumerate(
            zip(results.items[0], results.scores[0], strict=True), start=1
        ):
            if item is None:  # an approximate backend found fewer than k
                break
            where = item.get("text") if modality == "text" else item.get("path", "")
            print(f"{rank:4d}  {score:7.4f}  {item['id']}  {where!r}")
    return 0


def _zero_shot(args):
    import json

    from mmzoo.metrics import format_metrics
    from mmzoo.retrieval import DEFAULT_TEMPLATES
    from mmzoo.retrieval import zero_shot_evaluate
    from mmzoo.runs import load_run

    _configure_logging()
    run = load_run(args.model)
    labels = None
    if args.labels:
        with open(args.labels, encoding="utf-8") as file:
            labels = [line.strip() for line in file if line.strip()]
    metrics = zero_shot_evaluate(
        run, args.data, args.template or DEFAULT_TEMPLATES, labels, args.batch_size
    )
    metrics["data"] = os.path.abspath(args.data)
    out = args.out
    if out is None:
        stem = os.path.splitext(os.path.basename(os.path.normpath(args.data)))[0]
        out = os.path.join(run.directory, f"zero_shot_{stem}.json")
    with open(out, "w", encoding="utf-8") as file:
        json.dump(metrics, file, indent=2)
    print(format_metrics(metrics))
    print(f"\nMetrics written to {out}")
    return 0


def _demo(args):
    _configure_logging()
    savedmodels = None if args.no_export else args.savedmodels
    if args.retrieval:
        from mmzoo.apps.retrieval_demo import run_retrieval_demo

        return run_retrieval_demo(
            out=args.out or "runs/demo_retrieval",
            quick=args.quick,
            seed=args.seed,
            savedmodels=savedmodels,
        )
    from mmzoo.apps.demo import run_demo

    return run_demo(
        out=args.out or "runs/demo",
        quick=args.quick,
        seed=args.seed,
        savedmodels=savedmodels,
    )


def _names(names):
    # Validated with the configuration, which suggests close names.
    return "one of: " + ", ".join(names)


# === Flag values ===
# Each flag's value is checked as it is parsed, so a value the command could
# not use is a usage error (exit status 2, one line naming the flag) before
# anything is read, built or written.


def _flag_type(name, convert, check=None):
    """An argparse `type`: `convert` the text, then `check` the value."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {name}. Received: {text!r}"
            ) from None
        if check is not None:
            problem = check(value)
            if problem:
                raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = name
    return parse


def _config_flag(key, convert=str):
    """A `mmzoo train` flag: the same check as the run config key `key`."""
    from mmzoo.training.config import ConfigError
    from mmzoo.training.config import check_value

    def check(value):
        try:
            check_value(key, value)
        except ConfigError as error:
            return str(error)
        return None

    kinds = {int: "an integer", float: "a number", str: "a value"}
    return _flag_type(kinds[convert], convert, check)


def _positive(value):
    return None if value >= 1 else f"must be a positive integer. Received: {value}"


def _existing(value):
    if not os.path.exists(value):
        return f"no file or folder at {value!r}"
    return None


def _existing_file(value):
    if not os.path.isfile(value):
        return f"no file at {value!r}"
    return None


def _new_file(value):
    """An output file: not a folder, and its folder exists."""
    if os.path.isdir(value):
        return f"{value!r} is a folder; expected a file path"
    folder = os.path.dirname(os.path.abspath(value))
    if not os.path.isdir(folder):
        return f"the folder {folder!r} does not exist"
    return None


def _output_file(value):
    """An output file whose folder the command creates."""
    if os.path.isdir(value):
        return f"{value!r} is a folder; expected a file path"
    return _no_file_above(value)


def _folder(value):
    """An output folder: absent (it is created) or a folder."""
    if os.path.exists(value) and not os.path.isdir(value):
        return f"{value!r} is a file; expected a folder"
    return _no_file_above(value)


def _no_file_above(value):
    parent = os.path.dirname(os.path.abspath(value))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        return f"{parent!r} is a file, so {value!r} cannot be created"
    return None


def _run_folder(value):
    if not os.path.isdir(value):
        return f"no run folder at {value!r}"
    return None


def _empty_folder(value):
    """An output folder written whole: absent, or an empty folder."""
    problem = _folder(value)
    if problem is None and os.path.isdir(value) and os.listdir(value):
        return f"{value!r} is not empty; choose a new folder"
    return problem


def _serving_folder(value):
    """`--saved-model BASE/NAME`: NAME is the model's name in TF Serving."""
    from mmzoo.export.saved_model import _MODEL_NAME

    problem = _folder(value)
    if problem:
        return problem
    name = os.path.basename(os.path.normpath(value))
    if not _MODEL_NAME.fullmatch(name):
        return (
            f"the folder's name, {name!r}, is the model's name in TF Serving URLs: "
            "letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return None


def _fraction(value):
    if not 0 <= value <= 1:
        return f"must be a number from 0 to 1. Received: {value}"
    return None


def _usage_error(prog, argument, problem):
    """A flag value found unusable after parsing, as `_Parser.error` says it."""
    print(f"error: {prog}: argument {argument}: {problem}", file=sys.stderr)
    return 2


_INTEGER = _flag_type("an integer", int, _positive)
_PATH = _flag_type("a path", str, _existing)
_FILE = _flag_type("a file path", str, _existing_file)
_NEW_FILE = _flag_type("a file path", str, _new_file)
_OUTPUT_FILE = _flag_type("a file path", str, _output_file)
_FOLDER = _flag_type("a folder path", str, _folder)
_SERVING_FOLDER = _flag_type("a folder path", str, _serving_folder)
_RUN_FOLDER = _flag_type("a run folder", str, _run_folder)
_EMPTY_FOLDER = _flag_type("a folder path", str, _empty_folder)
_FOLDS = _flag_type(
    "an integer",
    int,
    lambda value: None if value >= 2 else f"must be at least 2. Received: {value}",
)


def _template(value):
    if "{label}" not in value:
        example = "'a photo of a {label}'"
        return f"must hold '{{label}}', e.g. {example}. Received: {value!r}"
    return None


_TEMPLATE = _flag_type("a prompt template", str, _template)


def _add_train_arguments(parser):
    from mmzoo.training.config import STRATEGIES

    add = parser.add_argument
    keep = {"default": argparse.SUPPRESS}

    def flag(name, key=None, convert=str, **kwargs):
        key = key or name[2:].replace("-", "_")
        add(name, type=_config_flag(key, convert), **keep, **kwargs)

    add("--config", type=_FILE, help="a YAML file of the same keys (flags override it)")
    flag("--train", metavar="M", help="training manifest")
    flag("--val", metavar="M", help="validation manifest")
    flag("--test", metavar="M", help="test manifest")
    flag("--out", metavar="RUN_DIR", help="the run folder to write")
    flag("--image-tower", help=_names(registry.list_image_towers()))
    flag("--text-tower", help=_names(registry.list_text_towers()))
    flag("--fusion", help=_names(registry.list_fusions()))
    add("--task", choices=registry.list_tasks(), **keep)
    flag("--loss", help=f"task contrastive: {_names(registry.list_losses())}")
    flag(
        "--unimodal-heads",
        convert=float,
        metavar="W",
        help="weight of per-tower heads' losses (0: none)",
    )
    add(
        "--balance",
        choices=("none", "ogm", "ogm_ge"),
        help="gradient modulation of the dominant modality (OGM-GE)",
        **keep,
    )
    flag("--balance-alpha", convert=float, metavar="F", help="OGM's alpha")
    add(
        "--baselines",
        action="store_true",
        help="also train image_only and text_only; compare in baselines.md",
        **keep,
    )
    flag("--image-size", convert=int, metavar="N")
    flag("--max-tokens", convert=int, metavar="N")
    flag("--vocab-size", convert=int, metavar="N")
    flag("--image-weights", metavar="none|imagenet|PATH")
    add("--freeze-image-tower", action="store_true", **keep)
    flag("--text-preset", metavar="DIR", help="keras-hub preset (bert tower)")
    flag("--epochs", convert=int, metavar="N")
    flag("--batch-size", convert=int, metavar="N")
    flag("--lr", convert=float, metavar="F", help="learning rate")
    add("--lr-schedule", choices=("constant", "cosine"), **keep)
    add("--mixed-precision", action="store_true", help="mixed_float16", **keep)
    add("--xla", action="store_true", help="compile steps with XLA", **keep)
    add("--strategy", choices=STRATEGIES, **keep)
    flag("--seed", convert=int, metavar="N")
    add("--resize", choices=("stretch", "pad"), **keep)
    add("--augment", action="store_true", **keep)
    flag("--cache", metavar="memory|none|PATH")
    flag("--patience", convert=int, metavar="N", help="early stopping")
    flag("--max-bad-fraction", convert=float, metavar="F")
    add(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out",
    )


def _benchmark(argv):
    """`mmzoo benchmark ...`: hands its arguments to `benchmarks.suite`."""
    # The suite lives in the repository's benchmarks/ folder, beside the
    # package (an editable install or a checkout), not in the wheel.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isfile(os.path.join(root, "benchmarks", "suite.py")):
        print(
            "error: `mmzoo benchmark` runs from a source checkout (`pip install "
            f"-e .`): there is no benchmarks/suite.py beside {root}/mmzoo.",
            file=sys.stderr,
        )
        return 2
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks import suite

    return suite.main(argv)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line on stderr, exit status 2.

    (argparse prints the whole usage first; the line names the flag and
    where `--help` is.)
    """

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser():
    parser = _Parser(
        prog="mmzoo",
        description="mmzoo: a Keras 3 model zoo for image + text recognition.",
    )
    parser.add_argument("--version", action="version", version=f"mmzoo {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for add_command in (
        _add_list_command,
        _add_data_commands,
        _add_train_command,
        _add_ensemble_command,
        _add_evaluate_command,
        _add_predict_command,
        _add_caption_command,
        _add_export_command,
        _add_retrieval_commands,
        _add_demo_command,
    ):
        add_command(commands)
    # Parsed by benchmarks/suite.py itself (see `main`); listed here for
    # `mmzoo --help`.
    commands.add_parser(
        "benchmark",
        add_help=False,
        help="throughput, fusion overhead, pipeline, serving and TFLite latency "
        "(mmzoo benchmark --help)",
    )
    return parser


def _add_list_command(commands):
    listing = commands.add_parser(
        "list", help="list presets, towers, fusions, tasks and losses"
    )
    listing.add_argument(
        "what",
        nargs="?",
        choices=("models", "image-towers", "text-towers", "fusions", "tasks", "losses"),
        help="one section only (default: all)",
    )
    listing.add_argument(
        "--pattern", help="only names matching this glob, e.g. '*gated*'"
    )
    listing.set_defaults(run=_list)


def _add_data_commands(commands):
    # These modules import no TensorFlow: `mmzoo list` stays quick.
    from mmzoo.data.manifest import DEFAULT_MAX_BAD_FRACTION
    from mmzoo.data.manifest import DEFAULT_MAX_PIXELS

    data = commands.add_parser("data", help="check and convert manifests")
    data_commands = data.add_subparsers(dest="data_command", metavar="COMMAND")
    data_commands.required = True
    check = data_commands.add_parser(
        "check",
        help="list a manifest's bad rows with line numbers and reasons",
        description="Exit status: 0 when every row is good, 1 when any row is "
        "bad, 2 when the manifest cannot be read.",
    )
    check.add_argument("manifest", help="a .csv, .jsonl, .tfrecord or shard folder")
    check.add_argument(
        "--labels", help="labels.txt of a training run: report labels it lacks"
    )
    check.add_argument(
        "--multilabel", action="store_true", help="labels are |-separated sets"
    )
    check.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse larger images (default {DEFAULT_MAX_PIXELS:,})",
    )
    check.add_argument(
        "--headers-only",
        action="store_true",
        help="read image headers and trailers without decoding (faster)",
    )
    check.add_argument(
        "--strict",
        action="store_true",
        help="also refuse JPEGs whose compressed data libjpeg finds corrupt "
        "(they decode to garbage pixels with only a warning)",
    )
    check.set_defaults(run=_data_check)

    convert = data_commands.add_parser(
        "to-tfrecord", help="write a manifest's good rows to TFRecord shards"
    )
    convert.add_argument("manifest")
    convert.add_argument("out_dir")
    convert.add_argument("--shards", type=int, help="default: one per 10,000 rows")
    convert.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    convert.add_argument(
        "--max-bad-fraction",
        type=float,
        default=DEFAULT_MAX_BAD_FRACTION,
        help="fail when more rows than this are bad (default 0.01)",
    )
    convert.set_defaults(run=_data_to_tfrecord)

    vqa = data_commands.add_parser(
        "easy-vqa", help="write the built-in easy-VQA manifests and print them"
    )
    vqa.add_argument("--out", help="folder (default ~/.cache/mmzoo/easy_vqa)")
    vqa.set_defaults(run=_data_easy_vqa)


def _add_train_command(commands):
    training = commands.add_parser(
        "train",
        help="train a model on a manifest and write a run folder",
        description="Train a model; writes model.keras, best.keras, "
        "labels.txt, tokenizer/, config.yaml, history.csv, metrics.json, "
        "plots and TensorBoard logs to --out. Exit status: 0 when the run is "
        "written, 1 when training diverged (the loss became NaN or infinite), "
        "2 for a usage mistake or an input that cannot be used.",
    )
    _add_train_arguments(training)
    training.set_defaults(run=_train)


def _add_ensemble_command(commands):
    from mmzoo.ensembles import METHODS

    combining = commands.add_parser(
        "ensemble",
        help="combine trained runs into one ensemble run folder",
        description="Combine runs of one task with the same labels (any towers, "
        "fusions, image sizes and vocabularies) by average, vote, weights fitted "
        "on --val (log-loss) or stacking (a logistic regression). The fitted "
        "methods' validation figures are out of fold. Writes a run folder that "
        "evaluate, predict and export take, with ensemble.json and report.md.",
    )
    combining.add_argument(
        "runs", nargs="+", type=_RUN_FOLDER, metavar="RUN_DIR", help="2 or more runs"
    )
    combining.add_argument("--method", required=True, choices=METHODS)
    combining.add_argument(
        "--val", type=_PATH, required=True, metavar="M", help="validation manifest"
    )
    combining.add_argument("--test", type=_PATH, metavar="M", help="test manifest")
    combining.add_argument(
        "--out", type=_EMPTY_FOLDER, required=True, metavar="DIR", help="a new folder"
    )
    combining.add_argument(
        "--folds",
        type=_FOLDS,
        default=5,
        help="cross-validation folds of weighted and stacking (default 5)",
    )
    combining.add_argument(
        "--batch-size", type=_config_flag("batch_size", int), default=64
    )
    combining.add_argument("--seed", type=_config_flag("seed", int), default=0)
    combining.set_defaults(run=_ensemble)


def _add_evaluate_command(commands):
    evaluation = commands.add_parser(
        "evaluate", help="metrics of a trained model on a manifest"
    )
    evaluation.add_argument(
        "model", type=_PATH, help="a run folder or a .keras file in one"
    )
    evaluation.add_argument("--data", type=_PATH, required=True, metavar="M")
    evaluation.add_argument(
        "--out", type=_NEW_FILE, help="metrics JSON (default: in the run folder)"
    )
    evaluation.add_argument(
        "--batch-size", type=_config_flag("batch_size", int), default=64
    )
    evaluation.set_defaults(run=_evaluate)


def _add_predict_command(commands):
    prediction = commands.add_parser(
        "predict", help="top-k labels for one image and one text"
    )
    prediction.add_argument(
        "model", type=_PATH, help="a run folder or a .keras file in one"
    )
    prediction.add_argument("--image", type=_FILE, required=True, help="an image file")
    prediction.add_argument("--text", required=True)
    prediction.add_argument("--top-k", type=_INTEGER, default=5)
    prediction.set_defaults(run=_predict)


def _add_caption_command(commands):
    caption = commands.add_parser(
        "caption", help="captions of image files by a captioning run"
    )
    caption.add_argument("model", type=_PATH, help="a captioning run folder")
    caption.add_argument(
        "--image", type=_FILE, required=True, action="append", help="an image file"
    )
    caption.add_argument(
        "--beam", type=_INTEGER, default=1, help="beam width (1: greedy)"
    )
    caption.set_defaults(run=_caption)


def _caption(args):
    from mmzoo.captioning.inference import caption_files
    from mmzoo.runs import load_run

    run = load_run(args.model)
    if run.task.name != "captioning":
        raise ValueError(
            f"{args.model} is a {run.task.name} run: `mmzoo caption` needs a "
            "run trained with --task captioning."
        )
    for result in caption_files(run, args.image, beam_width=args.beam):
        print(result["image"])
        for hypothesis in result["captions"]:
            print(f"  {hypothesis['score']:9.4f}  {hypothesis['caption']}")
    return 0


def _add_export_command(commands):
    from mmzoo.export.tflite import QUANTIZATIONS

    export = commands.add_parser(
        "export",
        help="export a trained model for TF Serving and/or TFLite",
        description="Write a SavedModel under TF Serving's model base path "
        "(savedmodels/NAME/VERSION, savedmodels/models.config updated) and/or "
        "a TFLite file with its labels, vocabulary and pure-Python tokenizer. "
        "A contrastive run (a dual encoder) gets the signatures embed_image and "
        "embed_text (and, with --index, search_by_text and search_by_image), and "
        "one TFLite file per encoder.",
    )
    export.add_argument(
        "model", type=_PATH, help="a run folder or a .keras file in one"
    )
    export.add_argument(
        "--saved-model",
        type=_SERVING_FOLDER,
        metavar="DIR",
        help="e.g. savedmodels/easy_vqa",
    )
    export.add_argument("--version", type=_INTEGER, help="default: the next free one")
    export.add_argument(
        "--index",
        type=_PATH,
        metavar="INDEX_DIR",
        help="contrastive runs: a mmzoo.retrieval index of the model's embeddings, "
        "for the SavedModel's search_by_text / search_by_image signatures",
    )
    export.add_argument(
        "--tflite",
        type=_OUTPUT_FILE,
        metavar="FILE",
        help="e.g. app/model.tflite; a contrastive run writes app/model.image.tflite "
        "and app/model.text.tflite",
    )
    export.add_argument(
        "--quantize",
        default="none",
        choices=QUANTIZATIONS,
        help="TFLite quantisation (int8 calibrates on the training manifest)",
    )
    export.add_argument(
        "--representative",
        type=_PATH,
        metavar="M",
        help="int8 calibration manifest (default: the run's training data)",
    )
    export.set_defaults(run=_export)


def _add_retrieval_commands(commands):
    from mmzoo.retrieval import BACKENDS
    from mmzoo.retrieval import DTYPES

    run_help = "a contrastive run folder (mmzoo train --task contrastive)"
    indexing = commands.add_parser(
        "index",
        help="embed a manifest's images or texts into a search index",
        description="Embed the images (each once) or the texts of a manifest "
        "with a contrastive run and write an index folder for `mmzoo search`.",
    )
    indexing.add_argument("model", type=_PATH, help=run_help)
    indexing.add_argument("--data", type=_PATH, required=True, metavar="M")
    indexing.add_argument("--out", type=_FOLDER, required=True, metavar="INDEX")
    indexing.add_argument(
        "--modality",
        choices=("image", "text", "both"),
        default="image",
        help="both: INDEX/image and INDEX/text",
    )
    indexing.add_argument("--dtype", choices=DTYPES, default="float32")
    indexing.add_argument(
        "--batch-size", type=_config_flag("batch_size", int), default=64
    )
    indexing.add_argument(
        "--append", action="store_true", help="add to the index in --out"
    )
    indexing.set_defaults(run=_index)

    search = commands.add_parser(
        "search", help="the items of an index nearest a text or an image"
    )
    search.add_argument("index", type=_PATH, help="an index folder (mmzoo index)")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text")
    query.add_argument("--image", type=_FILE, help="an image file")
    search.add_argument("-k", type=_INTEGER, default=10, help="results (default 10)")
    search.add_argument(
        "--model", type=_PATH, help="the run (default: the one that built the index)"
    )
    search.add_argument("--backend", choices=BACKENDS, default="exact")
    search.set_defaults(run=_search)

    zero_shot = commands.add_parser(
        "zero-shot",
        help="classify a labelled manifest's images by label prompts, untrained",
    )
    zero_shot.add_argument("model", type=_PATH, help=run_help)
    zero_shot.add_argument("--data", type=_PATH, required=True, metavar="M")
    zero_shot.add_argument(
        "--template",
        action="append",
        type=_TEMPLATE,
        help="a prompt holding {label}; repeat to average several "
        "(default: 'a photo of a {label}', 'a {label}', '{label}')",
    )
    zero_shot.add_argument(
        "--labels", type=_FILE, help="class names, one per line (default: the data's)"
    )
    zero_shot.add_argument(
        "--out", type=_NEW_FILE, help="metrics JSON (default: in the run folder)"
    )
    zero_shot.add_argument(
        "--batch-size", type=_config_flag("batch_size", int), default=64
    )
    zero_shot.set_defaults(run=_zero_shot)


def _add_demo_command(commands):
    demo = commands.add_parser(
        "demo",
        help="the main job: fusions vs unimodal baselines on easy-VQA",
    )
    demo.add_argument(
        "--out",
        type=_FOLDER,
        help="default runs/demo (runs/demo_retrieval with --retrieval)",
    )
    demo.add_argument(
        "--retrieval",
        action="store_true",
        help="a dual encoder on easy-VQA captions instead: Recall@K, zero-shot, "
        "search, export with an index",
    )
    demo.add_argument("--seed", type=_config_flag("seed", int), default=0)
    demo.add_argument(
        "--quick", action="store_true", help="a tiny run that checks the wiring"
    )
    demo.add_argument(
        "--savedmodels",
        type=_FOLDER,
        default="savedmodels",
        help="TF Serving model base folder for the export (default savedmodels)",
    )
    demo.add_argument(
        "--no-export", action="store_true", help="skip the SavedModel/TFLite export"
    )
    demo.set_defaults(run=_demo)


def _failures():
    """What a user's mistake or an unusable file raises: `error: ...`, not a
    traceback. mmzoo raises `ValueError`s (ConfigError, ManifestError,
    DataError, ModelFileError, ...) for values and files it cannot use."""
    from mmzoo.training.trainer import RunError

    return (
        ValueError,
        RunError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    )


def main(argv=None):
    """Run `mmzoo ARGS`; returns the exit status.

    0: done. 2: a usage mistake, or an input (manifest, model, run folder)
    that cannot be used, in one line `error: ...` on stderr. `mmzoo train`
    exits 1 when training diverges (a failed run, not a mistake in the
    command) and `mmzoo data check` when a row is bad. Set MMZOO_TRACEBACK=1
    to see the traceback behind an `error:` line.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["benchmark"]:
        return _benchmark(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if os.environ.get("MMZOO_TRACEBACK") or not isinstance(error, _failures()):
            raise
        from mmzoo.training.trainer import TrainingDiverged

        print(f"error: {error}", file=sys.stderr)
        return 1 if isinstance(error, TrainingDiverged) else 2


if __name__ == "__main__":
    sys.exit(main())
