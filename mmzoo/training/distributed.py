"""Training under `tf.distribute`: choose a strategy, and a loop for many workers.

Keras 3's `fit` works under `MirroredStrategy` (one machine, several
devices) but fails under `MultiWorkerMirroredStrategy` with "Attempt to
convert a value (PerReplica...) to a Tensor" (keras-team/keras#20585).
`custom_fit` is the loop for that case: it trains the model with its own
compiled optimizer and loss through `strategy.run`, and works under every
strategy `make_strategy` returns.
"""

import itertools
import json
import os
from collections.abc import Callable

import keras
import tensorflow as tf

from mmzoo.checks import check_choice
from mmzoo.training.config import STRATEGIES

_TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)

# Loss name -> the accuracy reported with it: argmax against an integer
# label or a one-hot row, or probabilities thresholded per label.
_ACCURACIES = {
    "sparse_categorical_crossentropy": "sparse_categorical",
    "categorical_crossentropy": "categorical",
    "binary_crossentropy": "binary",
    "binary_focal_crossentropy": "binary",
}


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """A `tf.distribute.Strategy` by name.

    Args:
        name: one of `STRATEGIES`:
            - `"default"`: the current strategy (no distribution unless a
              scope is open): `tf.distribute.get_strategy()`.
            - `"mirrored"`: `MirroredStrategy` over this machine's GPUs. On
              a machine without GPUs whose CPU was split into several
              logical devices (`tf.config.set_logical_device_configuration`,
              as tests do), one replica per logical CPU; otherwise the one
              CPU.
            - `"multiworker"`: `MultiWorkerMirroredStrategy`, one process
              per worker, the cluster read from the `TF_CONFIG` environment
              variable. Create it first thing in the program, before any
              other TensorFlow operation: TensorFlow configures its
              collective operations when the strategy is created. Train
              with `custom_fit`, not `model.fit`.

    Returns:
        The strategy. Build and compile the model inside `strategy.scope()`.

    Example:

    >>> strategy = make_strategy("mirrored")
    >>> with strategy.scope():
    ...     model = mmzoo.build_model("small_cnn_bow_concat", num_classes=3)
    """
    check_choice("strategy", name, STRATEGIES)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=_mirrored_devices())
    _check_tf_config(os.environ.get("TF_CONFIG"))
    return tf.distribute.MultiWorkerMirroredStrategy()


def _mirrored_devices():
    # With no GPU, MirroredStrategy uses only /CPU:0 even when the CPU was
    # split into logical devices; name them to get one replica each.
    if tf.config.list_logical_devices("GPU"):
        return None
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) > 1:
        return [device.name for device in cpus]
    return None


def _check_tf_config(raw):
    """Fail early, naming what is wrong, on a missing or malformed TF_CONFIG.

    MultiWorkerMirroredStrategy would otherwise fall back to a local,
    single-worker strategy without a word, or fail deep inside TensorFlow.
    """
    needs = (
        "Set it on every worker to JSON with the same `cluster` (a list of "
        "'host:port' addresses per task type, 'worker' and optionally "
        "'chief') and that worker's own `task` (its type and its index in "
        f"that list), e.g. TF_CONFIG='{_TF_CONFIG_EXAMPLE}'."
    )
    if not raw:
        raise ValueError(
            "make_strategy('multiworker') reads the cluster from the TF_CONFIG "
            "environment variable, which is not set. " + needs
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({error}). Received: "
            f"TF_CONFIG={raw!r}. " + needs
        ) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    problem = None
    if not isinstance(cluster, dict) or not (
        cluster.get("worker") or cluster.get("chief")
    ):
        problem = "`cluster` must map 'worker' (and optionally 'chief') to addresses"
    elif not all(
        isinstance(addresses, list)
        and addresses
        and all(isinstance(a, str) and ":" in a for a in addresses)
        for addresses in cluster.values()
    ):
        problem = "each task type in `cluster` needs a list of 'host:port' strings"
    elif not isinstance(task, dict) or task.get("type") not in cluster:
        problem = f"`task` must name a `type` from the cluster, {sorted(cluster)}"
    elif not isinstance(task.get("index"), int) or not (
        0 <= task["index"] < len(cluster[task["type"]])
    ):
        problem = (
            f"`task.index` must be an integer from 0 to "
            f"{len(cluster[task['type']]) - 1} (its position in "
            f"cluster[{task['type']!r}])"
        )
    if problem:
        raise ValueError(
            f"TF_CONFIG does not describe a cluster: {problem}. Received: "
            f"TF_CONFIG={raw!r}. " + needs
        )


def custom_fit(
    model: keras.Model,
    strategy: tf.distribute.Strategy,
    dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
    epochs: int,
    global_batch_size: int,
    initial_epoch: int = 0,
    steps_per_epoch: int | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    verbose: bool = True,
) -> dict[str, list[float]]:
    """Train a compiled model under any strategy, multi-worker included.

    A training loop in the style of `model.fit` that uses `strategy.run`,
    so it works where Keras 3's `fit` does not
    (`MultiWorkerMirroredStrategy`, keras-team/keras#20585). Every worker
    runs the same call; gradients are summed across all replicas of all
    workers before each update, so the weights stay identical everywhere.

    The loss of a step is the mean per-example loss over the examples that
    step actually saw across all replicas (counted with an all-reduce), plus
    the model's regularisation losses. A last partial batch, or replicas
    left with fewer examples, or none, when the shards are uneven, are
    therefore averaged correctly: no example weighs more than another.
    `global_batch_size` is the most examples a step may see; a step that
    sees more fails (the usual mistake: `dataset_fn` batching the global
    batch size on every replica instead of
    `input_context.get_per_replica_batch_size(global_batch_size)`). To
    give up the last partial batch instead, batch with
    `drop_remainder=True` in `dataset_fn`. A replica can also be left with
    no batch at all for a step (its shard has fewer batches than another's,
    or one input pipeline feeds several replicas a number of batches they
    cannot share evenly). Its empty batch adds nothing to the mean, which
    is fine, except for a model with `BatchNormalization`, which cannot
    normalise zero examples: such a step stops training on every replica
    with an error that says so. Repeat the dataset and set
    `steps_per_epoch`, or make the batches go round evenly.

    Keras 3 keeps a copy per replica of a non-trainable variable with no
    aggregation, such as `BatchNormalization`'s moving mean and variance,
    each copy updated from its own replica's batches. `custom_fit` averages
    the copies over all replicas of all workers at the end of every epoch
    (tf.keras averaged them whenever they were read), so after each epoch,
    when `on_epoch_end` runs, the whole model is identical everywhere.

    Mixed precision: with a `keras.optimizers.LossScaleOptimizer` (Keras
    wraps the optimizer in one under the `mixed_float16` policy) the loss
    is scaled before the gradients are taken and the optimizer unscales
    them; when any replica's gradients overflow, every replica skips the
    step and lowers the scale together.

    Args:
        model: a `keras.Model` built and compiled inside `strategy.scope()`.
            Its compiled `loss` (one loss, or a dict by output name) is
            used per example; a classification loss (sparse categorical,
            categorical or binary cross-entropy) also gives an accuracy.
        strategy: the `tf.distribute.Strategy` the model was built under,
            e.g. from `make_strategy`.
        dataset_fn: a function of a `tf.distribute.InputContext` returning
            a `tf.data.Dataset` of `(features, labels)` batches for one
            replica: each input pipeline should read its own shard
            (`input_context.input_pipeline_id` of
            `input_context.num_input_pipelines`), batched by
            `input_context.get_per_replica_batch_size(global_batch_size)`.
            `mmzoo.data.make_dataset(..., input_context=context)` does both.
            Labels are a tensor (one loss) or a dict by output name.
        epochs: the index of the last epoch, as in `model.fit`: training
            runs epochs `initial_epoch` to `epochs - 1`.
        global_batch_size: examples per step over all replicas.
        initial_epoch: the epoch to resume from.
        steps_per_epoch: steps per epoch, the iterator carrying on from one
            epoch to the next (the dataset should repeat); `None` runs each
            epoch until the data ends.
        on_epoch_end: `on_epoch_end(epoch, logs)`, called on every worker
            after each epoch with that epoch's `logs` (floats); for
            checkpoints, early stopping or logging.
        verbose: print one line per epoch, on the chief only (task type
            "chief", or worker 0 when the cluster has no chief).

    Returns:
        The history: `{"loss": [...], "accuracy": [...]}`, one float per
        epoch, identical on every worker: the mean loss per example (with
        `loss_weights` and regularisation) and the accuracy over the
        examples of the epoch. With several classification outputs the
        accuracies are named `"<output>_accuracy"`. Other compiled metrics
        are not computed.

    Example:

    >>> strategy = make_strategy("multiworker")  # first thing, on each worker
    >>> with strategy.scope():
    ...     model = mmzoo.build_model("small_cnn_bow_concat", num_classes=3)
    >>> tokenizer = WordTokenizer.fit(read_manifest("train.csv").texts)
    >>> def dataset_fn(context):
    ...     return make_dataset("train.csv", tokenizer, image_size=64,
    ...                         batch_size=64, seed=1, input_context=context)
    >>> history = custom_fit(model, strategy, dataset_fn, epochs=5,
    ...                      global_batch_size=64)
    """
    _check_arguments(epochs, global_batch_size, initial_epoch, steps_per_epoch)
    _check_model(model, strategy)
    # A dual encoder's loss compares the pairs of a batch with each other:
    # the model computes it (negatives gathered from every replica).
    pair_loss = getattr(model, "contrastive_loss", None) is not None
    losses = [] if pair_loss else _compiled_losses(model)
    if not model.optimizer.built:
        # Optimizer variables created inside `strategy.run` would be
        # per-replica; create them mirrored, as `fit` does.
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
    if pair_loss:
        replica_step = _pair_replica_step(model)
    else:
        replica_step = _replica_step(model, losses, global_batch_size, strategy)
    average_replica_copies = _replica_copies_averager(model, strategy)
    dataset = strategy.distribute_datasets_from_function(dataset_fn)

    # The signature, with its unknown batch size, keeps a last partial batch
    # from tracing the step a second time.
    @tf.function(input_signature=(dataset.element_spec,))
    def train_step(batch):
        features, labels = batch
        results = strategy.run(replica_step, args=(features, labels))
        # Each replica's loss is its share of the global mean: their sum is
        # the step's loss. Counts and correct answers add up too.
        return strategy.reduce(tf.distribute.ReduceOp.SUM, results, None)

    # In the order replica_step stacks the correct answers.
    names = [_accuracy_key(name, losses) for name, _, a, _ in losses if a]
    history = {"loss": [], **{key: [] for key in names}}
    iterator = iter(dataset) if steps_per_epoch else None
    chief = _is_chief(strategy)
    for epoch in range(initial_epoch, epochs):
        batches = (
            itertools.islice(iterator, steps_per_epoch)
            if steps_per_epoch
            else iter(dataset)
        )
        logs, steps = _run_epoch(train_step, batches, names)
        if steps == 0:
            raise ValueError(
                f"dataset_fn gave no batches in epoch {epoch + 1}. With "
                "`steps_per_epoch`, the dataset must repeat (`.repeat()`) to "
                "last that many steps per epoch."
            )
        if average_replica_copies is not None:
            average_replica_copies()
        for key, value in logs.items():
            history[key].append(value)
        if verbose and chief:
            metrics = " - ".join(f"{key}: {value:.4f}" for key, value in logs.items())
            print(
                f"Epoch {epoch + 1}/{epochs} - {steps} steps - {metrics}",
                flush=True,
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch, logs)
    return history


def _replica_step(model, losses, global_batch_size, strategy):
    """The per-replica training step: its loss, example count and accuracies.

    Returns a function of `(features, labels)` for `strategy.run`, giving
    `[loss, examples, correct answers per accuracy...]` stacked in one
    vector, so that one all-reduce sums them over the replicas.
    """
    optimizer = model.optimizer
    replicas = strategy.num_replicas_in_sync
    batch_norm = _has_batch_norm(model)

    def replica_step(features, labels):
        context = tf.distribute.get_replica_context()
        # Counts are float32, reduced by the same collectives as gradients.
        count = tf.cast(tf.shape(tf.nest.flatten(labels)[0])[0], tf.float32)
        # One all-reduce gives every replica the examples in this step over
        # all replicas (the divisor that makes a partial or uneven step an
        # exact mean) and the number of replicas left without data.
        totals = context.all_reduce(
            tf.distribute.ReduceOp.SUM,
            tf.stack([count, tf.cast(tf.equal(count, 0.0), tf.float32)]),
        )
        step_count = tf.cast(totals[0], tf.int32)
        checks = _step_checks(step_count, totals[1], global_batch_size, batch_norm)
        with tf.control_dependencies(checks), tf.GradientTape() as tape:
            outputs = model(features, training=True)
            loss = tf.constant(0.0)
            correct = []
            for name, loss_fn, accuracy, weight in losses:
                prediction = outputs if name is None else outputs[name]
                target, prediction = _aligned(_target(labels, name), prediction)
                per_example = loss_fn(target, prediction)
                loss += weight * tf.nn.compute_average_loss(
                    per_example, global_batch_size=step_count
                )
                if accuracy is not None:
                    correct.append(tf.reduce_sum(accuracy(target, prediction)))
            if model.losses:
                # Every replica adds the same regularisation; the gradient
                # sum across replicas must count it once.
                loss += tf.add_n(
                    [tf.cast(extra, tf.float32) for extra in model.losses]
                ) / float(replicas)
            scaled = optimizer.scale_loss(loss)
        _apply_gradients(model, tape, scaled, context)
        return tf.stack([loss, count, *correct])

    return replica_step


def _pair_replica_step(model):
    """The per-replica step of a model that computes its own pair loss.

    `model.compute_loss` (a `mmzoo.DualEncoder`'s) gathers every replica's
    embeddings, so each replica's loss is the global batch's divided by the
    replicas; the summed gradients are then the global batch's, as on one
    device. Returns `[loss share, examples]` like `_replica_step`.
    """
    optimizer = model.optimizer

    def replica_step(features, labels):
        context = tf.distribute.get_replica_context()
        count = tf.cast(tf.shape(tf.nest.flatten(features)[0])[0], tf.float32)
        with tf.GradientTape() as tape:
            outputs = model(features, training=True)
            loss = model.compute_loss(features, labels, outputs)
            scaled = optimizer.scale_loss(loss)
        _apply_gradients(model, tape, scaled, context)
        # The replicas' shares sum to the step's loss, as in `_replica_step`.
        return tf.stack([loss, count])

    return replica_step


def _apply_gradients(model, tape, scaled, context):
    """One update from a replica's scaled loss; overflow agreed by all."""
    optimizer = model.optimizer
    variables = model.trainable_variables
    gradients = tape.gradient(scaled, variables)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        gradients = _agree_on_overflow(context, gradients)
    optimizer.apply_gradients(zip(gradients, variables, strict=True))


def _step_checks(step_count, empty_replicas, global_batch_size, batch_norm):
    """Assertions every replica runs on the same all-reduced totals.

    Every replica sees the same totals, so every replica fails the same
    check: none is left waiting on a collective for the others.
    """
    checks = [
        tf.debugging.assert_less_equal(
            step_count,
            global_batch_size,
            message=(
                "A step saw more examples than `global_batch_size`: "
                "dataset_fn must batch "
                "input_context.get_per_replica_batch_size(global_batch_size)"
                " examples per replica"
            ),
        )
    ]
    if batch_norm:
        checks.append(
            tf.debugging.assert_equal(
                empty_replicas,
                0.0,
                message=(
                    "A replica got an empty batch: its data ran out before "
                    "the other replicas' (uneven shards, or a number of "
                    "batches the replicas cannot share evenly), and "
                    "BatchNormalization cannot normalise zero examples. "
                    "Repeat the dataset in dataset_fn and pass "
                    "steps_per_epoch, or give every replica as many "
                    "batches (drop_remainder=True, and rows that divide "
                    "evenly)"
                ),
            )
        )
    return checks


def _replica_copies_averager(model, strategy):
    """A function averaging per-replica variable copies, or None if none.

    Keras 3 keeps a separate copy per replica of a variable with no
    aggregation, such as BatchNormalization's moving mean and variance,
    each updated from its own replica's batches: left alone, the workers'
    models would differ. tf.keras averaged such statistics over the
    replicas when reading them; here they are averaged once an epoch.
    """
    copies = [
        variable
        for variable in model.non_trainable_weights
        if variable.aggregation == "none"
        and keras.backend.is_float_dtype(variable.dtype)
    ]
    if strategy.num_replicas_in_sync == 1 or not copies:
        return None

    @tf.function
    def average():
        def replica_average():
            context = tf.distribute.get_replica_context()
            means = context.all_reduce(
                tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in copies]
            )
            for variable, mean in zip(copies, means, strict=True):
                variable.assign(mean)

        strategy.run(replica_average)

    return average


def _run_epoch(train_step, batches, names):
    """One epoch's `(logs, steps)`: the mean loss and accuracies per example."""
    # [loss x examples, examples, correct answers...], summed over steps on
    # the device: no wait for the host until the epoch ends.
    sums = tf.zeros(2 + len(names))
    steps = 0
    for batch in batches:
        result = train_step(batch)
        sums += tf.concat([result[:1] * result[1], result[1:]], axis=0)
        steps += 1
    if steps == 0:
        return {}, 0
    totals = sums.numpy().astype(float)
    logs = {"loss": float(totals[0] / totals[1])}
    for index, key in enumerate(names):
        logs[key] = float(totals[2 + index] / totals[1])
    return logs, steps


def _check_arguments(epochs, global_batch_size, initial_epoch, steps_per_epoch):
    for name, value, low in (
        ("epochs", epochs, 1),
        ("global_batch_size", global_batch_size, 1),
        ("initial_epoch", initial_epoch, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            kind = "positive" if low else "non-negative"
            raise ValueError(
                f"`{name}` must be a {kind} integer. Received: {name}={value!r}"
            )
    if initial_epoch >= epochs:
        raise ValueError(
            "`epochs` is the index of the last epoch, as in `model.fit`, and "
            f"must exceed `initial_epoch`. Received: epochs={epochs}, "
            f"initial_epoch={initial_epoch}"
        )
    if steps_per_epoch is not None and (
        not isinstance(steps_per_epoch, int)
        or isinstance(steps_per_epoch, bool)
        or steps_per_epoch < 1
    ):
        raise ValueError(
            "`steps_per_epoch` must be None or a positive integer. "
            f"Received: steps_per_epoch={steps_per_epoch!r}"
        )


def _check_model(model, strategy):
    has_loss = getattr(model, "loss", None) or getattr(model, "contrastive_loss", None)
    if getattr(model, "optimizer", None) is None or not has_loss:
        raise ValueError(
            "custom_fit trains with the model's compiled optimizer and loss; "
            "compile the model (inside `strategy.scope()`) first."
        )
    if getattr(model, "unimodal_heads", None):
        raise ValueError(
            f"Model {model.name!r} has unimodal heads (`unimodal_heads` or "
            "`balance`, see mmzoo.balance), whose losses `fit` adds; custom_fit "
            "computes the compiled loss only. Train it with `model.fit`."
        )
    outside = [
        variable.path
        for variable in model.variables
        if not strategy.extended.variable_created_in_scope(variable.value)
    ]
    # Keras' TensorFlow optimizers remember the strategy they were made under.
    optimizer_strategy = getattr(model.optimizer, "_distribution_strategy", strategy)
    if optimizer_strategy is not strategy:
        outside.append(f"the optimizer {model.optimizer.name!r}")
    if outside:
        shown = ", ".join(outside[:3]) + (", ..." if len(outside) > 3 else "")
        raise ValueError(
            "The model and its optimizer must be built and compiled inside "
            "`strategy.scope()` of the strategy passed to custom_fit, so that "
            "their variables are mirrored on every replica. Created outside "
            f"it: {shown}."
        )


def _compiled_losses(model):
    """`(output name, per-example loss, per-example accuracy, weight)` each.

    The output name is `None` for a model with a single, unnamed output.
    """
    compiled = model.loss
    output = model.output
    if isinstance(output, (list, tuple)) and len(output) > 1:
        raise ValueError(
            "custom_fit trains models whose outputs are one tensor or a dict "
            f"by name; this one has a list of {len(output)} outputs."
        )
    output_names = list(output) if isinstance(output, dict) else None
    if not isinstance(compiled, dict):
        if output_names is not None and len(output_names) != 1:
            raise ValueError(
                "custom_fit needs the loss as a dict by output name for a model "
                f"with several outputs ({output_names}). Received: "
                f"loss={compiled!r}"
            )
        compiled = {output_names[0] if output_names else None: compiled}
    weights = model.get_compile_config().get("loss_weights")
    if weights is not None and not isinstance(weights, dict):
        if len(compiled) != 1 or not isinstance(weights, (int, float, list, tuple)):
            raise ValueError(
                "custom_fit reads `loss_weights` as a dict by output name. "
                f"Received: loss_weights={weights!r}"
            )
        weights = {
            name: weights[0] if isinstance(weights, (list, tuple)) else weights
            for name in compiled
        }
    losses = []
    for name, loss in compiled.items():
        if loss is None:
            continue
        if output_names is not None and name not in output_names:
            raise ValueError(
                f"The compiled loss names output {name!r}, which the model "
                f"lacks; its outputs are {output_names}."
            )
        weight = float((weights or {}).get(name, 1.0))
        losses.append((name, *_per_example(loss), weight))
    return losses


def _per_example(loss):
    """A loss without reduction, and the accuracy that goes with it."""
    loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        config = loss.get_config()
        function = getattr(loss, "fn", None)  # built-in losses wrap a function
        name = function.__name__ if function else _snake_case(type(loss).__name__)
        config["reduction"] = None
        return type(loss).from_config(config), _accuracy(
            _ACCURACIES.get(name), config.get("from_logits", False)
        )
    name = getattr(loss, "__name__", "")
    return _Unreduced(loss), _accuracy(_ACCURACIES.get(name), False)


class _Unreduced(keras.losses.Loss):
    """A loss function as a `Loss` without reduction: the per-example values.

    `Loss.__call__` casts the inputs and applies Keras masks, which a bare
    function call would skip.
    """

    def __init__(self, function):
        super().__init__(reduction=None, name=getattr(function, "__name__", None))
        self.function = function

    def call(self, y_true, y_pred):
        return self.function(y_true, y_pred)


def _snake_case(name):
    return "".join(
        f"_{char.lower()}" if char.isupper() and index else char.lower()
        for index, char in enumerate(name)
    )


def _accuracy(kind, from_logits):
    """A function giving each example's accuracy, shape (batch,), or None."""
    if kind == "sparse_categorical":
        function = keras.metrics.sparse_categorical_accuracy
    elif kind == "categorical":
        function = keras.metrics.categorical_accuracy
    elif kind == "binary":
        threshold = 0.0 if from_logits else 0.5

        def function(target, prediction):
            return keras.metrics.binary_accuracy(target, prediction, threshold)
    else:
        return None

    def per_example(target, prediction):
        # Binary accuracy comes per label, (batch, labels): an example's
        # accuracy is the mean over its labels, as Keras' metric reports.
        values = tf.cast(function(target, prediction), tf.float32)
        if values.shape.rank and values.shape.rank > 1:
            values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
        return values

    return per_example


def _accuracy_key(name, losses):
    classified = [n for n, _, accuracy, _ in losses if accuracy is not None]
    return "accuracy" if len(classified) == 1 else f"{name}_accuracy"


def _target(labels, name):
    if not isinstance(labels, dict):
        return labels
    if name not in labels:
        raise ValueError(
            f"The labels have no entry for output {name!r}; they have {sorted(labels)}."
        )
    return labels[name]


def _aligned(target, prediction):
    # Keras squeezes (batch,) labels against (batch, 1) predictions and
    # then averages over the last axis, which would leave one number for the
    # whole batch; give the labels the predictions' rank instead.
    target = tf.convert_to_tensor(target)
    if (
        target.shape.rank is not None
        and prediction.shape.rank == target.shape.rank + 1
        and prediction.shape[-1] == 1
    ):
        target = tf.expand_dims(target, -1)
    return target, prediction


def _agree_on_overflow(context, gradients):
    """Make every replica see an overflow when any replica has one.

    LossScaleOptimizer checks each replica's own gradients (before they are
    summed) and skips the step on inf or NaN. Replicas that disagreed would
    apply different updates, or under a collective all-reduce wait on each
    other forever; so a local overflow is shared and turned into NaN
    gradients everywhere.
    """
    present = [_values(g) for g in gradients if g is not None]
    overflow = tf.cast(
        tf.logical_not(
            tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in present])
        ),
        tf.float32,
    )
    anywhere = context.all_reduce(tf.distribute.ReduceOp.SUM, overflow) > 0

    def poisoned(values):
        return tf.where(anywhere, tf.constant(float("nan"), values.dtype), values)

    shared = []
    for g in gradients:
        if isinstance(g, tf.IndexedSlices):
            g = tf.IndexedSlices(poisoned(g.values), g.indices, g.dense_shape)
        elif g is not None:
            g = poisoned(g)
        shared.append(g)
    return shared


def _values(gradient):
    # Embedding gradients arrive as IndexedSlices.
    if isinstance(gradient, tf.IndexedSlices):
        return gradient.values
    return gradient


def _has_batch_norm(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
        return True
    return any(_has_batch_norm(inner) for inner in getattr(layer, "layers", ()))


def _is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type:
        return True
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not has_chief
