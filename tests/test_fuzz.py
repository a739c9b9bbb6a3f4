"""The fuzz targets in tests/fuzz, each run briefly from its seed corpus.

CI runs each for a few seconds and asserts a clean exit: the harness works
and the seeds, plus some thousands of mutations, break nothing. The long
runs that look for bugs are in tests/fuzz/README.md.
"""

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("atheris", reason="atheris (a dev extra) runs the fuzz targets")

FUZZ = pathlib.Path(__file__).parent / "fuzz"
sys.path.insert(0, str(FUZZ))
import seeds  # noqa: E402

SECONDS = 3
TARGETS = {
    "fuzz_manifest.py": "manifest",
    "fuzz_image_header.py": "images",
    "fuzz_serving_image.py": "images",
}
# Found by fuzz_serving_image.py and fixed: a BMP shorter than its header
# fields made the graph read past its zero padding, and `tf.strings.substr`
# failed with a message quoting the raw bytes, which Python cannot decode.
SHORT_BMP = b"BM\xb6F\x00\x00\x00C\x01\x0c\x00\x00\x00\n"


def start(target, folder):
    """Fuzz `target` for SECONDS from its seeds, in the background."""
    corpus = folder / "corpus"
    corpus.mkdir(parents=True)
    seed_corpus = seeds.write_seeds(TARGETS[target], folder / "seeds")
    command = [
        sys.executable,
        str(FUZZ / target),
        f"-max_total_time={SECONDS}",
        "-seed=1",
        "-timeout=30",  # seconds for one input: longer is a hang
        "-rss_limit_mb=4096",  # TensorFlow alone holds about 0.8 GB
        "-max_len=4096",
        f"-artifact_prefix={folder}/",
        str(corpus),  # new inputs go here, never into the checkout
        str(seed_corpus),
    ]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        cwd=folder,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )


def test_fuzz_targets_run_clean(tmp_path):
    # All at once: each spends most of its time importing TensorFlow.
    runs = {target: start(target, tmp_path / target) for target in TARGETS}
    failures = []
    for target, process in runs.items():
        output, _ = process.communicate(timeout=240)
        if process.returncode != 0 or " runs in " not in output:
            failures.append(f"{target} exited {process.returncode}:\n{output[-5000:]}")
    assert not failures, "\n\n".join(failures)


def test_a_short_bmp_is_refused_naming_its_index():
    # The serving contract on any bytes: an image, or InvalidArgumentError
    # naming the element.
    import tensorflow as tf

    from mmzoo.data import images

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[0\] "):
        images.load_images(tf.constant([SHORT_BMP]), 8)
    assert images.check_image(SHORT_BMP) == ("truncated_image", "BMP file ends early")
