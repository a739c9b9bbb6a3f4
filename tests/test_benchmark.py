"""The benchmark suite runs, and its arithmetic is right.

Speed itself is never asserted here (benchmarks/RESULTS.md holds the
figures): these tests run `mmzoo benchmark` on one tiny configuration on
each backend and check what it writes, and test the overhead ratios,
targets and sweep expansion on known numbers.
"""

import argparse
import json
import os
import subprocess
import sys

import pytest

from benchmarks import ROOT
from benchmarks import machine
from benchmarks import report
from benchmarks import suite
from benchmarks import throughput
from benchmarks.throughput import BARE
from benchmarks.throughput import Config

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
TINY = [
    "--towers=small_cnn",
    "--text-towers=bow",
    "--fusions=concat",
    "--image-size=32",
    "--batch-sizes=4",
    "--steps=1",
    "--repeats=1",
    "--warmup=1",
    "--calls=2",
]


def benchmark(out, *args, backend="tensorflow"):
    return subprocess.run(
        [sys.executable, "-m", "mmzoo.cli", "benchmark", f"--out={out}", *args],
        capture_output=True,
        text=True,
        env={**ENV, "KERAS_BACKEND": backend},
        timeout=600,
    )


def read_results(folder):
    with open(folder / "results.json") as file:
        return json.load(file)


@pytest.mark.slow
def test_quick_suite_runs_on_a_tiny_configuration(tmp_path):
    out = tmp_path / "bench"
    result = benchmark(
        out, *TINY, "--parts=throughput,serving,tflite", "--memory=isolated"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_results(out)

    # Throughput: the bare tower first, then the fused model, both measured.
    rows = results["throughput"]
    assert [row["fusion"] for row in rows] == [BARE, "concat"]
    for row in rows:
        assert "error" not in row, row
        assert row["train_images_per_s"] > 0 and row["infer_images_per_s"] > 0
        assert len(row["train_rates"]) == 1
        assert row["train_peak_memory_mb"] > row["weights_mb"] > 0
        assert row["memory_measure"].endswith("each model alone in a fresh process")
        assert row["forward_gflops_per_image"] > 0
        assert row["train_tflops"] == pytest.approx(
            3 * row["forward_gflops_per_image"] * row["train_images_per_s"] / 1e3
        )
    bare, fused = rows
    assert fused["parameters"] > bare["parameters"]
    [ratio] = results["overhead"]
    assert ratio["paired"]  # one group: the two took turns
    assert ratio["train_ratio"] == pytest.approx(
        fused["train_rates"][0] / bare["train_rates"][0]
    )
    assert "target" not in ratio  # targets apply to keras.applications towers

    # Serving: the SavedModel answers as Keras does, at both batch sizes.
    [serving] = results["serving"].values()
    assert sorted(serving) == ["1", "16"]
    for batch in serving.values():
        assert batch["max_abs_diff_saved_model_vs_keras"] < 1e-5
        for key in ("keras_predict", "saved_model_serving_default"):
            assert batch[key]["median_ms"] > 0

    # TFLite: every quantisation, sizes against float32, int8 much smaller.
    [tflite] = results["tflite"].values()
    for quantize in ("none", "float16", "dynamic", "int8"):
        assert tflite[quantize]["xnnpack_1_thread"]["median_ms"] > 0
        assert tflite[quantize]["max_abs_diff_vs_keras"] < 0.05
    assert tflite["none"]["max_abs_diff_vs_keras"] < 1e-5
    # XNNPACK took the float32 graph (in a piece or two), fewer than int8's.
    assert (
        1
        <= tflite["none"]["xnnpack_partitions"]
        <= tflite["int8"]["xnnpack_partitions"]
    )
    assert tflite["int8"]["size_vs_float32"] < 0.35
    assert results["targets"]["checks"]  # the int8 size and speed checks

    # The report: tables and plots.
    markdown = (out / "results.md").read_text()
    for heading in ("## Training and inference throughput", "## Serving latency"):
        assert heading in markdown
    assert "ResNet50 training, TensorFlow, 1x A100" in markdown
    for name in ("throughput", "overhead", "serving", "tflite"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pipeline" not in results  # not asked for


@pytest.mark.slow
def test_gpu_command_runs_on_jax_without_tensorflow(tmp_path):
    """benchmarks/gpu.sh, at tiny size on this CPU, where `import
    tensorflow` fails as it does on the GPU machine (no TensorFlow there)."""
    stub = tmp_path / "no_tensorflow" / "tensorflow"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('raise ImportError("not installed")\n')
    out = tmp_path / "gpu"
    result = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu.sh"), "run", str(out)]
        + [flag for flag in TINY if not flag.startswith("--calls")]
        # One precision, the GPU sweep's fragile one (float32 is every other
        # test's); test_gpu_suite_is_the_issue_sweep checks the sweep asks
        # for both.
        + ["--precisions=mixed_bfloat16", "--parts=throughput,tflite"],
        capture_output=True,
        text=True,
        env={**ENV, "PYTHONPATH": str(stub.parent)},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_results(out)
    assert results["suite"] == "gpu"
    assert results["machine"]["backend"] == "jax"
    rows = results["throughput"]
    # The bare tower, then the fused model.
    assert [(row["fusion"], row["precision"]) for row in rows] == [
        (BARE, "mixed_bfloat16"),
        ("concat", "mixed_bfloat16"),
    ]
    assert all("error" not in row and row["xla"] for row in rows)  # JAX is XLA
    assert all(row["forward_gflops_per_image"] > 0 for row in rows)  # XLA's
    assert len(results["overhead"]) == 1
    assert "TensorFlow" in results["skipped"]["tflite"]
    assert "tflite" not in results
    assert "## Training and inference throughput" in (out / "results.md").read_text()
    for name in ("throughput", "overhead"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpu_suite_is_the_issue_sweep():
    plan = suite.settings(suite.build_parser().parse_args(["--suite=gpu", "--out=x"]))
    assert plan["parts"] == ["throughput"]
    assert [model[0] for model in plan["models"]] == [
        "resnet50",
        "vgg16",
        "mobilenet_v3_small",
        "small_cnn",
    ]
    for _, size, texts, fusions in plan["models"]:
        assert size == 224 and texts == ["bow", "cnn"]
        assert fusions == ["concat", "weighted_sum", "gated", "cross_attention"]
    assert plan["batch_sizes"] == [256]
    assert plan["precisions"] == ["float32", "mixed_bfloat16"]
    groups = suite.configurations(plan, "jax")
    assert len(groups) == 8 and all(len(group) == 9 for group in groups)
    assert all(config.xla for group in groups for config in group)


def test_backend_flag_switches_process(tmp_path):
    """--backend jax from a TensorFlow process re-runs on JAX."""
    out = tmp_path / "bench"
    result = benchmark(out, *TINY, "--parts=pipeline", "--backend=jax")
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_results(out)
    assert results["machine"]["backend"] == "jax"
    assert list(results["skipped"]) == ["pipeline"]
    assert "--backend tensorflow" in results["skipped"]["pipeline"]


def test_pipeline_part_measures_make_dataset(tmp_path, monkeypatch):
    from benchmarks import pipeline

    monkeypatch.setenv("MMZOO_HOME", str(tmp_path / "home"))
    results = pipeline.measure(
        repeats=1, photos=4, batches=2, calls=[1], training=False
    )
    assert results["easy_vqa_64px_images_per_s"]["1"] > 0
    assert results["easy_vqa_64px_images_per_s"]["memory cache"] > 0
    assert results["jpeg_500x375_to_224px_images_per_s"]["1"] > 0
    assert "| 1 |" in pipeline.markdown(results)


def test_bad_arguments_name_the_flag(tmp_path):
    result = benchmark(tmp_path, "--towers=resnet5")
    assert result.returncode == 2
    assert "--towers must be a comma-separated list of" in result.stderr
    assert "'resnet5'" in result.stderr


def test_missing_backend_is_named():
    if suite._backend_available("torch"):
        pytest.skip("torch is installed here")
    result = benchmark("unused", "--backend=torch")
    assert result.returncode == 2
    assert "--backend torch needs the `torch` package" in result.stderr


# === Arithmetic on known numbers ===


def row(tower, fusion, train, infer, text="bow", batch=16):
    config = Config(tower, None if fusion == BARE else text, fusion, 224, batch)
    return {
        **config.__dict__,
        "label": config.label(),
        "train_images_per_s": train,
        "infer_images_per_s": infer,
    }


def test_overhead_pairs_each_fusion_with_its_bare_tower():
    rows = [
        row("resnet50", BARE, 100.0, 400.0),
        row("resnet50", "concat", 95.0, 380.0),
        row("resnet50", "cross_attention", 70.0, 300.0),
        row("resnet50", "bilinear", 90.0, 390.0),
        row("resnet50", "concat", 50.0, 100.0, batch=64),  # no bare at 64
        row("small_cnn", BARE, 1000.0, 4000.0),
        row("small_cnn", "gated", 500.0, 2000.0, text="cnn"),
    ]
    ratios = {r["label"]: r for r in throughput.overhead(rows)}
    concat = ratios["resnet50 + bow + concat @224px b16 float32"]
    assert concat["train_ratio"] == pytest.approx(0.95)
    assert concat["infer_ratio"] == pytest.approx(0.95)
    assert concat["target"] == 0.90 and concat["meets_target"]
    cross = ratios["resnet50 + bow + cross_attention @224px b16 float32"]
    assert cross["target"] == 0.80 and not cross["meets_target"]
    assert "target" not in ratios["resnet50 + bow + bilinear @224px b16 float32"]
    assert "resnet50 + bow + concat @224px b64 float32" not in ratios
    small = ratios["small_cnn + cnn + gated @224px b16 float32"]
    assert small["train_ratio"] == pytest.approx(0.5) and "target" not in small

    results = {
        "overhead": list(ratios.values()),
        "tflite": {"m": {"int8_size_vs_float32": 0.26, "int8_speedup_1_thread": 0.8}},
    }
    checks = report.targets(results)
    assert (checks["met"], checks["missed"]) == (2, 2)  # cross-attention, speed
    assert [c["met"] for c in checks["checks"][-2:]] == [True, False]


def parse(*argv):
    return suite.build_parser().parse_args(["--out=x", *argv])


def test_quick_suite_covers_the_targeted_fusions_and_a_bare_tower():
    plan = suite.settings(parse())
    groups = suite.configurations(plan, "tensorflow")
    assert all(group[0].fusion == BARE for group in groups)  # bare tower first
    assert all(not any(c.fusion == BARE for c in group[1:]) for group in groups)
    configs = [config for group in groups for config in group]
    fused = {(c.text_tower, c.fusion) for c in configs if c.image_tower != "small_cnn"}
    assert fused >= {
        (text, fusion)
        for text in ("bow", "cnn")
        for fusion in ("concat", "weighted_sum", "gated", "cross_attention")
    }
    assert (None, BARE) in fused


def test_full_suite_sweeps_every_combination():
    plan = suite.settings(parse("--suite=full"))
    groups = suite.configurations(plan, "tensorflow")
    assert len(groups) == len(suite.TOWERS) * 2 * len(suite.PRECISIONS) * 2
    assert {len(group) for group in groups} == {
        1 + len(suite.TEXT_TOWERS) * len(suite.FUSIONS)
    }
    configs = [config for group in groups for config in group]
    assert len(set(configs)) == len(configs)
    # On JAX every configuration is XLA-compiled: half as many.
    assert len(suite.configurations(plan, "jax")) == len(groups) // 2


def test_narrowing_flags():
    plan = suite.settings(
        parse("--suite=full", "--towers=resnet50", "--fusions=gated", "--xla=on")
    )
    groups = suite.configurations(plan, "tensorflow")
    configs = [config for group in groups for config in group]
    assert {c.image_tower for c in configs} == {"resnet50"}
    assert {c.fusion for c in configs} == {BARE, "gated"}
    assert {c.xla for c in configs} == {True}
    assert [m[0] for m in plan["latency_models"]] == ["resnet50"]
    # A tower the quick suite leaves out gets its targeted fusions.
    [(tower, size, texts, fusions)] = suite.settings(parse("--towers=vgg16"))["models"]
    assert (tower, size, texts) == ("vgg16", 224, ["bow", "cnn"])
    assert "cross_attention" in fusions
    with pytest.raises(argparse.ArgumentTypeError, match="Received: 'gatd'"):
        suite._csv("--fusions", suite.FUSIONS)("gatd")


def test_gpu_peaks_come_from_the_datasheet_table():
    assert machine.gpu_peak_tflops("NVIDIA H100 80GB HBM3", "float32") == 494.7
    assert machine.gpu_peak_tflops("NVIDIA A100-SXM4-40GB", "mixed_bfloat16") == 312
    assert machine.gpu_peak_tflops("Some Future GPU", "float32") is None


def test_report_rebuilds_from_the_json(tmp_path):
    rows = [row("resnet50", BARE, 100.0, 400.0), row("resnet50", "concat", 95.0, 380.0)]
    results = {
        "suite": "quick",
        "command": "mmzoo benchmark --out x",
        "started": "2026-11-23T00:00:00+00:00",
        "machine": {"cpu": "cpu", "cores": 2, "python": "3.11", "backend": "jax"},
        "settings": {"repeats": 3, "steps": 3, "warmup": 2},
        "anchors": machine.ANCHORS,
        "throughput": [{**r, "parameters": 10} for r in rows],
        "overhead": throughput.overhead(rows),
        "skipped": {},
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert report.main([str(path)]) == 0
    markdown = (tmp_path / "results.md").read_text()
    assert "| resnet50 + bow + concat @224px b16 float32 | 95.0 | 0.95 |" in markdown
    assert "| ours: resnet50 @224px b16 float32 | 100.0 | this run |" in markdown
    assert (tmp_path / "overhead.png").exists()


def test_paired_ratio_is_the_median_of_repeat_by_repeat_ratios():
    bare = {**row("resnet50", BARE, 80.0, 400.0), "group": 1}
    fused = {**row("resnet50", "gated", 60.0, 380.0), "group": 1}
    bare.update(train_rates=[100.0, 60.0, 80.0], infer_rates=[400.0] * 3)
    # The machine slowed down during the bare tower's second repeat and the
    # fused model's third: paired, the ratio is 0.90, not 60 / 80.
    fused.update(train_rates=[90.0, 57.0, 60.0], infer_rates=[380.0] * 3)
    [ratio] = throughput.overhead([bare, fused])
    assert ratio["paired"]
    assert ratio["train_ratio"] == pytest.approx(0.90)
    assert ratio["infer_ratio"] == pytest.approx(0.95)
    # Measured in different groups, only the medians compare.
    assert throughput.overhead([bare, {**fused, "group": 2}]) == []  # no bare in 2
    unpaired = throughput.overhead([{**bare, "group": None}, {**fused, "group": None}])
    assert not unpaired[0]["paired"]
    assert unpaired[0]["train_ratio"] == pytest.approx(0.75)


def test_a_failing_configuration_does_not_stop_its_group():
    configs = [
        Config("small_cnn", None, BARE, 32, 2),
        Config("small_cnn", "bow", "no_such_fusion", 32, 2),
        Config("small_cnn", "bow", "concat", 32, 2),
        # A dual encoder trains without labels, in the same turns.
        Config("small_cnn", "bow", f"{throughput.DUAL}siglip", 32, 2),
    ]
    rows = throughput.measure_group(configs, steps=1, repeats=2, warmup=1)
    assert [("error" in r) for r in rows] == [False, True, False, False]
    assert "`fusion` must be one of" in rows[1]["error"]
    for row in rows[2:]:
        assert len(row["train_rates"]) == 2 and row["infer_images_per_s"] > 0
    for row in rows:
        row["group"] = 0
    ratios = {r["fusion"]: r["train_ratio"] for r in throughput.overhead(rows)}
    assert set(ratios) == {"concat", "dual:siglip"} and ratios["dual:siglip"] > 0


def test_retrieval_search_runs_every_part_at_a_tiny_size():
    from benchmarks import retrieval_search

    tower = {"image_tower": "small_cnn", "text_tower": "bow", "image_filters": [4]}
    result = retrieval_search.run(
        sizes=(200, 1000),
        width=16,
        repeats=2,
        min_seconds=0.0,
        towers=(("tiny", {**tower, "embed_dim": 8}, 32),),
        embed_batch=4,
        embed_steps=1,
        embed_repeats=2,
        max_tokens=4,
        vocab_size=50,
        export_sizes=(200,),
    )
    json.dumps(result)  # JSON-ready
    rows = result["search"]
    labels = [label for label, *_ in retrieval_search.BACKENDS]
    assert [(row["size"], row["label"]) for row in rows] == [
        (size, label) for size in (200, 1000) for label in labels
    ]
    for row in rows:
        assert "error" not in row, row
        assert set(row["latency_ms"]) == {"1", "100"}
        assert all(value > 0 for value in row["latency_ms"].values())
        assert row["build_seconds"] > 0
        assert row["index_bytes"] == row["size"] * 16 * (
            2 if row["dtype"] == "float16" else 4
        )
        if row["backend"] == "exact":
            recall = row["recall_at_k_vs_exact_float32"]
            if row["dtype"] == "float32":
                assert recall == 1.0
                assert 0 <= row["exact_top_k_in_query_cluster"] <= 1
        else:
            recall = row["recall_at_k"]
            assert all(v > 0 for v in row["latency_ms_1_thread"].values())
        assert 0 <= recall <= 1
    assert next(r for r in rows if r["label"] == "faiss-flat")["recall_at_k"] == 1.0
    assert result["threads"]["faiss_omp"] >= 1

    [embedding] = result["embedding"]
    assert "error" not in embedding, embedding
    assert embedding["images_per_s"] > 0 and embedding["texts_per_s"] > 0

    # The exported search_by_text, timed on a SavedModel with an index.
    [row] = result["export"]["rows"]
    assert "error" not in row, row
    assert all(value > 0 for value in row["latency_ms"].values())
    text = retrieval_search.markdown(result)
    assert "| 1,000 | faiss-hnsw |" in text and "| tiny |" in text
