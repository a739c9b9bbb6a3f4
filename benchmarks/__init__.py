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
