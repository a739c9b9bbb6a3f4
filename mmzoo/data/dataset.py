"""`make_dataset`: a manifest to a tf.data pipeline feeding an mmzoo model.

The pipeline is built in stages, one function each, in the order the data
flows through them:

1. `_check_arguments`: every argument, before anything is read;
2. `_checked_report`: `check_manifest`, then the run's policies for unknown
   labels and bad rows, so the pipeline never meets a bad row;
3. `_targets`: the task (`mmzoo.tasks`) turns the good rows' labels into
   targets;
4. the elements `(image, text, target)`, by where the images are (the
   manifest's reader says, `mmzoo.data.sources`): `_file_elements` decodes
   files in a shuffled order of positions, `_cached_elements` looks up
   images decoded once by the check, `_streamed_elements` decodes TFRecord
   records as they stream past a shuffle buffer;
5. `_augmented` (training only), `_batched` (with the cardinality Keras
   needs) and `_model_inputs` (the model's `image` and `tokens` inputs).
"""

import os

import numpy as np
import tensorflow as tf

from mmzoo.checks import check_choice
from mmzoo.data import images as image_lib
from mmzoo.data.check import DataError
from mmzoo.data.check import check_manifest
from mmzoo.data.manifest import DEFAULT_MAX_BAD_FRACTION
from mmzoo.data.manifest import DEFAULT_MAX_PIXELS
from mmzoo.data.manifest import Manifest
from mmzoo.data.sources import read_manifest
from mmzoo.data.tokenizers import load_tokenizer
from mmzoo.tasks import TargetError
from mmzoo.tasks import get_task

DEFAULT_AUGMENTATION = {"flip": True, "crop": 0.1, "brightness": 0.1, "contrast": 0.1}
UNKNOWN_LABELS = ("error", "skip", "unknown")
CACHES = (None, "memory")

# In-memory caching puts the decoded images in the tf.data graph as one
# constant, and a GraphDef cannot exceed 2 GB.
_MAX_MEMORY_CACHE_BYTES = 1_500_000_000


def make_dataset(
    source,
    tokenizer,
    image_size,
    batch_size=32,
    training=True,
    *,
    labels=None,
    task="multiclass",
    resize="stretch",
    augment=False,
    shuffle=None,
    shuffle_buffer=10_000,
    seed=None,
    cache=None,
    drop_remainder=False,
    num_parallel_calls=tf.data.AUTOTUNE,
    max_bad_fraction=DEFAULT_MAX_BAD_FRACTION,
    max_pixels=DEFAULT_MAX_PIXELS,
    unknown_labels="error",
    validate=True,
    strict=False,
    input_context=None,
    columns=None,
    epoch=None,
    progress=False,
    return_report=False,
):
    """A tf.data pipeline of `({"image", "tokens"}, label)` from a manifest.

    The manifest is checked first (`check_manifest`): bad rows (missing,
    truncated, undecodable or oversized images, empty or non-UTF-8 text,
    missing values, unknown labels) are skipped and counted in a log
    warning, and the call fails with `DataError` when more than
    `max_bad_fraction` of the rows are bad. The pipeline itself then never
    meets a bad row, so an epoch cannot crash halfway.

    Args:
        source: a manifest path (CSV, JSONL, a TFRecord shard or folder of
            shards) or a `Manifest`.
        tokenizer: a tokenizer from `mmzoo.data` (or a folder it was saved
            to); its output is the model's `tokens`. `None` yields the raw
            strings as `text`, for TF-Hub text towers.
        image_size: the model's image size (square).
        batch_size: examples per batch.
        training: shuffle (and augment, when `augment` is set); otherwise
            the order is the manifest's.
        labels: a `LabelVocabulary` or labels.txt path: the training labels
            when this is evaluation data. `None` builds the vocabulary from
            this manifest (training data). For a `MultiTask`, `{head:
            LabelVocabulary or None}` or the folder its `save_labels`
            wrote to.
        task: a task name or `mmzoo.tasks.Task`, which turns the labels
            into targets: `"multiclass"` (int labels), `"multilabel"`
            (`|`-separated labels, multi-hot targets), `"binary"` (two
            labels, the second in vocabulary order is 1) or `"regression"`
            (numbers, `|`-separated for several targets); a
            `mmzoo.tasks.MultiTask` reads each head's column (bad values
            in any are bad rows) and yields `{head: targets}`.
        resize: `"stretch"` or `"pad"` (keep the aspect ratio).
        augment: `False`, `True` (flip, 10% crop, brightness, contrast) or a
            dict of `augment_image` arguments. Only when `training`. Off by
            default: a flip changes "left" into "right" in a question.
        shuffle: default `training`.
        shuffle_buffer: for TFRecord sources and file caches (an in-memory
            list of rows is shuffled whole).
        seed: makes shuffling and augmentation repeatable.
        cache: `None`, `"memory"` (each unique image decoded once and kept,
            resized, as uint8), or a file path prefix (`Dataset.cache`).
        drop_remainder: drop the last partial batch.
        num_parallel_calls: decode parallelism (default AUTOTUNE).
        max_bad_fraction: the fraction of bad rows tolerated.
        max_pixels: images with more pixels are refused before decoding.
        unknown_labels: a label outside `labels`: `"error"` fails naming
            the labels and lines; `"skip"` counts the row as bad; `"unknown"`
            maps it to the vocabulary's `[UNK]` class.
        validate: decode every image once up front (set `False` to check
            headers only; corrupt pixel data would then fail mid-epoch).
        strict: also skip JPEGs whose compressed data libjpeg finds corrupt,
            which TensorFlow decodes to garbage pixels without failing
            (`check_manifest`'s `strict`).
        input_context: a `tf.distribute.InputContext` (see below).
        columns: column renaming, e.g. `{"text": "question"}`.
        epoch: a `tf.Variable` holding the epoch number, which a training
            loop sets as each epoch begins: the shuffle order and the
            augmentation are then a function of `(seed, epoch)`, so a run
            resumed at epoch k repeats an uninterrupted run exactly. (For
            CSV/JSONL sources without a file cache; TFRecord streams and
            file caches shuffle in a buffer seeded once per process.)
        progress: show a progress bar while the images are checked.
        return_report: also return the `DataReport` and the labels.

    Under `tf.distribute`, pass the dataset to
    `strategy.experimental_distribute_dataset` (it is sharded by element,
    never by file, so labels stay with their images), or build one per
    worker with `strategy.distribute_datasets_from_function` and pass its
    `input_context`: the pipeline then reads every
    `num_input_pipelines`-th row and `batch_size` is the global batch.

    Returns:
        The dataset, or `(dataset, report, labels)` with `return_report`.

    Example:

    >>> tokenizer = WordTokenizer.fit(read_manifest("train.csv").texts)
    >>> train = make_dataset("train.csv", tokenizer, image_size=64, seed=1)
    >>> model.fit(train, epochs=5)
    """
    task = get_task(task)
    _check_arguments(
        unknown_labels, resize, cache, image_size, batch_size, max_bad_fraction
    )
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    if isinstance(labels, (str, os.PathLike)):
        path, labels = labels, task.load_labels(labels)
        if labels is None:
            raise FileNotFoundError(f"Label vocabulary not found: {path!r}")
    augmentation = _augmentation(augment) if training else None
    shuffle = training if shuffle is None else shuffle
    if epoch is not None and seed is None:
        seed = int(np.random.default_rng().integers(2**31))

    if isinstance(source, Manifest):
        manifest = source
    else:
        manifest = read_manifest(source, columns, task.label_columns)
    memory_cache = cache == "memory"
    if memory_cache:
        _check_memory_cache(manifest, image_size)
    report = _checked_report(
        manifest,
        task,
        labels,
        unknown_labels,
        max_bad_fraction,
        max_pixels=max_pixels,
        decode=validate,
        keep_images=(image_size, resize) if memory_cache else None,
        progress=progress,
        strict=strict,
    )
    good = report.good

    if labels is None:
        labels = task.fit_labels(manifest, good)
    targets = _targets(task, manifest, good, labels, report)
    texts = tf.constant([manifest.texts[i].encode("utf-8") for i in good], tf.string)
    # A dict for a contrastive task (the rows' image and text ids).
    targets = tf.nest.map_structure(tf.constant, targets)
    groups = None
    if task.distinct_images and not manifest.reader.images_inside:
        groups = targets["image_ids"]

    def example(position, image):
        target = tf.nest.map_structure(lambda t: tf.gather(t, position), targets)
        return image, tf.gather(texts, position), target

    def load(contents):
        return image_lib.load_image(contents, image_size, resize)

    if manifest.reader.images_inside:
        dataset = _streamed_elements(
            manifest,
            good,
            load,
            example,
            input_context,
            shuffle=shuffle and not cache,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            num_parallel_calls=num_parallel_calls,
        )
    else:
        # Rows are positions (cheap): shuffle them all before decoding.
        positions = _positions(
            len(good),
            shuffle and (memory_cache or not cache),
            seed,
            epoch,
            input_context,
            groups,
        )
        if memory_cache:
            dataset = _cached_elements(positions, report, example, num_parallel_calls)
        else:
            paths = [manifest.images[i] for i in good]
            dataset = _file_elements(
                positions, paths, load, example, num_parallel_calls
            )
    if cache and not memory_cache:
        dataset = dataset.cache(os.fspath(cache))
        if shuffle:
            dataset = dataset.shuffle(shuffle_buffer, seed=seed)

    if augmentation is not None:
        dataset = _augmented(dataset, augmentation, seed, epoch, num_parallel_calls)
    dataset = _batched(dataset, len(good), batch_size, drop_remainder, input_context)
    dataset = _model_inputs(dataset, tokenizer, num_parallel_calls)
    if return_report:
        return dataset, report, labels
    return dataset


# === Arguments ===


def _check_arguments(
    unknown_labels, resize, cache, image_size, batch_size, max_bad_fraction
):
    check_choice("unknown_labels", unknown_labels, UNKNOWN_LABELS)
    check_choice("resize", resize, image_lib.RESIZE_MODES)
    if cache not in CACHES and not isinstance(cache, (str, os.PathLike)):
        raise ValueError(
            f"`cache` must be None, 'memory' or a file path. Received: cache={cache!r}"
        )
    for name, value in (("image_size", image_size), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"`{name}` must be a positive integer. Received: {name}={value!r}"
            )
    if not 0 <= max_bad_fraction <= 1:
        raise ValueError(
            "`max_bad_fraction` must be between 0 and 1. "
            f"Received: max_bad_fraction={max_bad_fraction!r}"
        )


def _augmentation(augment):
    """The `augment_image` arguments that `augment` asks for (None: none)."""
    if augment is False or augment is None:
        return None
    if augment is True:
        return dict(DEFAULT_AUGMENTATION)
    if isinstance(augment, dict):
        for key in augment:
            check_choice("augment key", key, tuple(DEFAULT_AUGMENTATION))
        return {**dict.fromkeys(DEFAULT_AUGMENTATION, 0.0), "flip": False, **augment}
    raise ValueError(
        "`augment` must be False, True or a dict such as "
        f"{DEFAULT_AUGMENTATION}. Received: augment={augment!r}"
    )


def _check_memory_cache(manifest, image_size):
    if manifest.reader.images_inside:
        raise ValueError(
            "cache='memory' decodes each unique image file once; TFRecord "
            "records are read in a stream. Use a file cache path instead."
        )
    estimate = len(set(manifest.images)) * image_size * image_size * 3
    if estimate > _MAX_MEMORY_CACHE_BYTES:
        raise ValueError(
            f"cache='memory' would hold about {estimate / 1e9:.1f} GB of "
            "decoded images, more than a tf.data graph can carry; use a "
            "file cache (cache='/path/prefix') or no cache."
        )


# === Checked rows and their targets ===


def _checked_report(
    manifest, task, labels, unknown_labels, max_bad_fraction, **check_arguments
):
    """`check_manifest`'s report, once the rows pass the run's policies.

    Raises `DataError` for labels outside `labels` (with
    `unknown_labels="error"`) and for more bad rows than `max_bad_fraction`.
    """
    if task.needs_labels and all(label is None for label in manifest.labels):
        raise DataError(
            f"{manifest.source}: no row has a label (is the `label` column "
            f"missing?); a {task.name} task needs one per row. Only "
            "task='contrastive' trains without labels."
        )
    # Labels mapped to [UNK] are not bad rows, and numbers have no vocabulary.
    check_labels = labels if task.classes and unknown_labels != "unknown" else None
    report = check_manifest(
        manifest,
        # The `label` column, for the tasks that read it.
        labels=check_labels if task.needs_labels else None,
        multilabel=task.multilabel,
        needs_labels=task.needs_labels,
        row_checks=task.row_checks(check_labels),
        **check_arguments,
    )
    if unknown_labels == "error" and "unknown_label" in report.counts:
        unknown = [p for p in report.problems if p.reason == "unknown_label"]
        raise DataError(
            f"{report.source}: {len(unknown):,} row(s) have labels the "
            f"training labels lack, e.g. line {unknown[0].line}: "
            f"{unknown[0].detail}. Pass unknown_labels='skip' to skip them or "
            "'unknown' to map them to an [UNK] class."
        )
    report.enforce(max_bad_fraction)
    return report


def _targets(task, manifest, rows, labels, report):
    """The task's targets (an array, or a dict of them) for the good rows."""
    try:
        return task.manifest_targets(manifest, rows, labels)
    except TargetError as error:
        # Every data problem reaches make_dataset's callers as a DataError.
        raise DataError(str(error)) from None


# === Elements: (image, text, target) by where the images are ===


def _positions(count, shuffle, seed, epoch, input_context, groups=None):
    """This pipeline's positions among the good rows, in an epoch's order.

    `groups` (one image id per row): order each epoch in rounds, so that
    a batch repeats no image where the data allows (`_in_rounds`).
    """
    if shuffle and (epoch is not None or groups is not None):
        # Every worker draws the same permutation, then takes its shard.
        order = _epoch_permutation(count, seed, epoch, groups)
        return _shard(order, input_context)
    dataset = _shard(tf.data.Dataset.range(count), input_context)
    if shuffle:
        dataset = dataset.shuffle(count, seed=seed)
    return dataset


def _file_elements(positions, paths, load, example, num_parallel_calls):
    """Each position's image file, read and decoded."""
    paths = tf.constant([os.fsencode(path) for path in paths])
    return positions.map(
        lambda position: example(
            position, load(tf.io.read_file(tf.gather(paths, position)))
        ),
        num_parallel_calls=num_parallel_calls,
    )


def _cached_elements(positions, report, example, num_parallel_calls):
    """Each position's image, from those the check decoded (`keep_images`)."""
    pixels = tf.constant(report.images)
    ids = tf.constant(np.asarray([report.image_ids[i] for i in report.good]))
    return positions.map(
        lambda position: example(position, tf.gather(pixels, tf.gather(ids, position))),
        num_parallel_calls=num_parallel_calls,
    )


def _streamed_elements(
    manifest,
    good,
    load,
    example,
    input_context,
    shuffle,
    shuffle_buffer,
    seed,
    num_parallel_calls,
):
    """The good rows' records as they stream, shuffled in a buffer.

    Records are read in order, so only a buffer can reorder them, and the
    buffer holds encoded bytes: they are decoded after it.
    """
    reader = manifest.reader
    keys, image_ids = reader.image_keys(manifest)
    selected = [image_ids[i] for i in good]
    # Image key -> position among the good rows: one per key, since an
    # image inside a record belongs to that record's row alone.
    positions = np.full(len(keys), -1, np.int64)
    positions[selected] = np.arange(len(good))
    positions = tf.constant(positions)
    dataset = reader.image_contents(keys, selected)
    dataset = dataset.map(lambda key, data: (tf.gather(positions, key), data))
    dataset = _shard(dataset, input_context)
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    return dataset.map(
        lambda position, data: example(position, load(data)),
        num_parallel_calls=num_parallel_calls,
    )


# === Augmentation, batches, model inputs ===


def _augmented(dataset, augmentation, seed, epoch, num_parallel_calls):
    dataset = tf.data.Dataset.zip(dataset, _random_pairs(seed, epoch))
    return dataset.map(
        lambda element, pair: (
            image_lib.augment_image(element[0], pair, **augmentation),
            *element[1:],
        ),
        num_parallel_calls=num_parallel_calls,
    )


def _batched(dataset, rows, batch_size, drop_remainder, input_context):
    """Batches of `batch_size` (per replica), with a known cardinality."""
    per_replica = batch_size
    if input_context is not None:
        per_replica = input_context.get_per_replica_batch_size(batch_size)
        rows = len(
            range(
                input_context.input_pipeline_id,
                rows,
                input_context.num_input_pipelines,
            )
        )
    dataset = dataset.batch(per_replica, drop_remainder=drop_remainder)
    # Filters and per-epoch reordering hide the length from tf.data; Keras
    # needs it to know where an epoch ends without a warning.
    batches = rows // per_replica if drop_remainder else -(-rows // per_replica)
    return dataset.apply(tf.data.experimental.assert_cardinality(batches))


def _model_inputs(dataset, tokenizer, num_parallel_calls):
    """`({"image", "tokens" or "text"}, target)` batches, prefetched."""

    def to_model_inputs(image, text, target):
        features = {"image": tf.cast(image, tf.float32)}
        if tokenizer is None:
            features["text"] = text
        else:
            features["tokens"] = tokenizer(text)
        return features, target

    dataset = dataset.map(to_model_inputs, num_parallel_calls=num_parallel_calls)
    options = tf.data.Options()
    # Shard by element, never by file: the images come from one list (or
    # stream) and texts and labels are looked up by position.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


# === Seeds, epochs and shards ===


def _per_epoch(make, epoch):
    """A dataset rebuilt from `make(epoch value)` at each iteration.

    The value is read when an epoch starts, so a run resumed at epoch k
    (BackupAndRestore) sees epoch k's order, not epoch 0's again.
    """
    return tf.data.Dataset.from_tensors(0).flat_map(
        lambda _: make(tf.cast(epoch.read_value(), tf.int64))
    )


def _epoch_permutation(count, seed, epoch, groups=None):
    """Positions 0..count-1 in an order that depends on (seed, epoch) only.

    `Dataset.shuffle` takes its seed as a Python value, hence a stateless
    shuffle of the positions, drawn when each epoch starts. Without an
    `epoch` variable, each iteration draws its own order. With `groups`,
    the shuffled positions are then put in rounds (`_in_rounds`).
    """
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31))

    def permutation(value):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64),
            seed=tf.stack([tf.constant(seed, tf.int64), value]),
        )
        if groups is not None:
            order = _in_rounds(order, groups)
        return tf.data.Dataset.from_tensor_slices(order)

    if epoch is None:
        # A new draw at each iteration, as `Dataset.shuffle` would.
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        return draws.take(1).flat_map(permutation)
    return _per_epoch(permutation, epoch)


def _in_rounds(order, groups):
    """`order` rearranged in rounds holding each group (image) at most once.

    Round r holds the r-th row of every image with more than r rows, in
    the order of `order`, so consecutive rows, and so a batch, repeat an
    image only where a batch straddles two rounds, or where few images
    have many rows. Several captions per image are the rule in caption
    data, and a contrastive loss gains nothing from a batch that shows one
    image twice (the duplicate is masked, not a negative).
    """
    count = tf.shape(order, out_type=tf.int64)[0]
    group = tf.gather(groups, order)
    # Rows of one group together, each group's in the order given.
    by_group = tf.argsort(group, stable=True)
    sorted_group = tf.gather(group, by_group)
    index = tf.range(count)
    first = tf.math.unsorted_segment_min(index, sorted_group, tf.reduce_max(groups) + 1)
    # How many rows of its group come before each row: its round.
    rounds = tf.scatter_nd(
        by_group[:, None], index - tf.gather(first, sorted_group), [count]
    )
    return tf.gather(order, tf.argsort(rounds * count + index, stable=True))


def _random_pairs(seed, epoch):
    """Seeds for stateless augmentation: a (2,) int64 pair per example."""
    if epoch is None:
        pairs = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        return pairs.batch(2)
    # (seed, epoch * 2**32 + index): distinct per example and per epoch.
    return _per_epoch(
        lambda value: tf.data.Dataset.counter().map(
            lambda index: tf.stack([tf.constant(seed, tf.int64), value * 2**32 + index])
        ),
        epoch,
    )


def _shard(dataset, input_context):
    if input_context is None or input_context.num_input_pipelines == 1:
        return dataset
    return dataset.shard(
        input_context.num_input_pipelines, input_context.input_pipeline_id
    )
