"""Built-in datasets. easy-VQA: manifests over the `easy-vqa` package.

easy-VQA (Victor Zhou, MIT licence; PyPI `easy-vqa`) is 5,000 64x64 PNG
images of one coloured shape each, with questions such as "what color is
the shape?" or "does the image contain a circle?" and 13 one-word answers.
The package ships the images and questions, so nothing is downloaded: this
module writes JSONL manifests (`image`, `text` = the question, `label` = the
answer) whose image paths point into the installed package, and, for
dual encoders, caption manifests (`easy_vqa_captions`: "a blue circle",
built from each image's answers).
"""

import collections
import json
import os

SPLITS = ("train", "test")
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")


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


def image_captions(questions, answers, image_ids):
    """`{image id: "a <colour> <shape>"}` from each image's answers.

    The colour and the shape are read from "what" questions and their
    answers ("what is the blue shape?": rectangle), and from yes/no
    questions naming one ("is there a red shape?": yes; "is there not a
    circle?": no). Images whose answers give only one of the two get no
    caption.
    """
    found = collections.defaultdict(dict)
    for question, answer, image in zip(questions, answers, image_ids, strict=True):
        words = question.rstrip("?").split()
        for kind, names in (("colour", COLORS), ("shape", SHAPES)):
            if answer in names:
                found[image][kind] = answer
                continue
            named = [word for word in words if word in names]
            if answer in ("yes", "no"):
                present = (answer == "yes") != ("not" in words)
            else:  # "what is the blue shape?": the question names it
                present = words[0] == "what"
            if len(named) == 1 and present:
                found[image][kind] = named[0]
    return {
        image: f"a {parts['colour']} {parts['shape']}"
        for image, parts in found.items()
        if len(parts) == 2
    }


def easy_vqa_captions(directory=None, every=10):
    """Write (once) and return easy-VQA caption manifests for dual encoders.

    Each image whose answers give its colour and its shape is one row
    `{"image", "text": "a blue circle", "label": "blue circle"}`; the
    questions of every `every`-th training image are held out for
    validation. `colour_test` and `shape_test` label the test images with
    their colour or their shape alone, for zero-shot classification.

    Returns:
        `{"train", "val", "test", "colour_test", "shape_test": path}` and
        `"skipped"`: how many images of each split got no caption.
    """
    import easy_vqa as package

    directory = os.fspath(directory or default_directory())
    names = ("train", "val", "test", "colour_test", "shape_test")
    paths = {name: os.path.join(directory, f"captions_{name}.jsonl") for name in names}
    readers = {
        "train": (package.get_train_questions, package.get_train_image_paths),
        "test": (package.get_test_questions, package.get_test_image_paths),
    }
    rows = {name: [] for name in names}
    skipped = {}
    for split, (questions, image_paths) in readers.items():
        captions = image_captions(*questions())
        images = image_paths()
        skipped[split] = len(images) - len(captions)
        for position, image in enumerate(sorted(captions)):
            caption = captions[image]
            _, colour, shape = caption.split()
            row = {
                "image": images[image],
                "text": caption,
                "label": f"{colour} {shape}",
            }
            if split == "train":
                target = "val" if position % every == every - 1 else "train"
                rows[target].append(row)
                continue
            rows["test"].append(row)
            rows["colour_test"].append({**row, "label": colour})
            rows["shape_test"].append({**row, "label": shape})
    if not all(_is_current(paths[name]) for name in names):
        os.makedirs(directory, exist_ok=True)
        for name in names:
            text = "".join(json.dumps(row) + "\n" for row in rows[name])
            _write_atomically(paths[name], text)
    return {**paths, "skipped": skipped}
