"""Built-in datasets. easy-VQA: manifests over the `easy-vqa` package.

easy-VQA (Victor Zhou, MIT licence; PyPI `easy-vqa`) is 5,000 64x64 PNG
images of one coloured shape each, with questions such as "what color is
the shape?" or "does the image contain a circle?" and 13 one-word answers.
The package ships the images and questions, so nothing is downloaded: this
module writes JSONL manifests (`image`, `text` = the question, `label` = the
answer) whose image paths point into the installed package.
"""

import json
import os

SPLITS = ("train", "test")


def default_directory():
    """Where the manifests go: `$MMZOO_HOME/easy_vqa`, else the user cache."""
    home = os.environ.get("MMZOO_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mmzoo"
    )
    return os.path.join(home, "easy_vqa")


def easy_vqa(directory=None):
    """Write (once) and return the easy-VQA train and test manifests.

    Args:
        directory: where to write `train.jsonl`, `test.jsonl` and
            `answers.txt`; default `default_directory()`. Existing manifests
            are reused while the images they name still exist.

    Returns:
        `{"train": path, "test": path, "answers": path}`.

    Example:

    >>> paths = easy_vqa()
    >>> manifest = read_manifest(paths["train"])
    >>> len(manifest), len(set(manifest.images))
    (38575, 4000)
    """
    try:
        import easy_vqa as package
    except ImportError:
        raise ImportError(
            "The easy-VQA dataset comes from the `easy-vqa` package, an mmzoo "
            "dependency: `pip install easy-vqa`."
        ) from None
    directory = os.fspath(directory or default_directory())
    paths = {split: os.path.join(directory, f"{split}.jsonl") for split in SPLITS}
    paths["answers"] = os.path.join(directory, "answers.txt")
    if all(_is_current(paths[split]) for split in SPLITS):
        return paths

    os.makedirs(directory, exist_ok=True)
    readers = {
        "train": (package.get_train_questions, package.get_train_image_paths),
        "test": (package.get_test_questions, package.get_test_image_paths),
    }
    for split, (questions, image_paths) in readers.items():
        texts, answers, image_ids = questions()
        images = image_paths()
        rows = (
            json.dumps({"image": images[i], "text": text, "label": answer})
            for text, answer, i in zip(texts, answers, image_ids, strict=True)
        )
        _write_atomically(paths[split], "".join(row + "\n" for row in rows))
    _write_atomically(
        paths["answers"], "".join(a + "\n" for a in package.get_answers())
    )
    return paths


def _is_current(path):
    """The manifest exists and its first image is where it says."""
    try:
        with open(path, encoding="utf-8") as file:
            first = json.loads(file.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and os.path.isfile(first.get("image", ""))


def _write_atomically(path, text):
    # Two processes (e.g. test workers) may write at once; each writes its
    # own file and renames it, so a reader never sees half a manifest.
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8", newline="\n") as file:
        file.write(text)
    os.replace(temporary, path)
