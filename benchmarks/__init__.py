"""mmzoo's benchmark suite: `mmzoo benchmark --suite quick --out DIR`.

Modules:
    suite: the suites, the command line and the run that writes DIR.
    throughput: training and inference images/s, peak memory and achieved
        FLOP/s of fused models against their bare image towers.
    latency: SavedModel `serving_default` against Keras `predict`, and
        TFLite per quantisation in the LiteRT interpreter (XNNPACK).
    pipeline: the tf.data input pipeline (`make_dataset`).
    machine: what the figures were measured on, and the device's peak.
    report: the markdown tables and PNG plots of a results JSON.

Speed is measured here and written to `benchmarks/RESULTS.md`; it is never
asserted in unit tests.
"""

import csv
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_environment(backend):
    """The environment of a benchmark subprocess on Keras backend `backend`.

    Keras picks its backend once, at import, so a different backend needs
    a fresh process; `PYTHONPATH` lets it import this package from the
    repository wherever it runs.
    """
    return {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [ROOT, os.environ.get("PYTHONPATH")])
        ),
    }


def write_csv_manifests(folder, rows, columns=("image", "text")):
    """`{split: rows}` as `folder/<split>.csv` manifests with `columns`;
    returns `{split: path}`. Each file is renamed into place, so a run of
    another seed reading it never sees half of one."""
    os.makedirs(folder, exist_ok=True)
    manifests = {}
    for split, entries in rows.items():
        manifests[split] = os.path.join(folder, f"{split}.csv")
        staging = f"{manifests[split]}.{os.getpid()}"
        with open(staging, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(columns)
            writer.writerows(entries)
        os.replace(staging, manifests[split])
    return manifests
