"""`train`: a manifest in, a run folder out (see `mmzoo.runs`)."""

import csv
import json
import logging
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import mmzoo
from mmzoo import registry
from mmzoo import runs
from mmzoo.data.dataset import make_dataset
from mmzoo.data.manifest import LabelVocabulary
from mmzoo.data.manifest import row_problems
from mmzoo.data.sources import read_manifest
from mmzoo.tasks import get_task
from mmzoo.training import config as run_config
from mmzoo.training.evaluation import evaluate_dataset

logger = logging.getLogger("mmzoo.training")


class RunError(RuntimeError):
    """A run folder in a state the request does not fit."""


def train(config=None, resume=False, verbose="auto", callbacks=(), **overrides):
    """Train a model on a manifest and write a run folder.

    Args:
        config: a dict or a YAML path with `mmzoo.training.config` keys.
        resume: continue the interrupted run in `out` from its last
            finished epoch (Keras BackupAndRestore). The shuffle order and
            augmentation depend on `(seed, epoch)`, so the resumed run ends
            with the weights an uninterrupted run would have.
        verbose: Keras `fit` verbosity; "auto" shows a progress bar on a
            terminal and one line per epoch otherwise.
        callbacks: extra Keras callbacks.
        **overrides: config keys, e.g. `epochs=3`.

    Returns:
        A dict: `run_dir`, `metrics` (as in metrics.json), `parameters`,
        `train_seconds`, `epochs`.

    Example:

    >>> result = train(train="train.csv", val="val.csv", fusion="gated",
    ...                epochs=5, out="runs/gated")
    >>> result["metrics"]["val"]["accuracy"]
    0.97
    """
    if resume:
        config = _resumed_config(config, overrides)
    else:
        config = run_config.resolve(config, overrides)
    if config["strategy"] == "multiworker" and not _is_chief():
        # Every worker runs this function; only the chief writes the run.
        config = {**config, "out": tempfile.mkdtemp(prefix="mmzoo-worker-")}
    out = config["out"]
    _prepare_folder(out, resume)
    if not resume:
        run_config.save(config, os.path.join(out, runs.CONFIG))

    policy = keras.config.dtype_policy()
    if config["mixed_precision"]:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        return _train(config, resume, verbose, list(callbacks))
    finally:
        keras.config.set_dtype_policy(policy)


def _is_chief():
    """True unless TF_CONFIG names this process a non-chief worker."""
    try:
        task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except ValueError:
        return True
    kind, index = task.get("type"), task.get("index", 0)
    if kind == "chief" or kind is None:
        return True
    return kind == "worker" and index == 0 and "chief" not in cluster


def _resumed_config(config, overrides):
    overrides = run_config.normalize(overrides)
    folder = overrides.get("out") or (
        config.get("out") if isinstance(config, dict) else None
    )
    if folder is None and config is not None and not isinstance(config, dict):
        folder = run_config.load_yaml(config).get("out")
    if folder is None:
        raise RunError("`resume` needs `out`, the folder of the run to continue.")
    saved = os.path.join(folder, runs.CONFIG)
    if not os.path.isfile(saved):
        raise RunError(f"Nothing to resume in {folder!r}: it has no {runs.CONFIG}.")
    # The saved configuration is the run; only `epochs` may change.
    given = run_config.normalize(
        {**(config if isinstance(config, dict) else {}), **overrides}
    )
    changed = {key: value for key, value in given.items() if key != "epochs"}
    stored = run_config.load_yaml(saved)
    conflicts = {
        key: (stored.get(key), value)
        for key, value in changed.items()
        if key in stored and stored[key] != value and key != "out"
    }
    if conflicts:
        raise RunError(
            f"Resuming {folder!r} with different settings: "
            + ", ".join(
                f"{key}: saved {saved!r}, now {now!r}"
                for key, (saved, now) in conflicts.items()
            )
        )
    if "epochs" in overrides:
        stored["epochs"] = overrides["epochs"]
    return run_config.resolve(stored)


def _prepare_folder(out, resume):
    backup = os.path.join(out, runs.BACKUP)
    finished = os.path.isfile(os.path.join(out, runs.MODEL))
    if resume:
        if finished and not os.path.isdir(backup):
            raise RunError(f"The run in {out!r} already finished; nothing to resume.")
        return
    if os.path.isdir(backup):
        raise RunError(
            f"{out!r} holds an interrupted run: pass --resume to continue it, "
            "or choose another --out."
        )
    if os.path.isdir(out) and os.listdir(out):
        raise RunError(
            f"{out!r} is not empty: choose a new --out for a new run "
            "(or --resume an interrupted one)."
        )
    os.makedirs(out, exist_ok=True)


def _fit_tokenizer(config, resume):
    from mmzoo.data import tokenizers

    folder = os.path.join(config["out"], runs.TOKENIZER)
    if resume and os.path.isdir(folder):
        return tokenizers.load_tokenizer(folder)
    kind = registry.text_tower(config["text_tower"]).tokenizer
    if kind is None:
        # The tower takes raw strings.
        return None
    if kind == "wordpiece":
        if not config["text_preset"]:
            raise run_config.ConfigError(
                f"text_tower={config['text_tower']!r} needs `text_preset`."
            )
        tokenizer = tokenizers.WordPieceTokenizer.from_preset(
            config["text_preset"], max_tokens=config["max_tokens"]
        )
    else:
        manifest = read_manifest(config["train"], config["columns"])
        # Texts of rows that will be used (a bad image is found later; its
        # text still counts, which changes nothing that matters).
        texts = [
            manifest.texts[i]
            for i in range(len(manifest))
            if not row_problems(manifest, i)
        ]
        tokenizer = tokenizers.WordTokenizer.fit(
            texts, max_vocab_size=config["vocab_size"], max_tokens=config["max_tokens"]
        )
    tokenizer.save(folder)
    return tokenizer


class _SetEpoch(keras.callbacks.Callback):
    """Tells the input pipeline which epoch starts (its order depends on it)."""

    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def on_epoch_begin(self, epoch, logs=None):
        self.variable.assign(epoch)


class _RandomState(keras.callbacks.Callback):
    """Backs up the random state of dropout layers with BackupAndRestore's.

    BackupAndRestore saves the weights and the optimizer, but not the
    layers' seed generators (`model.variables` minus `model.weights`), so a
    resumed run would draw other dropout masks than an uninterrupted one.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path

    def _state(self):
        weights = {id(variable) for variable in self.model.weights}
        return [v for v in self.model.variables if id(v) not in weights]

    def on_train_begin(self, logs=None):
        if os.path.isfile(self.path):
            with np.load(self.path) as saved:
                for index, variable in enumerate(self._state()):
                    variable.assign(saved[f"state_{index}"])

    def on_epoch_end(self, epoch, logs=None):
        states = {f"state_{i}": np.asarray(v) for i, v in enumerate(self._state())}
        np.savez(self.path, **states)


def _data_arguments(config, tokenizer):
    return dict(
        tokenizer=tokenizer,
        image_size=config["image_size"],
        batch_size=config["batch_size"],
        task=config["task"],
        resize=config["resize"],
        max_bad_fraction=config["max_bad_fraction"],
        columns=config["columns"],
        # The CLI and config files say "none" for no cache.
        cache=None if config["cache"] in ("none", "None") else config["cache"],
        progress=sys.stdout.isatty(),
    )


def _train(config, resume, verbose, callbacks):
    from mmzoo.training.distributed import make_strategy

    out = config["out"]
    keras.utils.set_random_seed(config["seed"])
    strategy = make_strategy(config["strategy"])
    tokenizer = _fit_tokenizer(config, resume)
    labels = None
    if resume and os.path.isfile(os.path.join(out, runs.LABELS)):
        labels = LabelVocabulary.load(os.path.join(out, runs.LABELS))

    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_epoch")
    arguments = _data_arguments(config, tokenizer)
    logger.info("Reading %s", config["train"])
    train_data, report, labels = make_dataset(
        config["train"],
        training=True,
        labels=labels,
        augment=config["augment"],
        seed=config["seed"],
        epoch=epoch,
        return_report=True,
        **arguments,
    )
    if labels is not None:
        labels.save(os.path.join(out, runs.LABELS))
    evaluation = {}
    for split in ("val", "test"):
        if config[split]:
            evaluation[split] = make_dataset(
                config[split], training=False, labels=labels, **arguments
            )

    task = get_task(config["task"])
    with strategy.scope():
        num_classes = task.num_classes(labels, train_data.element_spec[1].shape)
        model = _build(config, tokenizer, num_classes)
        arguments = task.compile_arguments(config["lr"])
        if config["lr_schedule"] == "cosine":
            steps = int(train_data.cardinality()) * config["epochs"]
            arguments["optimizer"] = keras.optimizers.Adam(
                keras.optimizers.schedules.CosineDecay(config["lr"], steps)
            )
        model.compile(**arguments, jit_compile=bool(config["xla"]))
    parameters = model.count_params()
    logger.info("Model %s: %s parameters", model.name, f"{parameters:,}")

    start = time.perf_counter()
    if config["strategy"] == "multiworker":
        _fit_multiworker(config, model, strategy, tokenizer, labels, epoch)
    else:
        history_callbacks = _callbacks(config, resume, epoch, "val" in evaluation)
        model.fit(
            train_data,
            validation_data=evaluation.get("val"),
            epochs=config["epochs"],
            callbacks=history_callbacks + callbacks,
            verbose=_verbosity(verbose),
        )
    seconds = time.perf_counter() - start
    model.save(os.path.join(out, runs.MODEL))
    shutil.rmtree(os.path.join(out, runs.BACKUP), ignore_errors=True)

    best_path = os.path.join(out, runs.BEST)
    best = mmzoo.load_model(best_path) if os.path.isfile(best_path) else model
    metrics = {"parameters": parameters, "train_seconds": round(seconds, 2)}
    for split, dataset in evaluation.items():
        metrics[split] = evaluate_dataset(best, dataset, labels, task)
    with open(os.path.join(out, runs.METRICS), "w", encoding="utf-8") as file:
        json.dump(metrics, file, indent=2)
    _plots(out, metrics, labels)
    return {
        "run_dir": out,
        "metrics": metrics,
        "parameters": parameters,
        "train_seconds": seconds,
        "epochs": config["epochs"],
        "skipped_rows": report.num_bad,
    }


def _build(config, tokenizer, num_classes):
    arguments = dict(
        image_tower=config["image_tower"],
        text_tower=config["text_tower"],
        fusion=config["fusion"],
        task=config["task"],
        num_classes=num_classes,
        image_size=config["image_size"],
        max_tokens=config["max_tokens"],
        image_weights=config["image_weights"],
        freeze_image_tower=config["freeze_image_tower"],
        seed=config["seed"],
        compile=False,
    )
    if registry.text_tower(config["text_tower"]).tokenizer == "word":
        # The tower's embedding has a row per id the fitted tokenizer makes.
        arguments["vocab_size"] = tokenizer.vocab_size
    if config["text_preset"]:
        arguments["text_preset"] = config["text_preset"]
    if config["hub_handle"]:
        arguments["hub_handle"] = config["hub_handle"]
    arguments.update(config["model"])
    return mmzoo.build_model(**arguments)


def _callbacks(config, resume, epoch, has_validation):
    out = config["out"]
    monitor = "val_loss" if has_validation else "loss"
    best_so_far = _best_in_history(os.path.join(out, runs.HISTORY), monitor, resume)
    callbacks = [
        _SetEpoch(epoch),
        keras.callbacks.BackupAndRestore(os.path.join(out, runs.BACKUP)),
        _RandomState(os.path.join(out, runs.BACKUP, "random_state.npz")),
        keras.callbacks.CSVLogger(os.path.join(out, runs.HISTORY), append=resume),
        keras.callbacks.ModelCheckpoint(
            os.path.join(out, runs.BEST),
            monitor=monitor,
            save_best_only=True,
            initial_value_threshold=best_so_far,
        ),
        keras.callbacks.TensorBoard(os.path.join(out, "logs")),
    ]
    if config["patience"]:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor=monitor, patience=config["patience"])
        )
    return callbacks


def _best_in_history(path, monitor, resume):
    """The best value logged before an interruption (for ModelCheckpoint).

    Also drops history rows of epochs the backup does not hold (an epoch
    logged just before the kill is trained again and logged again).
    """
    if not resume or not os.path.isfile(path):
        return None
    backup = os.path.join(os.path.dirname(path), runs.BACKUP)
    last_epoch = _backup_epoch(backup)
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if last_epoch is not None:
        rows = [row for row in rows if int(row["epoch"]) <= last_epoch]
        with open(path, "w", newline="") as file:
            if rows:
                writer = csv.DictWriter(file, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    values = [float(row[monitor]) for row in rows if row.get(monitor)]
    return min(values) if values else None


def _backup_epoch(backup):
    """The last finished epoch in a BackupAndRestore folder, if it says."""
    path = os.path.join(backup, "training_metadata.json")
    try:
        with open(path) as file:
            return int(json.load(file)["epoch"])
    except (OSError, ValueError, KeyError):
        return None


def _verbosity(verbose):
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return verbose


def _fit_multiworker(config, model, strategy, tokenizer, labels, epoch):
    from mmzoo.training.distributed import custom_fit

    arguments = _data_arguments(config, tokenizer)

    def dataset_fn(input_context):
        return make_dataset(
            config["train"],
            training=True,
            labels=labels,
            seed=config["seed"],
            augment=config["augment"],
            epoch=epoch,
            input_context=input_context,
            drop_remainder=True,
            **arguments,
        )

    def on_epoch_end(index, logs):
        epoch.assign(index + 1)

    history = custom_fit(
        model,
        strategy,
        dataset_fn,
        epochs=config["epochs"],
        global_batch_size=config["batch_size"],
        on_epoch_end=on_epoch_end,
    )
    path = os.path.join(config["out"], runs.HISTORY)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["epoch", *history])
        for index in range(len(next(iter(history.values()), []))):
            writer.writerow([index, *(values[index] for values in history.values())])


def _plots(out, metrics, labels):
    from mmzoo.training.plots import plot_confusion_matrix
    from mmzoo.training.plots import plot_history

    history = os.path.join(out, runs.HISTORY)
    if os.path.isfile(history):
        plot_history(history, os.path.join(out, "curves.png"))
    for split in ("test", "val"):
        matrix = metrics.get(split, {}).get("confusion_matrix")
        if matrix is not None:
            plot_confusion_matrix(
                matrix, labels.names, os.path.join(out, "confusion_matrix.png")
            )
            break
