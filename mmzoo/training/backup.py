"""The backup of an unfinished run: two verified generations.

Keras' `BackupAndRestore` keeps one training state (two with
`double_checkpoint`, and falls back only on an `OSError`), writes the
weights and the epoch number as two files that a kill can leave
disagreeing, and leaves out the layers' seed generators, so a resumed run
would draw other dropout masks. Here each finished epoch writes one
generation folder, under a hidden name, and renames it into place once
complete:

    backup/
      epoch-0003/
        model.weights.h5     the weights and the optimizer's state
        random_state.npz     the seed generators (`model.variables` minus
                             `model.weights`)
        backup.json          the epoch and each file's SHA-256
      epoch-0004/

The last two generations are kept. On resume, the newest generation whose
files match their checksums is restored (`Backup.on_train_begin` sets the
first epoch as `BackupAndRestore` does); a damaged one is named in the log
and the previous one used; when none is left, the caller's error names what
was damaged.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil

import keras
import numpy as np

WEIGHTS = "model.weights.h5"
RANDOM_STATE = "random_state.npz"
MANIFEST = "backup.json"
KEEP = 2
_GENERATION = re.compile(r"epoch-(\d+)")


@dataclasses.dataclass(frozen=True)
class Generation:
    """A complete backup: `epoch` epochs finished."""

    path: str
    epoch: int

    @property
    def weights(self):
        return os.path.join(self.path, WEIGHTS)

    @property
    def random_state(self):
        return os.path.join(self.path, RANDOM_STATE)


def choose(folder):
    """The newest intact generation in `folder`, and what was damaged.

    Returns:
        `(generation or None, damaged)`: `damaged` lists one line per
        generation passed over, naming the file and the fault. `(None, [])`
        when `folder` holds no generation at all.
    """
    damaged = []
    for epoch, path in _generations(folder):
        problem = _verify(path)
        if problem is None:
            return Generation(path, epoch), damaged
        damaged.append(problem)
    if not damaged and os.path.isfile(os.path.join(folder, "latest.weights.h5")):
        damaged.append(
            f"{folder} holds a Keras BackupAndRestore state (an older mmzoo), "
            "which this version does not restore"
        )
    return None, damaged


def _generations(folder):
    """`[(epoch, path)]`, newest first."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        match = _GENERATION.fullmatch(name)
        if match and os.path.isdir(os.path.join(folder, name)):
            found.append((int(match.group(1)), os.path.join(folder, name)))
    return sorted(found, reverse=True)


def _verify(path):
    """None if the generation is intact, else what is wrong (one line)."""
    manifest = os.path.join(path, MANIFEST)
    try:
        with open(manifest, encoding="utf-8") as file:
            content = json.load(file)
        epoch, files = content["epoch"], content["files"]
        if not isinstance(epoch, int) or not isinstance(files, dict):
            raise ValueError("unexpected content")
    except FileNotFoundError:
        return f"{manifest} is missing"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{manifest} is damaged ({' '.join(str(error).split())})"
    for name in (WEIGHTS, RANDOM_STATE):
        target = os.path.join(path, name)
        if not os.path.isfile(target):
            return f"{target} is missing"
        if files.get(name) != _sha256(target):
            return (
                f"{target} is damaged (its checksum does not match: truncated "
                "or changed after it was written)"
            )
    return None


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Backup(keras.callbacks.Callback):
    """Writes a generation after each epoch; restores `restore` at the start.

    Put it after the callbacks that write files at the end of an epoch
    (history, best checkpoint): a generation then claims an epoch only once
    everything that epoch writes is written.

    Args:
        folder: the backup folder (`RUN_DIR/backup`).
        restore: the `Generation` to start from, or None.
    """

    def __init__(self, folder, restore=None):
        super().__init__()
        self.folder = folder
        self.restore = restore

    def _random_state(self):
        weights = {id(variable) for variable in self.model.weights}
        return [v for v in self.model.variables if id(v) not in weights]

    def on_train_begin(self, logs=None):
        if self.restore is None:
            return
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.restore.weights)
        with np.load(self.restore.random_state) as saved:
            for index, variable in enumerate(self._random_state()):
                variable.assign(saved[f"state_{index}"])
        # Read by `fit` after `on_train_begin`, as BackupAndRestore sets it.
        self.model._initial_epoch = self.restore.epoch

    def on_epoch_end(self, epoch, logs=None):
        finished = epoch + 1
        os.makedirs(self.folder, exist_ok=True)
        partial = os.path.join(self.folder, f".partial-epoch-{finished:04d}")
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        self.model.save_weights(os.path.join(partial, WEIGHTS))
        states = {
            f"state_{index}": np.asarray(variable)
            for index, variable in enumerate(self._random_state())
        }
        np.savez(os.path.join(partial, RANDOM_STATE), **states)
        manifest = {
            "epoch": finished,
            "files": {
                name: _sha256(os.path.join(partial, name))
                for name in (WEIGHTS, RANDOM_STATE)
            },
        }
        with open(os.path.join(partial, MANIFEST), "w", encoding="utf-8") as file:
            json.dump(manifest, file)
        final = os.path.join(self.folder, f"epoch-{finished:04d}")
        # An epoch trained again after a damaged generation was passed over.
        shutil.rmtree(final, ignore_errors=True)
        os.rename(partial, final)
        for _, path in _generations(self.folder)[KEEP:]:
            shutil.rmtree(path, ignore_errors=True)
