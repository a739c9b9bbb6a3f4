"""Retrieval: search latency and memory against index size, embedding
throughput, and the exported `search_by_text`.

Three parts, in one process:

- `search`: `mmzoo.retrieval.Index.search` over 10^3 to 10^6 embeddings of
  width 128, for the exact default (a block-wise matrix product in
  keras.ops, the index kept as float32 and as float16) and faiss-cpu's
  flat, IVF and HNSW indexes at mmzoo's default settings, side by side:
  the median latency of one query and of a batch of 100, the index's
  bytes, the resident-memory rise while building each searcher (faiss
  builds on the first search) and while searching, the build time, and
  each approximate backend's Recall@10 against exact search
  (`mmzoo.retrieval.recall_against_exact`). The float16 index's top 10 is
  compared with the float32 one's in the same way.
- `embedding`: images/s and texts/s of a dual encoder's two halves
  (`model.image_encoder.predict`, `model.text_encoder.predict`, each half
  taken once and reused) on synthetic batches of 64, for small_cnn at 64 px
  + bag of words (the easy-VQA benchmark's model) and MobileNetV3-Small at
  224 px (weights=None) + bag of words.
- `export`: a tiny contrastive run is trained, exported with indexes of
  10^3 to 10^5 rows (`export_saved_model(run, index=...)`), loaded back
  with `tf.saved_model.load` and its `search_by_text` signature timed
  beside the same search in Python (`embed_texts` + `Index.search`).

The embeddings are synthetic, clustered unit vectors (`clustered_unit_
vectors`): cluster centres drawn uniformly on the sphere, cluster sizes
log-normal (a few large clusters, many small ones, on average
`CLUSTER_SIZE` rows), each row its centre plus isotropic Gaussian noise of
the centre's norm times `NOISE` (1.5), renormalised: cosine to its centre
about 0.55, to another row of its cluster about 0.3, to rows of other
clusters about 0 (spread 0.09). The queries are fresh draws from the same
mixture, never rows of the index. Uniform random vectors in 128
dimensions would be the hard extreme for an approximate index (no
structure to exploit; every row nearly orthogonal to the query), queries
that are copies of indexed rows, or tight clusters, the easy one (the
nearest cell or graph region holds every answer). Here about 94% of a
query's exact top 10 lies in its own cluster (at 10^5 rows), ranked there
by 128-dimensional noise, and the rest in other clusters; in a probe at
10^5 rows, noise 1.0 (every answer in the query's cluster) gave faiss-ivf
and faiss-hnsw Recall@10 0.99, noise 2.0 (half of them outside) 0.87 and
0.69.

Threads: TensorFlow's intra-op pool (the exact search) and faiss' OpenMP
threads are both set to `--threads` (default: every core this process may
run on), and both are recorded; each faiss searcher is timed again on one
thread, since on a shared machine a second thread may wait for its core.

    python -m benchmarks.retrieval_search --out DIR

It writes `results.json` and `results.md` into `--out` and prints the
markdown.
"""

import argparse
import datetime
import gc
import json
import os
import statistics
import tempfile
import time

import numpy as np

from benchmarks.machine import cpu_cores
from benchmarks.machine import describe

SIZES = (1_000, 10_000, 100_000, 1_000_000)
WIDTH = 128
K = 10
QUERY_BATCHES = (1, 100)
RECALL_QUERIES = 500
CLUSTER_SIZE = 100
NOISE = 1.5
# (label, Index dtype, backend, options): mmzoo's defaults for each backend
# (IVF: nlist = sqrt(n) cells, nprobe = nlist / 4; HNSW: m = 32,
# ef_search = 64; faiss' efConstruction 40), IVF probing 8 cells (for
# speed) and HNSW searched 256 wide (for recall; a second graph, since the
# width is set when the searcher is built).
BACKENDS = (
    ("exact float32", "float32", "exact", {}),
    ("exact float16", "float16", "exact", {}),
    ("faiss-flat", "float32", "faiss-flat", {}),
    ("faiss-ivf", "float32", "faiss-ivf", {}),
    ("faiss-ivf nprobe 8", "float32", "faiss-ivf", {"nprobe": 8}),
    ("faiss-hnsw", "float32", "faiss-hnsw", {}),
    ("faiss-hnsw ef 256", "float32", "faiss-hnsw", {"ef_search": 256}),
)
# (label, build_dual_encoder arguments, image size); batches of 64.
TOWERS = (
    (
        "small_cnn 64 px + bow (the easy-VQA model)",
        {
            "image_tower": "small_cnn",
            "text_tower": "bow",
            "image_filters": [16, 32, 64],
            "embedding_dim": 32,
            "embed_dim": 64,
        },
        64,
    ),
    (
        "mobilenet_v3_small 224 px (weights=None) + bow",
        {"image_tower": "mobilenet_v3_small", "text_tower": "bow"},
        224,
    ),
)
EMBED_BATCH = 64
EMBED_STEPS = 4
MAX_TOKENS = 32
VOCAB_SIZE = 20_000
EXPORT_SIZES = (1_000, 10_000, 100_000)


# === Data ===


def clustered_unit_vectors(count, width, rng, centres=None, noise=NOISE):
    """`count` unit vectors from a mixture of clusters on the sphere.

    Args:
        count: rows.
        width: dimensions.
        rng: a `numpy.random.Generator`.
        centres: `(clusters, width)` unit centres to draw around (queries
            reuse the index's); default `max(10, count // CLUSTER_SIZE)`
            new ones, uniform on the sphere.
        noise: the norm of the Gaussian noise added to a centre, relative
            to the centre's (1.5: cosine to the centre about 0.55).

    Returns:
        `(vectors, centres, clusters)`: float32 `(count, width)` unit
        rows, the centres, and each row's cluster. Cluster sizes are
        log-normal (sigma 1): a row picks its cluster with probability
        proportional to the cluster's weight.
    """
    if centres is None:
        centres = _unit(rng.standard_normal((max(10, count // CLUSTER_SIZE), width)))
        centres = centres.astype(np.float32)
    weights = np.random.default_rng(len(centres)).lognormal(0.0, 1.0, len(centres))
    chosen = rng.choice(len(centres), size=count, p=weights / weights.sum())
    vectors = np.empty((count, width), np.float32)
    for start in range(0, count, 100_000):  # chunks: no (count, width) float64
        rows = chosen[start : start + 100_000]
        jitter = rng.standard_normal((len(rows), width), dtype=np.float32)
        vectors[start : start + len(rows)] = _unit(
            centres[rows] + noise * jitter / np.sqrt(width, dtype=np.float32)
        )
    return vectors, centres, chosen


def _unit(rows):
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _index(vectors, dtype, fingerprint=None):
    from mmzoo.retrieval import Index

    index = Index(vectors.shape[1], "image", dtype, fingerprint)
    return index.add(vectors, [f"row{row}" for row in range(len(vectors))])


# === Measuring ===


def timed_calls(call, inputs, repeats, min_seconds):
    """Per-call seconds of `call(inputs[i])`, cycling through `inputs`: at
    least `repeats` calls and `min_seconds` in all (at most 1,000 calls)."""
    times, started = [], time.perf_counter()
    while len(times) < repeats or (
        time.perf_counter() - started < min_seconds and len(times) < 1_000
    ):
        value = inputs[len(times) % len(inputs)]
        start = time.perf_counter()
        call(value)
        times.append(time.perf_counter() - start)
    return times


class Memory:
    """Resident memory over a block: its rise at the peak (sampled every
    5 ms) and what the block left behind (`retained_mb`)."""

    def __enter__(self):
        from benchmarks.throughput import PeakMemory
        from benchmarks.throughput import _rss

        self._rss = _rss
        self._before = _rss()
        self._peak = PeakMemory().__enter__()
        return self

    def __exit__(self, *exc):
        self._peak.__exit__(*exc)
        self.peak_mb = max(0.0, self._peak.peak_mb)
        self.retained_mb = (self._rss() - self._before) / 2**20
        return False


def set_threads(threads):
    """TensorFlow's intra-op threads and faiss' OpenMP threads, both to
    `threads` (TensorFlow's can only be set before it runs an op)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # already initialised: keep (and report) its own
        pass
    configured = tf.config.threading.get_intra_op_parallelism_threads()
    tensorflow = configured or cpu_cores()  # 0: TensorFlow's default, all cores
    try:
        import faiss
    except ImportError:
        return {"tensorflow_intra_op": tensorflow, "faiss_omp": None}
    faiss.omp_set_num_threads(threads)
    return {"tensorflow_intra_op": tensorflow, "faiss_omp": faiss.omp_get_max_threads()}


def overlap(found, truth):
    """The share of `truth`'s rows (per query) that `found` holds, as
    `recall_against_exact` counts."""
    hits = [
        len(set(a.tolist()) & set(e.tolist()))
        for a, e in zip(found, truth, strict=True)
    ]
    return float(np.sum(hits) / truth.size)


# === Search ===


def latencies(search, query_sets, repeats, min_seconds):
    """Median ms per call, queries/s and the resident-memory peak of
    `search(queries)` for each batch size of `query_sets`."""
    result = {"latency_ms": {}, "queries_per_s": {}, "calls": {}}
    result["search_rss_peak_mb"] = {}
    for batch, sets in query_sets.items():
        with Memory() as memory:
            times = timed_calls(search, sets, repeats, min_seconds)
        median = statistics.median(times)
        result["latency_ms"][str(batch)] = median * 1e3
        result["queries_per_s"][str(batch)] = batch / median
        result["calls"][str(batch)] = len(times)
        result["search_rss_peak_mb"][str(batch)] = memory.peak_mb
    return result


def search_size(
    size, width, backends, batches, k, repeats, min_seconds, rng, faiss_threads
):
    """The rows of every backend at one index size."""
    from mmzoo.retrieval import recall_against_exact

    vectors, centres, clusters = clustered_unit_vectors(size, width, rng)
    largest = max(batches)
    pool, _, pool_clusters = clustered_unit_vectors(
        max(RECALL_QUERIES, largest * max(repeats, 10)), width, rng, centres
    )
    recall_queries = pool[:RECALL_QUERIES]
    query_sets = {
        batch: [pool[i : i + batch] for i in range(0, len(pool) - batch + 1, batch)]
        for batch in batches
    }
    rows, indexes, truth = [], {}, None
    last_use = {entry[1]: position for position, entry in enumerate(backends)}
    for position, (label, dtype, backend, options) in enumerate(backends):
        row = {
            "size": size,
            "width": width,
            "label": label,
            "backend": backend,
            "dtype": dtype,
            "options": dict(options),
        }
        try:
            if dtype not in indexes:
                gc.collect()
                start = time.perf_counter()
                with Memory() as memory:
                    indexes[dtype] = _index(vectors, dtype)
                row["add_seconds"] = time.perf_counter() - start
                row["add_rss_rise_mb"] = memory.retained_mb
            index = indexes[dtype]
            row["index_bytes"] = int(index.embeddings.nbytes)
            # Faiss builds its index on the first search (one query here).
            gc.collect()
            start = time.perf_counter()
            with Memory() as memory:
                index.search(pool[:1], k, backend=backend, **options)
            row["build_seconds"] = time.perf_counter() - start
            row["build_rss_peak_mb"] = memory.peak_mb
            row["build_rss_retained_mb"] = memory.retained_mb

            def search(queries, index=index, backend=backend, options=options):
                return index.search(queries, k, backend=backend, **options)

            row.update(latencies(search, query_sets, repeats, min_seconds))
            if backend != "exact" and faiss_threads not in (None, 1):
                # This machine is shared: a second OpenMP thread may wait for
                # a core, so faiss is timed on one thread as well.
                import faiss

                faiss.omp_set_num_threads(1)
                try:
                    single = latencies(search, query_sets, repeats, min_seconds)
                finally:
                    faiss.omp_set_num_threads(faiss_threads)
                row["latency_ms_1_thread"] = single["latency_ms"]
            if backend == "exact":
                found = index.search(recall_queries, k).rows
                if truth is None:
                    truth = found  # the first exact row is the reference
                    own = clusters[truth] == pool_clusters[:RECALL_QUERIES, None]
                    row["exact_top_k_in_query_cluster"] = float(own.mean())
                row["recall_at_k_vs_exact_float32"] = overlap(found, truth)
            else:
                row["recall_at_k"] = recall_against_exact(
                    index, recall_queries, k, backend, **options
                )
        except Exception as error:  # one failing backend does not stop the run
            row["error"] = f"{type(error).__name__}: {error}"[:2000]
        if last_use[dtype] == position:
            indexes.pop(dtype, None)  # its searchers go with it
        rows.append(row)
        print(_progress(row), flush=True)
    return rows


def _progress(row):
    if "error" in row:
        return f"  {row['size']:>9,} {row['label']:<14} error: {row['error']}"
    latency = ", ".join(f"b{b} {ms:.2f} ms" for b, ms in row["latency_ms"].items())
    recall = row.get("recall_at_k", row.get("recall_at_k_vs_exact_float32"))
    return (
        f"  {row['size']:>9,} {row['label']:<14} {latency}; build "
        f"{row['build_seconds']:.2f} s; recall {recall:.3f}"
    )


# === Embedding throughput ===


def embedding_throughput(towers, batch, steps, repeats, max_tokens, vocab_size):
    """Images/s and texts/s of each dual encoder's halves (`predict`)."""
    import keras

    import mmzoo

    results = []
    for label, arguments, image_size in towers:
        row = {
            "label": label,
            "arguments": dict(arguments),
            "image_size": image_size,
            "batch_size": batch,
            "rows_per_call": batch * steps,
            "max_tokens": max_tokens,
            "vocab_size": vocab_size,
        }
        try:
            keras.utils.set_random_seed(0)
            model = mmzoo.build_dual_encoder(
                image_size=image_size,
                image_weights=None,
                max_tokens=max_tokens,
                vocab_size=vocab_size,
                **arguments,
            )
            row["parameters"] = int(model.count_params())
            row["embed_dim"] = int(model.output["image_embedding"].shape[-1])
            rng = np.random.default_rng(0)
            rows = batch * steps
            inputs = {
                "image": rng.uniform(0, 255, (rows, image_size, image_size, 3)).astype(
                    "float32"
                ),
                "text": rng.integers(1, vocab_size, (rows, max_tokens)).astype("int32"),
            }
            # Each half is a new keras.Model per property access: take it
            # once, as an indexing loop would.
            halves = {"image": model.image_encoder, "text": model.text_encoder}
            for kind, encoder in halves.items():
                x = inputs[kind]
                start = time.perf_counter()
                encoder.predict(x[:batch], batch_size=batch, verbose=0)
                row[f"{kind}_first_call_seconds"] = time.perf_counter() - start
                times = timed_calls(
                    lambda data, encoder=encoder: encoder.predict(
                        data, batch_size=batch, verbose=0
                    ),
                    [x],
                    repeats,
                    0.0,
                )
                row[f"{kind}s_per_s"] = rows / statistics.median(times)
                row[f"{kind}_rates"] = [rows / t for t in times]
        except Exception as error:
            row["error"] = f"{type(error).__name__}: {error}"[:2000]
        results.append(row)
        if "error" in row:
            print(f"  {label}: error: {row['error']}", flush=True)
        else:
            print(
                f"  {label}: {row['images_per_s']:.1f} images/s, "
                f"{row['texts_per_s']:.0f} texts/s",
                flush=True,
            )
    return results


# === The exported search ===


def exported_search(sizes, width, batches, k, repeats, min_seconds, rng):
    """`search_by_text` latency of SavedModels exported with an index."""
    if not sizes:
        return {"available": None, "note": "skipped (no sizes asked for)"}
    import tensorflow as tf

    from mmzoo.export.saved_model import export_saved_model
    from mmzoo.retrieval import embed_texts
    from mmzoo.retrieval import fingerprint
    from mmzoo.runs import load_run

    texts = [f"a {c} picture number {i}" for i in range(200) for c in ("red", "blue")]
    results = {"available": True, "rows": []}
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        run = load_run(tiny_contrastive_run(folder, width))
        results["train_seconds"] = time.perf_counter() - started
        results["run"] = {"image_size": run.image_size, "embed_dim": width}
        code = fingerprint(run)
        for size in sizes:
            row = {"size": size}
            try:
                vectors, _, _ = clustered_unit_vectors(size, width, rng)
                index = _index(vectors, "float32", code)
                start = time.perf_counter()
                path = export_saved_model(
                    run,
                    base=os.path.join(folder, "savedmodels"),
                    name=f"search_{size}",
                    index=index,
                )
                row["export_seconds"] = time.perf_counter() - start
                row["saved_model_bytes"] = _folder_bytes(path)
                loaded = tf.saved_model.load(path)
                signature = loaded.signatures["search_by_text"]
                call = _signature_call(signature, k)
                row["inputs"] = sorted(signature.structured_input_signature[1])
                row["latency_ms"], row["python_latency_ms"] = {}, {}
                for batch in batches:
                    sets = [
                        texts[i : i + batch]
                        for i in range(0, len(texts) - batch + 1, batch)
                    ]
                    call(sets[0])  # warm-up
                    times = timed_calls(call, sets, repeats, min_seconds)
                    row["latency_ms"][str(batch)] = statistics.median(times) * 1e3

                    def python(batch_texts, index=index):
                        return index.search(embed_texts(run, batch_texts), k)

                    python(sets[0])
                    times = timed_calls(python, sets, repeats, min_seconds)
                    row["python_latency_ms"][str(batch)] = (
                        statistics.median(times) * 1e3
                    )
                del loaded, signature, call
            except Exception as error:
                row["error"] = f"{type(error).__name__}: {error}"[:2000]
            results["rows"].append(row)
            print(f"  export {size:,}: {row}", flush=True)
    return results


def _signature_call(signature, k):
    """A function of a list of texts calling `signature` with `k`: its
    string input gets the texts, its integer input `k`."""
    import tensorflow as tf

    specs = signature.structured_input_signature[1]
    text = [name for name, spec in specs.items() if spec.dtype == tf.string]
    counts = [name for name, spec in specs.items() if spec.dtype.is_integer]
    if len(text) != 1 or len(counts) > 1:
        raise ValueError(f"Unexpected search_by_text inputs: {specs}")
    fixed = {name: tf.constant(k, specs[name].dtype) for name in counts}

    def call(texts):
        return signature(**{text[0]: tf.constant(texts)}, **fixed)

    return call


def tiny_contrastive_run(folder, width, images=16, image_size=32):
    """A contrastive run trained for one epoch on coloured squares, its
    shared space `width` wide; returns the run folder."""
    from PIL import Image

    from mmzoo.training import trainer

    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    lines = ["image,text"]
    for number in range(images):
        name = list(colours)[number % len(colours)]
        noise = rng.integers(-20, 20, (image_size, image_size, 3))
        pixels = np.clip(np.asarray(colours[name]) + noise, 0, 255).astype(np.uint8)
        path = os.path.join("images", f"{name}_{number}.png")
        Image.fromarray(pixels).save(os.path.join(folder, path))
        lines += [f"{path},a {name} picture", f"{path},{name} square {number}"]
    manifest = os.path.join(folder, "pairs.csv")
    with open(manifest, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    out = os.path.join(folder, "run")
    trainer.train(
        train=manifest,
        val=manifest,
        task="contrastive",
        epochs=1,
        image_size=image_size,
        max_tokens=8,
        batch_size=8,
        model={"image_filters": [8, 16], "embed_dim": width},
        out=out,
        verbose=0,
    )
    return out


def _folder_bytes(path):
    return sum(
        os.path.getsize(os.path.join(parent, name))
        for parent, _, names in os.walk(path)
        for name in names
    )


# === The run ===


def run(
    sizes=SIZES,
    width=WIDTH,
    backends=BACKENDS,
    batches=QUERY_BATCHES,
    k=K,
    repeats=10,
    min_seconds=1.0,
    hnsw_max_size=None,
    towers=TOWERS,
    embed_batch=EMBED_BATCH,
    embed_steps=EMBED_STEPS,
    embed_repeats=5,
    max_tokens=MAX_TOKENS,
    vocab_size=VOCAB_SIZE,
    export_sizes=EXPORT_SIZES,
    threads=None,
    seed=0,
):
    """Every part, as a JSON-ready dict (see the module docstring).

    Args:
        sizes: index sizes of the search part.
        width: the embedding width.
        backends: `(label, dtype, backend, options)` of each searcher.
        batches: queries per search call.
        k: results per query (and the k of Recall@k).
        repeats, min_seconds: each latency is the median of at least
            `repeats` calls and `min_seconds` of them.
        hnsw_max_size: skip faiss-hnsw above this size (its build time);
            `None`: every size.
        towers: `(label, build_dual_encoder arguments, image size)` of the
            embedding part (empty: skipped).
        embed_batch, embed_steps, embed_repeats: batch size, batches per
            `predict` call, and calls (the median is reported).
        max_tokens, vocab_size: the text towers' input.
        export_sizes: index sizes of the exported search (empty: skipped).
        threads: TensorFlow's and faiss' threads; default every core.
        seed: of the synthetic data.
    """
    started = time.perf_counter()
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    threads = threads or cpu_cores()
    thread_counts = set_threads(threads)
    machine = describe("tensorflow")
    machine["numpy"] = np.__version__
    try:
        import faiss

        machine["faiss"] = faiss.__version__
    except ImportError:
        machine["faiss"] = None
    rng = np.random.default_rng(seed)
    search, skipped = [], []
    for size in sizes:
        chosen = []
        for entry in backends:
            if entry[2] == "faiss-hnsw" and hnsw_max_size and size > hnsw_max_size:
                skipped.append({"size": size, "label": entry[0]})
            else:
                chosen.append(entry)
        search += search_size(
            size,
            width,
            chosen,
            batches,
            k,
            repeats,
            min_seconds,
            rng,
            thread_counts["faiss_omp"],
        )
        gc.collect()
    embedding = embedding_throughput(
        towers, embed_batch, embed_steps, embed_repeats, max_tokens, vocab_size
    )
    export = exported_search(export_sizes, width, batches, k, repeats, min_seconds, rng)
    return {
        "machine": machine,
        "started": stamp,
        "threads": thread_counts,
        "settings": {
            "sizes": list(sizes),
            "width": width,
            "k": k,
            "batches": list(batches),
            "repeats": repeats,
            "min_seconds": min_seconds,
            "recall_queries": RECALL_QUERIES,
            "cluster_size": CLUSTER_SIZE,
            "noise": NOISE,
            "hnsw_max_size": hnsw_max_size,
            "seed": seed,
        },
        "data": {
            "kind": "clustered unit vectors",
            "clusters": "max(10, size // 100), centres uniform on the sphere",
            "cluster_sizes": "log-normal weights (sigma 1)",
            "noise": f"isotropic Gaussian of norm {NOISE} x the centre's, "
            "then renormalised",
            "queries": "fresh draws from the same clusters, not index rows",
        },
        "search": search,
        "skipped": skipped,
        "embedding": embedding,
        "export": export,
        "wall_seconds": time.perf_counter() - started,
    }


# === Report ===


def _mb(value):
    return f"{value / 2**20:,.1f}" if value >= 2**20 else f"{value / 2**20:.2f}"


def _ms(value):
    return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


def markdown(result):
    """The results as a section for benchmarks/RESULTS.md."""
    settings, machine, threads = (
        result["settings"],
        result["machine"],
        result["threads"],
    )
    k = settings["k"]
    batches = [str(b) for b in settings["batches"]]
    lines = [
        "## Retrieval: search latency and memory against index size "
        "(`python -m benchmarks.retrieval_search`)",
        "",
        f"`mmzoo.retrieval.Index.search(queries, k={k}, backend=...)` over synthetic "
        f"clustered unit vectors of width {settings['width']} (clusters of about "
        f"{settings['cluster_size']} rows, log-normal sizes, each row its centre "
        f"plus Gaussian noise of {settings['noise']:g} times the centre's norm, "
        "renormalised; queries fresh draws from the same clusters; share of the "
        "exact top 10 in the query's own cluster: "
        + ", ".join(
            f"{row['exact_top_k_in_query_cluster']:.0%} at {row['size']:,}"
            for row in result["search"]
            if "exact_top_k_in_query_cluster" in row
        )
        + "). Latency: the "
        f"median of at least {settings['repeats']} calls and "
        f"{settings['min_seconds']:g} s per cell, through `Index.search` (query "
        "normalisation and the `SearchResults` with ids included). Recall@"
        f"{k}: `recall_against_exact` over {settings['recall_queries']} queries; "
        "for float16, the overlap of its exact top 10 with float32's. Build: the "
        "first `search` call, which builds the faiss index (one query); for exact "
        "search there is nothing to build. Memory: the index's embeddings, and the "
        "resident-memory rise (sampled every 5 ms) at the peak of the build and "
        "what it kept (the JSON's `search_rss_peak_mb` is the rise while "
        "searching, over memory that earlier rows freed and the allocators "
        "reuse, so it is only telling for the first row of a size). Threads: "
        f"TensorFlow intra-op {threads['tensorflow_intra_op']}"
        f", faiss OpenMP {threads['faiss_omp']}.",
        "",
        "| size | backend | "
        + " | ".join(f"ms, {b} {'query' if b == '1' else 'queries'}" for b in batches)
        + " | faiss on 1 thread: "
        + " / ".join(batches)
        + f" ms | Recall@{k} | build s | embeddings MB | build RSS peak / kept MB |",
        "|---|---|" + "---|" * (len(batches) + 5),
    ]
    for row in result["search"]:
        head = f"| {row['size']:,} | {row['label']} |"
        if "error" in row:
            lines.append(head + f" error: {row['error'][:200]} |")
            continue
        recall = row.get("recall_at_k", row.get("recall_at_k_vs_exact_float32"))
        # float16's top 10 differs from float32's in a row or two per 10^4.
        recall = f"{recall:.4f}" if row["dtype"] == "float16" else f"{recall:.3f}"
        single = row.get("latency_ms_1_thread")
        single = " / ".join(_ms(single[b]) for b in batches) if single else "-"
        if row["backend"] == "exact":
            build = memory = "-"
        else:
            seconds = row["build_seconds"]
            build = f"{seconds:.3f}" if seconds < 1 else f"{seconds:.3g}"
            memory = (
                f"{row['build_rss_peak_mb']:,.0f} / {row['build_rss_retained_mb']:,.0f}"
            )
        lines.append(
            head
            + "".join(f" {_ms(row['latency_ms'][b])} |" for b in batches)
            + f" {single} | {recall} | {build} | {_mb(row['index_bytes'])} | "
            f"{memory} |"
        )
    for entry in result["skipped"]:
        lines.append(
            f"| {entry['size']:,} | {entry['label']} | skipped (build time; "
            f"`hnsw_max_size` {settings['hnsw_max_size']:,}) |"
        )
    adds = [row for row in result["search"] if "add_rss_rise_mb" in row]
    if adds:
        lines += [
            "",
            "Building the `Index` itself (`Index.add` of every row with an id): "
            + "; ".join(
                f"{row['size']:,} {row['dtype']}: {row['add_seconds']:.2f} s, "
                f"{row['add_rss_rise_mb']:,.0f} MB resident"
                for row in adds
            )
            + ".",
        ]
    lines += ["", *embedding_markdown(result["embedding"])]
    lines += ["", *export_markdown(result["export"], batches)]
    lines += [
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores (shared), no GPU; "
        f"Python {machine['python']}, TensorFlow {machine.get('tensorflow')}, Keras "
        f"{machine['keras']}, NumPy {machine['numpy']}, faiss-cpu {machine['faiss']}, "
        f"mmzoo {machine['mmzoo']}. Wall time {result['wall_seconds']:.0f} s, "
        f"started {result['started']}.",
    ]
    return "\n".join(lines) + "\n"


def embedding_markdown(rows):
    if not rows:
        return ["Embedding throughput: not measured."]
    lines = [
        "Embedding throughput of the dual encoders' halves (`model.image_encoder` / "
        "`model.text_encoder`, taken once, `.predict` on synthetic inputs, batch "
        f"{rows[0]['batch_size']}, {rows[0]['rows_per_call']} rows per call, median "
        f"of {len(rows[0].get('image_rates', [])) or '?'} calls; texts of "
        f"{rows[0]['max_tokens']} tokens):",
        "",
        "| dual encoder | parameters | embed dim | images/s | texts/s "
        "| first call (trace) image / text s |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['label']} | error: {row['error'][:200]} | | | | |")
            continue
        lines.append(
            f"| {row['label']} | {row['parameters']:,} | {row['embed_dim']} | "
            f"{row['images_per_s']:,.1f} | {row['texts_per_s']:,.0f} | "
            f"{row['image_first_call_seconds']:.2f} / "
            f"{row['text_first_call_seconds']:.2f} |"
        )
    return lines


def export_markdown(export, batches):
    if not export.get("available"):
        return [f"Exported `search_by_text`: {export['note']}."]
    lines = [
        "Exported `search_by_text` (a SavedModel from `export_saved_model(run, "
        "index=index)` of a tiny contrastive run, embed dim "
        f"{export['run']['embed_dim']}, loaded with `tf.saved_model.load` in the "
        "same process; text in, ids and scores out) against the same search in "
        "Python (`embed_texts` + `Index.search`), median ms per call:",
        "",
        "| index size | "
        + " | ".join(
            f"SavedModel, {b} {noun} | Python, {b} {noun}"
            for b in batches
            for noun in ["text" if b == "1" else "texts"]
        )
        + " | SavedModel MB | export s |",
        "|---|" + "---|" * (2 * len(batches) + 2),
    ]
    for row in export["rows"]:
        if "error" in row:
            lines.append(f"| {row['size']:,} | error: {row['error'][:200]} |")
            continue
        lines.append(
            f"| {row['size']:,} |"
            + "".join(
                f" {_ms(row['latency_ms'][b])} | {_ms(row['python_latency_ms'][b])} |"
                for b in batches
            )
            + f" {_mb(row['saved_model_bytes'])} | {row['export_seconds']:.1f} |"
        )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the results")
    parser.add_argument(
        "--sizes",
        default=",".join(str(s) for s in SIZES),
        help="index sizes, comma-separated",
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument(
        "--hnsw-max-size", type=int, default=None, help="skip HNSW above this size"
    )
    parser.add_argument(
        "--export-sizes", default=",".join(str(s) for s in EXPORT_SIZES)
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--no-embedding", action="store_true", help="skip the embedding part"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    def sizes(text):
        return tuple(int(float(value)) for value in text.split(",") if value)

    result = run(
        sizes=sizes(args.sizes),
        repeats=args.repeats,
        min_seconds=args.min_seconds,
        hnsw_max_size=args.hnsw_max_size,
        towers=() if args.no_embedding else TOWERS,
        export_sizes=sizes(args.export_sizes),
        threads=args.threads,
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as file:
        json.dump(result, file, indent=2)
    text = markdown(result)
    with open(os.path.join(args.out, "results.md"), "w") as file:
        file.write(text)
    print(text)
    return 1 if _failed(result) else 0


def _failed(result):
    rows = result["search"] + result["embedding"] + result["export"].get("rows", [])
    return any("error" in row for row in rows)


if __name__ == "__main__":
    raise SystemExit(main())
