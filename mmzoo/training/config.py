"""A training run's configuration: defaults, a YAML file, command-line flags.

One dict of plain values describes a run; `mmzoo train` flags and the keys
of a `--config run.yaml` file are the same names (dashes become
underscores). Later sources win: `DEFAULTS`, then the YAML file, then the
flags given. The resolved dict is saved as `config.yaml` in the run folder.
"""

import difflib
import os

import yaml

from mmzoo.checks import check_choice
from mmzoo.checks import plain_data
from mmzoo.registry import FUSIONS
from mmzoo.registry import IMAGE_TOWERS
from mmzoo.registry import TASKS
from mmzoo.registry import TEXT_TOWERS

STRATEGIES = ("default", "mirrored", "multiworker")

DEFAULTS = {
    # Data.
    "train": None,
    "val": None,
    "test": None,
    "columns": None,
    "task": "multiclass",
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
    # Any other `mmzoo.build_model` argument, e.g. {"image_filters": [16, 32]}.
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

_POSITIVE_INTEGERS = ("image_size", "max_tokens", "vocab_size", "epochs", "batch_size")


class ConfigError(ValueError):
    """A run configuration that cannot work; the message names the key."""


def load_yaml(path):
    """The mapping in a YAML run file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"Config file not found: {path!r}")
    with open(path, encoding="utf-8") as file:
        try:
            values = yaml.safe_load(file)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
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
                f"Unknown run config key {key!r}.{hint} Valid keys: {sorted(DEFAULTS)}"
            )


def validate(config):
    """Raise `ConfigError` naming the first key that cannot work."""
    try:
        check_choice("image_tower", config["image_tower"], IMAGE_TOWERS)
        check_choice("text_tower", config["text_tower"], TEXT_TOWERS)
        check_choice("fusion", config["fusion"], FUSIONS)
        check_choice("task", config["task"], TASKS)
        check_choice("strategy", config["strategy"], STRATEGIES)
        check_choice("resize", config["resize"], ("stretch", "pad"))
        check_choice("lr_schedule", config["lr_schedule"], ("constant", "cosine"))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    for key in _POSITIVE_INTEGERS:
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(
                f"`{key}` must be a positive integer. Received: {key}={value!r}"
            )
    if not isinstance(config["lr"], (int, float)) or config["lr"] <= 0:
        raise ConfigError(
            f"`lr` must be a positive number. Received: lr={config['lr']!r}"
        )
    if config["train"] is None:
        raise ConfigError("`train` (a training manifest) is required.")
    if config["out"] is None:
        raise ConfigError("`out` (the run folder) is required.")
    if not isinstance(config["model"], dict):
        raise ConfigError(
            "`model` holds extra build_model arguments as a mapping. "
            f"Received: model={config['model']!r}"
        )
    if config["image_weights"] in ("none", "None", ""):
        config["image_weights"] = None
    if config["patience"] is not None and (
        not isinstance(config["patience"], int) or config["patience"] < 1
    ):
        raise ConfigError(
            "`patience` must be a positive integer or None. "
            f"Received: patience={config['patience']!r}"
        )


def save(config, path):
    with open(path, "w", encoding="utf-8") as file:
        yaml.safe_dump(plain_data(config), file, sort_keys=False, allow_unicode=True)
