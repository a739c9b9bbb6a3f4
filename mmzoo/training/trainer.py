"""`train`: a manifest in, a run folder out (see `mmzoo.runs`)."""

import csv
import json
import logging
import math
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
from mmzoo.data.manifest import row_problems
from mmzoo.data.sources import read_manifest
from mmzoo.tasks import task_of
from mmzoo.training import backup as run_backup
from mmzoo.training import config as run_config
from mmzoo.training.evaluation import evaluate_dataset

logger = logging.getLogger("mmzoo.training")


class RunError(RuntimeError):
    """A run folder in a state the request does not fit."""


class TrainingDiverged(RunError):
    """The loss became NaN or infinite: the run stopped without a model."""


def train(config=None, resume=False, verbose="auto", callbacks=(), **overrides):
    """Train a model on a manifest and write a run folder.

    Args:
        config: a dict or a YAML path with `mmzoo.training.config` keys.
        resume: continue the interrupted run in `out` (the folder given,
            wherever it was first trained) from its last finished epoch. The
            shuffle order and augmentation depend on `(seed, epoch)`, so the
            resumed run ends with the weights an uninterrupted run would
            have. The backup holds the last two epochs: if the newest is
            damaged, the one before is used.
        verbose: Keras `fit` verbosity; "auto" shows a progress bar on a
            terminal and one line per epoch otherwise.
        callbacks: extra Keras callbacks.
        **overrides: config keys, e.g. `epochs=3`.

    Returns:
        A dict: `run_dir`, `metrics` (as in metrics.json), `parameters`,
        `train_seconds`, `epochs`.

    Raises:
        ConfigError: a configuration value that cannot work (nothing is
            written).
        RunError: `out` does not fit the request (not empty, nothing to
            resume, an unusable backup).
        TrainingDiverged: the loss became NaN or infinite. No model.keras
            or best.keras is left, nor a backup (resuming would diverge
            again); history.csv and logs/ stay for a look.

    A run that fails before its first epoch ends leaves `out` as it was
    (removed if this call created it), so the corrected command can reuse it.

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
    if resume and config["baselines"] and _finished(out):
        # Interrupted while training the baselines: the fused run is done.
        result = {"run_dir": out, "metrics": _run_metrics(out)}
        result["baselines"] = _train_baselines(config, resume, verbose, callbacks)
        return result
    created = _prepare_folder(out, resume)
    progress = _Progress()
    policy = keras.config.dtype_policy()
    try:
        if not resume:
            run_config.save(config, os.path.join(out, runs.CONFIG))
        if config["mixed_precision"]:
            keras.config.set_dtype_policy("mixed_float16")
        result = _train(config, resume, verbose, list(callbacks), progress)
    except TrainingDiverged as error:
        kept = _discard_diverged(out, resume, created, progress)
        raise TrainingDiverged(f"{error} {kept}") from None
    except Exception:
        if not resume and not progress.epochs:
            _restore_folder(out, created)
        raise
    finally:
        keras.config.set_dtype_policy(policy)
    if config["baselines"]:
        result["baselines"] = _train_baselines(config, resume, verbose, callbacks)
    return result


# The unimodal runs `--baselines` trains beside the fused one.
BASELINES = ("image_only", "text_only")


def _train_baselines(config, resume, verbose, callbacks):
    """Train `BASELINES` with the fused run's configuration and budget, in
    OUT/baselines/, and write OUT/baselines.md and baselines.json.

    On `resume`, a baseline with its metrics written is kept, one with a
    backup resumed, and a missing one trained.

    Returns:
        The comparison (`compare_runs`).
    """
    out = config["out"]
    results = {"fused": _run_metrics(out)}
    for fusion in BASELINES:
        folder = os.path.join(out, "baselines", fusion)
        finished = os.path.isfile(os.path.join(folder, runs.METRICS))
        if not (resume and finished):
            logger.info("Baseline %s (same budget) in %s", fusion, folder)
            baseline = {
                **config,
                "fusion": fusion,
                "out": folder,
                "baselines": False,
                # The baselines are the plain unimodal models.
                "unimodal_heads": 0.0,
                "balance": "none",
            }
            again = resume and os.path.isdir(os.path.join(folder, runs.BACKUP))
            if again:
                train(resume=True, verbose=verbose, callbacks=callbacks, out=folder)
            else:
                train(baseline, verbose=verbose, callbacks=callbacks)
        results[fusion] = _run_metrics(folder)
    comparison = compare_runs(results, config)
    with open(os.path.join(out, "baselines.json"), "w", encoding="utf-8") as file:
        json.dump(comparison, file, indent=2)
    with open(os.path.join(out, "baselines.md"), "w", encoding="utf-8") as file:
        file.write(comparison["table"])
    return comparison


def _finished(folder):
    """A run folder whose training ended (metrics written, no backup)."""
    return os.path.isfile(os.path.join(folder, runs.METRICS)) and not os.path.isdir(
        os.path.join(folder, runs.BACKUP)
    )


def _run_metrics(folder):
    with open(os.path.join(folder, runs.METRICS), encoding="utf-8") as file:
        return json.load(file)


def compare_runs(results, config):
    """Fused against unimodal: the task's headline metric per split.

    Args:
        results: `{"fused": metrics, "image_only": metrics, ...}`, each a
            run's metrics.json.
        config: the fused run's configuration.

    Returns:
        `{"metric", "higher_is_better", "splits": {split: {run: value,
        "best_unimodal": name, "fusion_gain": fused - best unimodal (signed
        so that positive is better)}}, "table": markdown}`.
    """
    task = task_of(config)
    metric = task.headline
    sense = 1.0 if task.higher_is_better else -1.0
    splits = {}
    for split in ("val", "test"):
        values = {
            name: metrics[split][metric]
            for name, metrics in results.items()
            if metric in metrics.get(split, {})
        }
        if "fused" not in values or len(values) < 2:
            continue
        unimodal = {k: v for k, v in values.items() if k != "fused"}
        best = max(unimodal, key=lambda name: sense * unimodal[name])
        splits[split] = {
            **values,
            "best_unimodal": best,
            "fusion_gain": sense * (values["fused"] - unimodal[best]),
        }
    names = list(results)
    fused_name = f"fused ({config['fusion']})"
    header = ["split", *(fused_name if n == "fused" else n for n in names)]
    lines = [
        f"# Fusion against its unimodal baselines ({metric})",
        "",
        "| " + " | ".join([*header, "fused − best unimodal"]) + " |",
        "|" + "---|" * (len(header) + 1),
    ]
    for split, row in splits.items():
        cells = [f"{row[n]:.4f}" if n in row else "-" for n in names]
        lines.append(
            f"| {split} | " + " | ".join(cells) + f" | {row['fusion_gain']:+.4f} |"
        )
    lines.append("")
    return {
        "metric": metric,
        "higher_is_better": task.higher_is_better,
        "splits": splits,
        "table": "\n".join(lines),
    }


class _Progress(keras.callbacks.Callback):
    """Counts the epochs this call finished."""

    epochs = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1


def _restore_folder(out, created):
    """Undo a run that failed before its first epoch ended."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    # The folder was empty (`_prepare_folder` refuses any other).
    for name in os.listdir(out):
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)


def _discard_diverged(out, resume, created, progress):
    """Leave no model and no backup of a diverged run; say what is left."""
    if not resume and not progress.epochs:
        _restore_folder(out, created)
        return "Nothing was kept."
    shutil.rmtree(os.path.join(out, runs.BACKUP), ignore_errors=True)
    for name in (runs.BEST, runs.MODEL):
        if os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    return (
        f"{out!r} keeps history.csv and logs/ for a look; remove it or choose "
        "another --out for the next run."
    )


class _StopOnNaN(keras.callbacks.Callback):
    """Raises `TrainingDiverged` when a loss becomes NaN or infinite.

    Keras' TerminateOnNaN only stops `fit`, which then returns as if it had
    finished, and the run would save the diverged model.
    """

    def __init__(self, lr):
        super().__init__()
        self.lr = lr
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check("loss", (logs or {}).get("loss"), f", batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "val_loss"):
            self._check(key, (logs or {}).get(key), "")

    def _check(self, key, value, where):
        if value is None or math.isfinite(float(value)):
            return
        raise TrainingDiverged(
            f"Training diverged: the {key} became {float(value)} in epoch "
            f"{self.epoch + 1}{where}. Try a lower learning rate (lr={self.lr:g})."
        )


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
    # The folder given is the run, wherever it was trained first (a moved or
    # copied run folder resumes where it is now).
    stored["out"] = os.fspath(folder)
    return run_config.resolve(stored)


def _prepare_folder(out, resume):
    """Check `out` fits the request; returns whether this call created it."""
    backup = os.path.join(out, runs.BACKUP)
    finished = os.path.isfile(os.path.join(out, runs.MODEL))
    if resume:
        if finished and not os.path.isdir(backup):
            raise RunError(f"The run in {out!r} already finished; nothing to resume.")
        return False
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
    created = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    return created


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
        needs_label = task_of(config).needs_labels
        # Texts of rows that will be used (a bad image is found later; its
        # text still counts, which changes nothing that matters).
        texts = [
            manifest.texts[i]
            for i in range(len(manifest))
            if not row_problems(manifest, i, needs_label)
        ]
        tokenizer = task_of(config).fit_word_tokenizer(
            texts, config["vocab_size"], config["max_tokens"]
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


def _data_arguments(config, tokenizer):
    return dict(
        tokenizer=tokenizer,
        image_size=config["image_size"],
        batch_size=config["batch_size"],
        task=task_of(config),
        resize=config["resize"],
        max_bad_fraction=config["max_bad_fraction"],
        columns=config["columns"],
        # The CLI and config files say "none" for no cache.
        cache=None if config["cache"] in ("none", "None") else config["cache"],
        progress=sys.stdout.isatty(),
    )


def _train(config, resume, verbose, callbacks, progress):
    from mmzoo.training.distributed import make_strategy

    out = config["out"]
    keras.utils.set_random_seed(config["seed"])
    strategy = make_strategy(config["strategy"])
    tokenizer = _fit_tokenizer(config, resume)
    task = task_of(config)
    labels = task.load_labels(out) if resume else None

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
    task.save_labels(labels, out)
    evaluation = {}
    for split in ("val", "test"):
        if config[split]:
            evaluation[split] = make_dataset(
                config[split], training=False, labels=labels, **arguments
            )

    with strategy.scope():
        num_classes = task.num_classes(labels, train_data.element_spec[1])
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
        _fit_multiworker(config, model, strategy, tokenizer, labels, epoch, progress)
    else:
        history_callbacks = _callbacks(config, resume, epoch, "val" in evaluation)
        if "val" in evaluation:
            # First: the callbacks after it log what it adds.
            history_callbacks[:0] = task.epoch_callbacks(evaluation["val"])
        model.fit(
            train_data,
            validation_data=evaluation.get("val"),
            epochs=config["epochs"],
            callbacks=[*history_callbacks, progress, *callbacks],
            verbose=_verbosity(verbose),
            # The pipeline orders each epoch itself (`make_dataset`).
            shuffle=False,
        )
    seconds = time.perf_counter() - start
    best_path = os.path.join(out, runs.BEST)
    has_best = os.path.isfile(best_path)
    best = mmzoo.load_model(best_path) if has_best else model
    # The best epoch is usually the last: then there is one model to finish.
    best_is_final = best is model or _same_weights(best, model)
    # E.g. BatchNorm statistics over the whole training set (contrastive).
    finished = task.after_training(model, train_data)
    for done in finished:
        logger.info("Final model: %s", done)
    if best_is_final:
        best = model
        if finished and has_best:
            model.save(best_path)
    else:
        finished = task.after_training(best, train_data)
        for done in finished:
            logger.info("Best model: %s", done)
        if finished:
            best.save(best_path)
    model.save(os.path.join(out, runs.MODEL))
    shutil.rmtree(os.path.join(out, runs.BACKUP), ignore_errors=True)

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


def _same_weights(a, b):
    first, second = a.get_weights(), b.get_weights()
    return len(first) == len(second) and all(
        np.array_equal(x, y) for x, y in zip(first, second, strict=True)
    )


def _build(config, tokenizer, num_classes):
    task = task_of(config)
    arguments = dict(
        image_tower=config["image_tower"],
        text_tower=config["text_tower"],
        image_size=config["image_size"],
        max_tokens=config["max_tokens"],
        image_weights=config["image_weights"],
        freeze_image_tower=config["freeze_image_tower"],
        compile=False,
        **task.model_arguments(config, num_classes),
    )
    if registry.text_tower(config["text_tower"]).tokenizer == "word":
        # The tower's embedding has a row per id the fitted tokenizer makes.
        arguments["vocab_size"] = tokenizer.vocab_size
        arguments.update(task.tokenizer_arguments(tokenizer))
    if config["text_preset"]:
        arguments["text_preset"] = config["text_preset"]
    if config["hub_handle"]:
        arguments["hub_handle"] = config["hub_handle"]
    arguments.update(config["model"])
    return task.build(**arguments)


def _callbacks(config, resume, epoch, has_validation):
    out = config["out"]
    monitor = "val_loss" if has_validation else "loss"
    folder = os.path.join(out, runs.BACKUP)
    restore = _restore_point(folder) if resume else None
    history = os.path.join(out, runs.HISTORY)
    best_so_far = None
    if resume:
        best_so_far = _best_in_history(history, monitor, restore)
    callbacks = [
        _SetEpoch(epoch),
        keras.callbacks.CSVLogger(history, append=resume),
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
    # After the history row (for a look at a diverged epoch), before the
    # backup, which claims an epoch once the files above are written.
    callbacks.append(_StopOnNaN(config["lr"]))
    callbacks.append(run_backup.Backup(folder, restore))
    return callbacks


def _restore_point(folder):
    """The backup generation to resume from (None: from the first epoch)."""
    restore, damaged = run_backup.choose(folder)
    if restore is None and damaged:
        out = os.path.dirname(folder)
        raise RunError(
            f"Cannot resume {out!r}: {'; '.join(damaged)}, and no good backup "
            f"is left. Remove {out!r} (or choose another --out) and train again "
            "without --resume."
        )
    for problem in damaged:
        logger.warning(
            "%s; resuming from the backup of epoch %d instead.", problem, restore.epoch
        )
    return restore


def _best_in_history(path, monitor, restore):
    """The best value logged before an interruption (for ModelCheckpoint).

    Also drops the history rows of epochs the backup does not hold (an
    epoch logged just before the kill, or after a damaged backup, is
    trained again and logged again).
    """
    if not os.path.isfile(path):
        return None
    finished = restore.epoch if restore is not None else 0
    try:
        with open(path, newline="") as file:
            rows = [row for row in csv.DictReader(file) if int(row["epoch"]) < finished]
        values = [float(row[monitor]) for row in rows if row.get(monitor)]
    except (ValueError, KeyError, TypeError, csv.Error) as error:
        raise RunError(
            f"Cannot resume: {path} is damaged ({error}). Remove the rows after "
            "the last good one, or the file, and resume again."
        ) from None
    with open(path, "w", newline="") as file:
        if rows:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return min(values) if values else None


def _verbosity(verbose):
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return verbose


def _fit_multiworker(config, model, strategy, tokenizer, labels, epoch, progress):
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

    stop_on_nan = _StopOnNaN(config["lr"])

    def on_epoch_end(index, logs):
        stop_on_nan.epoch = index
        stop_on_nan.on_epoch_end(index, logs)
        progress.on_epoch_end(index, logs)
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
    # One model output's metrics, or one per head (`{"heads": {...}}`).
    for split in ("test", "val"):
        split_metrics = metrics.get(split, {})
        heads = split_metrics.get("heads", {"": split_metrics})
        plotted = False
        for head, head_metrics in heads.items():
            matrix = head_metrics.get("confusion_matrix")
            if matrix is not None:
                names = labels[head].names if head else labels.names
                suffix = f"_{head}" if head else ""
                plot_confusion_matrix(
                    matrix, names, os.path.join(out, f"confusion_matrix{suffix}.png")
                )
                plotted = True
        if plotted:
            break
