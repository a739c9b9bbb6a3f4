"""Retrieval over a dual encoder's shared space: an index, search, zero-shot.

A trained contrastive run (`mmzoo train --task contrastive`) embeds images
and texts into one space; this module searches it.

- `Index`: the embeddings of one modality (the images of a collection, or
  its captions) with their ids and metadata, unit-normalised so that a dot
  product is a cosine similarity, kept as float32 or float16. `add` appends,
  `save` writes a folder atomically, `load_index` reads it back, `search`
  finds the top k rows of query embeddings: exactly, by a matrix product
  over blocks of rows (the default), or through faiss-cpu (`backend=
  "faiss-flat" | "faiss-ivf" | "faiss-hnsw"`) for collections that outgrow
  exact search.
- `build_index(run, manifest, modality)`: a manifest's images (each image
  once, however many captions it has) or texts embedded through the
  run's own tf.data pipeline (bad rows skipped and counted, as in
  training), with a progress bar.
- `fingerprint(run)`: a hash of the encoder's weights and vocabulary; an
  index stores the one it was built with, and searching it with another
  model is refused.
- `zero_shot_classifier` / `zero_shot_evaluate`: class embeddings from
  label prompts ("a photo of a {label}", several templates averaged), and
  the accuracy and macro-F1 of the nearest class on a labelled manifest.

Index folder:

  INDEX/
    index.json        modality, width, dtype, count, fingerprint, the run
    embeddings.npy    (count, width), unit rows
    items.jsonl       one line per row: {"id", "path", "text", "line", ...}
"""

import hashlib
import json
import os
import shutil
import uuid

import numpy as np

from mmzoo.checks import check_choice

MODALITIES = ("image", "text")
DTYPES = ("float32", "float16")
BACKENDS = ("exact", "faiss-flat", "faiss-ivf", "faiss-hnsw")
INDEX_FILE = "index.json"
EMBEDDINGS_FILE = "embeddings.npy"
ITEMS_FILE = "items.jsonl"
FORMAT = 1
DEFAULT_TEMPLATES = ("a photo of a {label}", "a {label}", "{label}")

# Rows scored at once by the exact search: a (queries, block) float32
# matrix, e.g. 256 x 65,536 = 64 MB, whatever the index size.
_BLOCK_ROWS = 65_536


class RetrievalError(ValueError):
    """An index that cannot be used as asked (empty, damaged, built by
    another model); the message says why."""


class SearchResults:
    """The top k rows for each query.

    Attributes:
        ids: one list of ids per query, best first.
        scores: `(queries, k)` cosine similarities, descending per row.
        rows: `(queries, k)` row numbers in the index.
        items: one list of item dicts per query (id, path, text, ...).

    An approximate backend may find fewer than `k` rows for a query (faiss'
    IVF, when the cells it probes hold fewer): the places left are row -1,
    id `None`, item `None` and score `-inf`.
    """

    def __init__(self, index, scores, rows):
        self.scores = np.asarray(scores, np.float32)
        self.rows = np.asarray(rows, np.int64)
        # An approximate backend may find fewer than k rows (faiss' IVF when
        # the probed cells hold fewer): row -1, id and item None, score -inf.
        self.scores[self.rows < 0] = -np.inf
        self.ids = [
            [index.ids[row] if row >= 0 else None for row in query]
            for query in self.rows
        ]
        self.items = [
            [index.items[row] if row >= 0 else None for row in query]
            for query in self.rows
        ]

    def __len__(self):
        return len(self.rows)

    def __repr__(self):
        return f"<SearchResults: {len(self)} queries, k={self.rows.shape[1]}>"


class Index:
    """Unit-normalised embeddings of one modality, with ids and metadata.

    Args:
        width: the embedding width.
        modality: `"image"` or `"text"`: what the rows embed.
        dtype: how the embeddings are kept, `"float32"` or `"float16"`
            (half the memory; scores within about 1e-3 of float32).
        fingerprint: the encoder's (`fingerprint(run)`); searches with
            another encoder are refused.
        info: a JSON-ready dict kept in index.json (e.g. the run folder).

    Example:

    >>> index = Index(width=64, modality="image")
    >>> index.add(embeddings, ids=["a.jpg", "b.jpg"], items=[{"path": ...}, ...])
    >>> results = index.search(query_embeddings, k=5)
    >>> results.ids[0], results.scores[0]
    """

    def __init__(self, width, modality, dtype="float32", fingerprint=None, info=None):
        check_choice("modality", modality, MODALITIES)
        check_choice("dtype", dtype, DTYPES)
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(
                f"`width` must be a positive integer. Received: width={width!r}"
            )
        self.width = width
        self.modality = modality
        self.dtype = dtype
        self.fingerprint = fingerprint
        self.info = dict(info or {})
        self.embeddings = np.zeros((0, width), dtype)
        self.ids = []
        self.items = []
        self._positions = {}
        self._searchers = {}

    def __len__(self):
        return len(self.ids)

    def __repr__(self):
        return (
            f"<Index of {len(self):,} {self.modality} embeddings, width "
            f"{self.width}, {self.dtype}>"
        )

    # === Building ===

    def add(self, embeddings, ids, items=None):
        """Append rows: embeddings `(n, width)`, one new id each.

        The embeddings are L2-normalised here (a dual encoder's already
        are; Deep CCA's are not), so scores are cosine similarities.

        Args:
            embeddings: `(n, width)` array.
            ids: `n` strings, none already in the index.
            items: `n` JSON-ready dicts of metadata (path, text, ...).
        """
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.width:
            raise ValueError(
                f"This index holds embeddings of width {self.width}. Received: "
                f"shape {embeddings.shape}"
            )
        if not np.all(np.isfinite(embeddings)):
            raise ValueError("`embeddings` holds NaN or infinite values.")
        ids = [str(value) for value in ids]
        items = [{} for _ in ids] if items is None else [dict(i) for i in items]
        if len(ids) != len(embeddings) or len(items) != len(embeddings):
            raise ValueError(
                f"{len(embeddings)} embeddings need as many ids and items. "
                f"Received: {len(ids)} ids, {len(items)} items"
            )
        repeated = [value for value in ids if value in self._positions]
        if len(set(ids)) != len(ids):
            seen = set()
            repeated += [value for value in ids if value in seen or seen.add(value)]
        if repeated:
            raise ValueError(
                f"Ids must be unique in an index; {len(repeated)} repeat, e.g. "
                f"{repeated[0]!r}."
            )
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        unit = embeddings / np.maximum(norms, 1e-12)
        self.embeddings = np.concatenate([self.embeddings, unit.astype(self.dtype)])
        for value, item in zip(ids, items, strict=True):
            self._positions[value] = len(self.ids)
            self.ids.append(value)
            self.items.append({"id": value, **item})
        self._searchers.clear()
        return self

    # === Search ===

    def search(self, queries, k=10, backend="exact", **options):
        """The `k` rows most similar to each query embedding.

        Args:
            queries: `(q, width)` embeddings (normalised here), or one
                `(width,)` embedding.
            k: results per query, at most the index size.
            backend: `"exact"` (a matrix product over blocks of rows, in
                keras.ops), or faiss-cpu's `"faiss-flat"` (exact),
                `"faiss-ivf"` (inverted lists: `nlist`, `nprobe`) or
                `"faiss-hnsw"` (a graph: `m`, `ef_search`).
            **options: the faiss index's settings (see `FaissSearcher`).

        Returns:
            `SearchResults`.
        """
        check_choice("backend", backend, BACKENDS)
        if not len(self):
            raise RetrievalError(
                f"The {self.modality} index is empty: add embeddings first "
                "(`mmzoo index RUN --data M --out INDEX`)."
            )
        queries = np.asarray(queries, np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2 or queries.shape[1] != self.width:
            raise ValueError(
                f"Queries must be embeddings of width {self.width}. Received: "
                f"shape {queries.shape}"
            )
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"`k` must be a positive integer. Received: k={k!r}")
        k = min(k, len(self))
        queries = queries / np.maximum(
            np.linalg.norm(queries, axis=1, keepdims=True), 1e-12
        )
        if backend == "exact":
            if "exact" not in self._searchers:
                self._searchers["exact"] = _blocks(self.embeddings)
            scores, rows = _exact_top_k(self._searchers["exact"], queries, k)
        else:
            key = (backend, tuple(sorted(options.items())))
            if key not in self._searchers:
                self._searchers[key] = FaissSearcher(self, backend[6:], **options)
            scores, rows = self._searchers[key].search(queries, k)
        return SearchResults(self, scores, rows)

    # === Files ===

    def save(self, path):
        """Write the index folder at `path`, atomically.

        The files are written to a new folder beside `path`, which then
        takes its place: a reader sees the old index or the new one, never
        half of one, and a crash leaves the old one.
        """
        path = os.path.abspath(os.fspath(path))
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        if os.path.exists(path) and not _is_index_folder(path):
            raise RetrievalError(
                f"{path!r} exists and is not an mmzoo index: choose another --out."
            )
        staging = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}")
        os.makedirs(staging)
        try:
            np.save(os.path.join(staging, EMBEDDINGS_FILE), self.embeddings)
            with open(os.path.join(staging, ITEMS_FILE), "w", encoding="utf-8") as file:
                for item in self.items:
                    file.write(json.dumps(item, ensure_ascii=False) + "\n")
            header = {
                "format": FORMAT,
                "modality": self.modality,
                "width": self.width,
                "dtype": self.dtype,
                "count": len(self),
                "fingerprint": self.fingerprint,
                "info": self.info,
            }
            with open(os.path.join(staging, INDEX_FILE), "w", encoding="utf-8") as file:
                json.dump(header, file, indent=2)
            _replace_folder(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return path


def _is_index_folder(path):
    return os.path.isfile(os.path.join(path, INDEX_FILE))


def _replace_folder(new, path):
    """Put folder `new` at `path` (replacing an old one) by renames only."""
    if not os.path.exists(path):
        os.rename(new, path)
        return
    old = f"{new}.old"
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def load_index(path):
    """Read an index folder written by `Index.save`.

    Raises:
        FileNotFoundError: no index at `path`.
        RetrievalError: a damaged or inconsistent index (the message says
            which file).
    """
    path = os.fspath(path)
    header_path = os.path.join(path, INDEX_FILE)
    if not os.path.isfile(header_path):
        raise FileNotFoundError(
            f"No mmzoo index at {path!r} (no {INDEX_FILE}); build one with "
            "`mmzoo index RUN --data M --out INDEX`."
        )
    try:
        with open(header_path, encoding="utf-8") as file:
            header = json.load(file)
        embeddings = np.load(os.path.join(path, EMBEDDINGS_FILE), allow_pickle=False)
        with open(os.path.join(path, ITEMS_FILE), encoding="utf-8") as file:
            items = [json.loads(line) for line in file if line.strip()]
    except (OSError, ValueError, KeyError) as error:
        raise RetrievalError(f"{path}: a damaged index ({error}).") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RetrievalError(f"{header_path}: not an index of format {FORMAT}.")
    count = header.get("count")
    if embeddings.shape != (count, header.get("width")) or len(items) != count:
        raise RetrievalError(
            f"{path}: a damaged index: {INDEX_FILE} says {count} rows of width "
            f"{header.get('width')}, {EMBEDDINGS_FILE} holds {embeddings.shape}, "
            f"{ITEMS_FILE} {len(items)} items."
        )
    index = Index(
        header["width"],
        header["modality"],
        header["dtype"],
        header.get("fingerprint"),
        header.get("info"),
    )
    if count:
        index.embeddings = embeddings.astype(index.dtype)
        index.items = items
        index.ids = [item["id"] for item in items]
        index._positions = {value: row for row, value in enumerate(index.ids)}
    return index


def load_indexes(path):
    """`{modality: Index}` of a folder: one index, or `image/` and `text/`
    indexes side by side (`mmzoo index --modality both`)."""
    path = os.fspath(path)
    if _is_index_folder(path):
        index = load_index(path)
        return {index.modality: index}
    parts = {
        modality: load_index(os.path.join(path, modality))
        for modality in MODALITIES
        if _is_index_folder(os.path.join(path, modality))
    }
    if not parts:
        # The message of a folder holding no index at all.
        load_index(path)
    return parts


def _blocks(embeddings):
    """The index rows as tensors of `_BLOCK_ROWS` rows, kept as stored."""
    from keras import ops

    return [
        ops.convert_to_tensor(embeddings[start : start + _BLOCK_ROWS])
        for start in range(0, len(embeddings), _BLOCK_ROWS)
    ]


def _exact_top_k(blocks, queries, k):
    """Top-k dot products, block by block of index rows, in keras.ops.

    keras-rs' `BruteForceRetrieval` layer scores every candidate at once
    and holds them as float32 weights; a block-wise merge keeps memory at
    one `(queries, block)` matrix for any index size and reads float16
    rows as they are stored.
    """
    from keras import ops

    # (block, width) @ (width, queries), transposed: the small matrix is
    # the one transposed.
    queries = ops.transpose(ops.convert_to_tensor(queries, "float32"))
    best_scores = best_rows = None
    start = 0
    for block in blocks:
        block_scores = ops.matmul(ops.cast(block, "float32"), queries)
        scores, rows = ops.top_k(ops.transpose(block_scores), k=min(k, block.shape[0]))
        rows = ops.cast(rows, "int64") + start
        start += block.shape[0]
        if best_scores is not None:
            scores = ops.concatenate([best_scores, scores], axis=1)
            rows = ops.concatenate([best_rows, rows], axis=1)
            scores, order = ops.top_k(scores, k=min(k, scores.shape[1]))
            rows = ops.take_along_axis(rows, order, axis=1)
        best_scores, best_rows = scores, rows
    return ops.convert_to_numpy(best_scores), ops.convert_to_numpy(best_rows)


class FaissSearcher:
    """An index's rows in a faiss-cpu index, searched by inner product.

    Args:
        index: the `Index`.
        kind: `"flat"` (exact), `"ivf"` (inverted lists over `nlist`
            k-means cells, default the square root of the size, `nprobe`
            of them searched, default a quarter) or `"hnsw"` (a navigable
            small-world graph of `m` links, searched `ef_search` wide).
        nlist, nprobe, m, ef_search: the settings of those kinds.
    """

    def __init__(self, index, kind="flat", nlist=None, nprobe=None, m=32, ef_search=64):
        try:
            import faiss
        except ImportError:
            raise ImportError(
                "The faiss backends need faiss-cpu: pip install 'mmzoo[retrieval]' "
                "(or faiss-cpu)."
            ) from None
        check_choice("kind", kind, ("flat", "ivf", "hnsw"))
        vectors = np.ascontiguousarray(index.embeddings, np.float32)
        width = index.width
        if kind == "flat":
            self.index = faiss.IndexFlatIP(width)
        elif kind == "ivf":
            nlist = nlist or max(1, int(np.sqrt(len(vectors))))
            self.index = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(width), width, nlist, faiss.METRIC_INNER_PRODUCT
            )
            self.index.train(vectors)
            # A quarter of the cells by default: recall before speed.
            self.index.nprobe = min(nprobe or max(1, nlist // 4), nlist)
        else:
            self.index = faiss.IndexHNSWFlat(width, m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efSearch = ef_search
        self.index.add(vectors)
        self.kind = kind

    def search(self, queries, k):
        scores, rows = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        return scores, rows


def recall_against_exact(index, queries, k=10, backend="faiss-hnsw", **options):
    """The fraction of the exact top-k that an approximate backend finds."""
    exact = index.search(queries, k).rows
    approximate = index.search(queries, k, backend=backend, **options).rows
    found = [
        len(set(a.tolist()) & set(e.tolist()))
        for a, e in zip(approximate, exact, strict=True)
    ]
    return float(np.sum(found) / exact.size)


# === Runs: fingerprints, embedding, indexes ===


def fingerprint(run):
    """A hash of a run's encoders: its weights and its vocabulary.

    Two runs embed alike only if both are equal; an index stores the
    fingerprint of the run that built it.
    """
    digest = hashlib.sha256()
    for variable in run.model.weights:
        value = np.asarray(variable)
        digest.update(f"{variable.path}:{value.dtype}:{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    if run.tokenizer is not None:
        vocabulary = getattr(run.tokenizer, "vocabulary", None)
        digest.update(json.dumps(list(vocabulary or [])).encode("utf-8"))
    return digest.hexdigest()[:16]


def check_fingerprint(index, run):
    """Raise `RetrievalError` unless `index` was built by `run`'s encoders."""
    if index.fingerprint is not None and index.fingerprint != fingerprint(run):
        built = index.info.get("run", "another model")
        raise RetrievalError(
            f"This {index.modality} index was built by another model ({built}, "
            f"fingerprint {index.fingerprint}); {run.directory} has fingerprint "
            f"{fingerprint(run)}. Rebuild the index with this run, or search it "
            "with the run that built it."
        )


def _contrastive_run(run):
    from mmzoo.runs import Run
    from mmzoo.runs import load_run

    run = run if isinstance(run, Run) else load_run(run)
    if run.task.fused:
        raise ValueError(
            f"{run.directory} is a {run.task.name} run; retrieval needs a "
            "contrastive one (`mmzoo train --task contrastive`)."
        )
    return run


def embed_texts(run, texts, batch_size=256):
    """Text embeddings `(n, width)` from a contrastive run."""
    import tensorflow as tf

    run = _contrastive_run(run)
    texts = [str(text) for text in texts]
    encoder = run.model.text_encoder
    outputs = []
    for start in range(0, len(texts), batch_size):
        batch = tf.constant(texts[start : start + batch_size])
        inputs = batch if run.tokenizer is None else run.tokenizer(batch)
        outputs.append(np.asarray(encoder(inputs, training=False)))
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def embed_images(run, images, max_pixels=None):
    """Image embeddings `(n, width)` of image files (or their bytes).

    Each image passes the one image guard (`prepare_image`).
    """
    from mmzoo.data.images import prepare_image
    from mmzoo.data.manifest import DEFAULT_MAX_PIXELS

    run = _contrastive_run(run)
    pixels = [
        prepare_image(
            image, run.image_size, run.resize, max_pixels or DEFAULT_MAX_PIXELS
        )
        for image in images
    ]
    encoder = run.model.image_encoder
    return np.asarray(encoder(np.concatenate(pixels), training=False))


def build_index(
    run,
    data,
    modality="image",
    dtype="float32",
    batch_size=64,
    progress=None,
    base=None,
):
    """Embed a manifest's images or texts into a new `Index`.

    The manifest goes through the run's own pipeline (`make_dataset`, as in
    evaluation): bad rows are skipped and counted, images are decoded and
    resized as in training, texts tokenised by the run's tokenizer.
    Images: one row per distinct image (id: its path, relative to `base`
    where it lies inside it, else absolute), with the captions the
    manifest gives it. Texts: one row per manifest row (id:
    `"<manifest name>:<line>"`), with the image it describes.

    Args:
        run: a contrastive run (folder or `Run`).
        data: a manifest (CSV, JSONL, TFRecord).
        modality: `"image"` or `"text"`.
        dtype: `"float32"` or `"float16"`.
        batch_size: rows per batch.
        progress: show Keras' progress bar (default: on a terminal).
        base: the folder image ids are relative to; default the
            manifest's (an index appended to keeps its first one,
            `index.info["base"]`).

    Returns:
        `(index, report)`: the `Index` and the data check's `DataReport`.
    """
    import sys

    from mmzoo.data.dataset import make_dataset
    from mmzoo.data.sources import read_manifest

    check_choice("modality", modality, MODALITIES)
    run = _contrastive_run(run)
    manifest = read_manifest(data, run.config.get("columns"))
    usable = _usable_rows(manifest)
    captions = _captions(manifest, usable)
    if modality == "image":
        # Each image once: its first row with a usable text (the pipeline
        # checks each row's text as well as its image).
        manifest = _first_row_per_image(manifest, usable)
    dataset, report, _ = make_dataset(
        manifest,
        run.tokenizer,
        run.image_size,
        batch_size,
        training=False,
        task=run.task,
        resize=run.resize,
        return_report=True,
    )
    good = report.good
    folder = os.path.abspath(base or os.path.dirname(os.path.abspath(manifest.source)))
    stem = os.path.splitext(os.path.basename(os.path.normpath(manifest.source)))[0]
    verbose = (sys.stdout.isatty() if progress is None else progress) and 1 or 0
    if modality == "image":
        encoder = run.model.image_encoder
        inputs = dataset.map(lambda x, y: x["image"])
    else:
        encoder = run.model.text_encoder
        key = "text" if run.tokenizer is None else "tokens"
        inputs = dataset.map(lambda x, y: x[key])
    embeddings = encoder.predict(inputs, verbose=verbose)

    ids, items = [], []
    for row in good:
        if modality == "image":
            ids.append(_image_id(manifest, row, folder, stem))
            values = {"captions": captions.get(manifest.images[row])}
        else:
            ids.append(f"{stem}:{manifest.lines[row]}")
            values = {"text": manifest.texts[row]}
        items.append(_item(manifest, row, label=manifest.labels[row], **values))
    index = Index(
        int(embeddings.shape[1]),
        modality,
        dtype,
        fingerprint(run),
        {
            "run": os.path.abspath(run.directory),
            "model": run.model.name,
            "base": folder,
        },
    )
    index.add(embeddings, ids, items)
    return index, report


def _usable_rows(manifest):
    """Per row: its own fields pass the check (labels not read)."""
    from mmzoo.data.manifest import row_problems

    return [
        not row_problems(manifest, row, needs_label=False)
        for row in range(len(manifest))
    ]


def _captions(manifest, usable):
    """{image path: the usable texts of its rows} (file manifests)."""
    captions = {}
    for row, path in enumerate(manifest.images):
        if path is not None and usable[row]:
            captions.setdefault(path, []).append(manifest.texts[row])
    return captions


def _first_row_per_image(manifest, usable):
    """The manifest with one row per image file (TFRecords: as they are)."""
    if manifest.reader.images_inside:
        return manifest
    chosen = {}
    for row, path in enumerate(manifest.images):
        if path not in chosen or (usable[row] and not chosen[path][1]):
            chosen[path] = (row, usable[row])
    subset = manifest.take(sorted(row for row, _ in chosen.values()))
    # The rows refused while parsing still count as skipped.
    subset.problems = list(manifest.problems)
    return subset


def _image_id(manifest, row, folder, stem):
    path = manifest.images[row]
    if path is None:  # inside a TFRecord record: the record's line
        return f"{stem}:{manifest.lines[row]}"
    relative = os.path.relpath(path, folder)
    return path if relative.startswith(os.pardir) else relative


def _item(manifest, row, **values):
    item = {"line": manifest.lines[row]}
    if manifest.images[row] is not None:
        item["path"] = manifest.images[row]
    item.update({key: value for key, value in values.items() if value is not None})
    return item


# === Zero-shot classification ===


def zero_shot_classifier(run, labels, templates=DEFAULT_TEMPLATES):
    """One unit embedding per label, from prompts built with `templates`.

    Each template (a string with `{label}`) makes a prompt per label; a
    label's embedding is the mean of its prompts' unit embeddings,
    normalised again (CLIP's prompt ensembling).

    Returns:
        `(len(labels), width)` array.
    """
    templates = list(templates)
    if not templates or not all(
        isinstance(t, str) and "{label}" in t for t in templates
    ):
        raise ValueError(
            "`templates` must be strings holding '{label}', e.g. "
            f"'a photo of a {{label}}'. Received: templates={templates!r}"
        )
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("`labels` is empty: zero-shot needs the class names.")
    prompts = [
        template.replace("{label}", label) for label in labels for template in templates
    ]
    embeddings = embed_texts(run, prompts).reshape(len(labels), len(templates), -1)
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)
    classes = embeddings.mean(axis=1)
    return classes / np.maximum(np.linalg.norm(classes, axis=-1, keepdims=True), 1e-12)


def zero_shot_evaluate(
    run, data, templates=DEFAULT_TEMPLATES, labels=None, batch_size=64
):
    """Classify a labelled manifest's images by the nearest label prompt.

    No training on the labels: the class embeddings come from
    `zero_shot_classifier`, and each image's scores are its cosine
    similarities to them. Reported like `mmzoo evaluate` for a multiclass
    run (`mmzoo.metrics.classification_metrics`: accuracy, macro-F1,
    top-k, confusion matrix).

    Args:
        run: a contrastive run.
        data: a manifest with a label per row (one class each).
        templates: prompt templates holding `{label}`.
        labels: the class names; default the manifest's labels, sorted.
        batch_size: rows per batch.

    Returns:
        The metrics dict, with `templates` and `skipped_rows`.
    """
    from mmzoo.data.dataset import make_dataset
    from mmzoo.data.manifest import LabelVocabulary
    from mmzoo.data.sources import read_manifest
    from mmzoo.metrics import classification_metrics

    run = _contrastive_run(run)
    manifest = read_manifest(data, run.config.get("columns"))
    if labels is None:
        present = [label for label in manifest.labels if label is not None]
        if not present:
            raise ValueError(
                f"{manifest.source}: no row has a label; zero-shot evaluation "
                "compares each image's nearest label with its own."
            )
        vocabulary = LabelVocabulary.fit(present)
    else:
        vocabulary = LabelVocabulary(list(labels))
    dataset, report, _ = make_dataset(
        manifest,
        run.tokenizer,
        run.image_size,
        batch_size,
        training=False,
        task="multiclass",
        labels=vocabulary,
        resize=run.resize,
        return_report=True,
    )
    classes = zero_shot_classifier(run, vocabulary.names, templates)
    images = run.model.image_encoder.predict(
        dataset.map(lambda x, y: x["image"]), verbose=0
    )
    images /= np.maximum(np.linalg.norm(images, axis=1, keepdims=True), 1e-12)
    targets = np.concatenate([np.asarray(y) for _, y in dataset])
    metrics = classification_metrics(targets, images @ classes.T, vocabulary.names)
    metrics["templates"] = list(templates)
    metrics["skipped_rows"] = report.num_bad
    return metrics
