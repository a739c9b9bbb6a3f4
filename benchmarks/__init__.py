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
