"""A training run's configuration: defaults, a YAML file, command-line flags.

One dict of plain values describes a run; `mmzoo train` flags and the keys
of a `--config run.yaml` file are the same names (dashes become
underscores). Later sources win: `DEFAULTS`, then the YAML file, then the
flags given. The resolved dict is saved as `config.yaml` in the run folder.
"""

import difflib
import math
import os

import yaml

from mmzoo import registry
from mmzoo.checks import check_choice
from mmzoo.checks import plain_data
from mmzoo.registry import FUSIONS
from mmzoo.registry import IMAGE_TOWERS
from mmzoo.registry import TASKS
from mmzoo.registry import TEXT_TOWERS
from mmzoo.tasks import check_heads
from mmzoo.towers.image import MIN_IMAGE_SIZE

STRATEGIES = ("default", "mirrored", "multiworker")

DEFAULTS = {
    # Data.
    "train": None,
    "val": None,
    "test": None,
    "columns": None,
    "task": "multiclass",
    # Several heads over the fused features, each with its task, label
    # column and loss weight (`mmzoo.tasks.MultiTask`), e.g. {"answer":
    # {"task": "multiclass", "column": "label"}, "kind": {"task":
    # "binary", "column": "is_yes_no", "weight": 0.5}}. None: one output.
    "heads": None,
    "image_size": 64,
    "resize": "stretch",
    "augment": False,
    "cache": "memory",
    "max_tokens": 32,
    "vocab_size": 20000,
    "max_bad_fraction": 0.01,
    # Model.
    "image_tower": "small_cnn",
    "text_tower": "bow",
    "fusion": "concat",
    "image_weights": None,
    "freeze_image_tower": False,
    "text_preset": None,
    "hub_handle": None,
    # A contrastive task's loss (`mmzoo.losses.LOSSES`); default "clip".
    "loss": None,
    # Modality balance of fused models (`mmzoo.balance`): the unimodal
    # heads' loss weight (0: none), gradient modulation, its alpha.
    "unimodal_heads": 0.0,
    "balance": "none",
    "balance_alpha": 0.5,
    # Also train image_only and text_only runs with the same budget, in
    # OUT/baselines/, and compare (`baselines.md`).
    "baselines": False,
    # Any other argument of the task's builder (`mmzoo.build_model`, or
    # `mmzoo.build_dual_encoder` for task "contrastive"), e.g.
    # {"image_filters": [16, 32]} or {"embed_dim": 64}.
    "model": {},
    # Training.
    "epochs": 10,
    "batch_size": 32,
    "lr": 1e-3,
    "lr_schedule": "constant",
    "mixed_precision": False,
    "xla": False,
    "strategy": "default",
    "seed": 0,
    "patience": None,
    # Output.
    "out": None,
}


class ConfigError(ValueError):
    """A run configuration that cannot work; the message names the key.

    Attributes:
        key: the configuration key at fault (`None` for the file itself).
    """

    def __init__(self, message, key=None):
        super().__init__(message)
        self.key = key


def load_yaml(path):
    """The mapping in a YAML run file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"Config file not found: {path!r}")
    with open(path, encoding="utf-8") as file:
        try:
            values = yaml.safe_load(file)
        except yaml.YAMLError as error:
            where = " ".join(str(error).split())
            raise ConfigError(f"{path}: not valid YAML: {where}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"{path}: a run config is a mapping of keys to values; found a "
            f"{type(values).__name__}."
        )
    return {key.replace("-", "_"): value for key, value in values.items()}


def resolve(*sources):
    """Merge sources over `DEFAULTS` and validate the result.

    Args:
        *sources: dicts (later ones win) or YAML paths.

    Returns:
        The complete, validated configuration dict.
    """
    config = dict(DEFAULTS)
    for source in sources:
        if source is None:
            continue
        if not isinstance(source, dict):
            source = load_yaml(source)
        _check_keys(source)
        config.update(normalize(source))
    validate(config)
    return config


def normalize(values):
    """Paths as strings, so a config compares and saves the same either way."""
    return {
        key: os.fspath(value) if isinstance(value, os.PathLike) else value
        for key, value in values.items()
    }


def _check_keys(values):
    for key in values:
        if key not in DEFAULTS:
            close = difflib.get_close_matches(key, DEFAULTS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"Unknown run config key {key!r}.{hint} Valid keys: {sorted(DEFAULTS)}",
                key,
            )


def validate(config):
    """Raise `ConfigError` naming the first key that cannot work.

    Every value is checked before anything is written or built (see
    `check_value`), then the keys that depend on each other.
    """
    for key in DEFAULTS:
        check_value(key, config[key])
    if config["train"] is None:
        raise ConfigError("`train` (a training manifest) is required.", "train")
    if config["out"] is None:
        raise ConfigError("`out` (the run folder) is required.", "out")
    task = TASKS[config["task"]]
    if config["heads"] is not None:
        _check_heads(config)
    if config["loss"] is not None and config["loss"] not in task.losses:
        users = sorted(name for name, spec in TASKS.items() if spec.losses)
        raise ConfigError(
            f"`loss` chooses the loss of task {' or '.join(map(repr, users))}; "
            f"task={task.name!r} trains with {task.loss!r}. Received: "
            f"loss={config['loss']!r}",
            "loss",
        )
    balancing = config["unimodal_heads"] or config["balance"] != "none"
    if balancing or config["baselines"]:
        key = (
            "baselines"
            if config["baselines"]
            else ("unimodal_heads" if config["unimodal_heads"] else "balance")
        )
        if not task.fused:
            raise ConfigError(
                f"`{key}` applies to models that fuse an image and a text; "
                f"task={task.name!r} does not ({task.description}). Received: "
                f"{key}={config[key]!r}",
                key,
            )
        modalities = FUSIONS[config["fusion"]].modalities
        if len(modalities) < 2:
            raise ConfigError(
                f"`{key}` compares or balances two modalities; "
                f"fusion={config['fusion']!r} reads only {modalities[0]!r}. "
                f"Received: {key}={config[key]!r}",
                key,
            )
    if config["balance"] != "none" and not task.classes:
        raise ConfigError(
            "`balance` scores each modality by its probability of the right "
            f"class; task={task.name!r} has no classes. Use `unimodal_heads` "
            f"alone. Received: balance={config['balance']!r}",
            "balance",
        )
    if balancing and config["strategy"] == "multiworker":
        raise ConfigError(
            "`unimodal_heads` and `balance` train through Keras `fit`; the "
            "multiworker loop computes the compiled loss only. Use strategy "
            "'default' or 'mirrored'.",
            "strategy",
        )
    if config["image_weights"] in _NO_WEIGHTS:
        config["image_weights"] = None
    takes = set(registry.text_tower(config["text_tower"]).arguments.values())
    for key in ("text_preset", "hub_handle"):
        if config[key] is not None and key not in takes:
            users = sorted(
                name
                for name, spec in TEXT_TOWERS.items()
                if key in spec.arguments.values()
            )
            raise ConfigError(
                f"`{key}` is only read by text_tower {' or '.join(map(repr, users))}. "
                f"Received: {key}={config[key]!r} with "
                f"text_tower={config['text_tower']!r}",
                key,
            )


def _check_heads(config):
    """What a run with `heads` cannot be combined with."""
    for name, spec in config["heads"].items():
        if (spec or {}).get("num_classes") is not None:
            raise ConfigError(
                f"`heads[{name!r}]['num_classes']` comes from the training data "
                "in a run; leave it out. Received: "
                f"num_classes={spec['num_classes']!r}",
                "heads",
            )
    if config["task"] != DEFAULTS["task"]:
        raise ConfigError(
            "With `heads`, each head names its own task (`heads: {name: {task: "
            f"...}}`); leave `task` unset. Received: task={config['task']!r}",
            "task",
        )
    if FUSIONS[config["fusion"]].returns_logits:
        raise ConfigError(
            f"fusion={config['fusion']!r} ends in its own logits, room for one "
            "output only; a run with `heads` needs a fusion that gives features "
            "(e.g. 'concat', 'gated', 'bilinear').",
            "fusion",
        )
    for key, off in (
        ("unimodal_heads", 0.0),
        ("balance", "none"),
        ("baselines", False),
    ):
        if config[key] != off:
            raise ConfigError(
                f"`{key}` works with a model of one output; a run with `heads` has "
                f"several, which it does not support. Received: {key}={config[key]!r}",
                key,
            )


# === One value at a time ===

_CHOICES = {
    "image_tower": IMAGE_TOWERS,
    "text_tower": TEXT_TOWERS,
    "fusion": FUSIONS,
    "task": TASKS,
    "strategy": STRATEGIES,
    "resize": ("stretch", "pad"),
    "lr_schedule": ("constant", "cosine"),
    "balance": ("none", "ogm", "ogm_ge"),
}
_NO_WEIGHTS = ("none", "None", "")
_NO_CACHE = ("none", "None")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _at_least(low):
    return lambda value: _is_int(value) and value >= low


# key: (test, what the value must be). Keys not listed take any value of
# the right kind, checked where it is used (`model`, `columns`).
_RULES = {
    "image_size": (
        _at_least(MIN_IMAGE_SIZE),
        f"an integer of at least {MIN_IMAGE_SIZE}",
    ),
    "max_tokens": (_at_least(1), "a positive integer"),
    # Ids 0 and 1 are [PAD] and [UNK] (`build_vocabulary`).
    "vocab_size": (_at_least(2), "an integer of at least 2 ([PAD] and [UNK])"),
    "epochs": (_at_least(1), "a positive integer"),
    "batch_size": (_at_least(1), "a positive integer"),
    "lr": (
        lambda value: _is_number(value) and math.isfinite(value) and value > 0,
        "a finite positive number",
    ),
    "max_bad_fraction": (
        lambda value: _is_number(value) and 0 <= value <= 1,
        "a number from 0 to 1",
    ),
    # `keras.utils.set_random_seed` hands it to NumPy, which takes 32 bits.
    "seed": (
        lambda value: _is_int(value) and 0 <= value < 2**32,
        "an integer from 0 to 2**32 - 1",
    ),
    "patience": (
        lambda value: value is None or (_is_int(value) and value >= 1),
        "a positive integer or None",
    ),
    "augment": (
        lambda value: isinstance(value, (bool, dict)),
        "true, false or a mapping of augmentation settings",
    ),
    "freeze_image_tower": (lambda value: isinstance(value, bool), "true or false"),
    "baselines": (lambda value: isinstance(value, bool), "true or false"),
    "unimodal_heads": (
        lambda value: _is_number(value) and math.isfinite(value) and value >= 0,
        "a number >= 0 (0: no unimodal heads)",
    ),
    "balance_alpha": (
        lambda value: _is_number(value) and math.isfinite(value) and value > 0,
        "a finite positive number",
    ),
    "mixed_precision": (lambda value: isinstance(value, bool), "true or false"),
    "xla": (lambda value: isinstance(value, bool), "true or false"),
    "model": (
        lambda value: isinstance(value, dict),
        "a mapping of extra build_model arguments",
    ),
    "columns": (
        lambda value: value is None or isinstance(value, dict),
        "a mapping of manifest columns, or None",
    ),
    "text_preset": (
        lambda value: value is None or isinstance(value, str),
        "a keras-hub preset directory or handle, or None",
    ),
    "hub_handle": (
        lambda value: value is None or isinstance(value, str),
        "a TF-Hub handle or directory, or None",
    ),
}


def check_value(key, value):
    """Raise `ConfigError` unless `value` can work for `key`.

    The checks that need nothing but the value: its type and range, a
    choice among the registry's names, a manifest or weights file that
    exists, a run folder that is not a file. `mmzoo train`'s flags use the
    same checks, so a flag and a `--config` key obey the same rules.

    Args:
        key: a configuration key (`DEFAULTS`).
        value: its value.
    """
    if key in _CHOICES:
        try:
            check_choice(key, value, _CHOICES[key])
        except ValueError as error:
            raise ConfigError(str(error), key) from None
        return
    if key in _RULES:
        test, what = _RULES[key]
        if not test(value):
            raise ConfigError(f"`{key}` must be {what}. Received: {key}={value!r}", key)
        return
    if key in ("train", "val", "test"):
        if value is None and key != "train":
            return
        if value is not None and not _is_path(value):
            raise ConfigError(
                f"`{key}` must be the path of a manifest. Received: {key}={value!r}",
                key,
            )
        if value is not None and not os.path.exists(value):
            raise ConfigError(f"`{key}`: manifest not found: {os.fspath(value)!r}", key)
    elif key == "heads":
        if value is None:
            return
        try:
            check_heads(value)
        except ValueError as error:
            raise ConfigError(str(error), key) from None
    elif key == "loss":
        if value is None:
            return
        names = sorted({name for task in TASKS.values() for name in task.losses})
        try:
            check_choice(key, value, names)
        except ValueError as error:
            raise ConfigError(str(error), key) from None
    elif key == "image_weights":
        if value is None or value in _NO_WEIGHTS or value == "imagenet":
            return
        if not _is_path(value) or not os.path.isfile(value):
            raise ConfigError(
                "`image_weights` must be none, 'imagenet' or the path of a "
                f"weights file. Received: image_weights={value!r}, which is not "
                "a file",
                key,
            )
    elif key == "cache":
        if value is None or value in _NO_CACHE or value == "memory":
            return
        if not _is_path(value):
            raise ConfigError(
                "`cache` must be 'memory', 'none' or a file path prefix. "
                f"Received: cache={value!r}",
                key,
            )
        folder = os.path.dirname(os.path.abspath(value))
        if not os.path.isdir(folder):
            raise ConfigError(
                f"`cache`: the folder {folder!r} of the cache files "
                f"{os.fspath(value)!r} does not exist.",
                key,
            )
    elif key == "out":
        if value is None:
            return
        if not _is_path(value) or not os.fspath(value):
            raise ConfigError(
                f"`out` must be the path of the run folder. Received: out={value!r}",
                key,
            )
        if os.path.exists(value) and not os.path.isdir(value):
            raise ConfigError(
                f"`out` must be a folder, but {os.fspath(value)!r} is a file.", key
            )
    elif key not in DEFAULTS:
        raise ConfigError(f"Unknown run config key {key!r}.", key)


def _is_path(value):
    return isinstance(value, (str, os.PathLike))


def save(config, path):
    with open(path, "w", encoding="utf-8") as file:
        yaml.safe_dump(plain_data(config), file, sort_keys=False, allow_unicode=True)
