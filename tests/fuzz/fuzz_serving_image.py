"""Fuzz the serving graph's image path: `mmzoo.data.images.load_images`
(the header check `check_encoded_images`, then `load_image` on each file), as
the exported SavedModel runs it on the bytes TF Serving receives.

On arbitrary bytes it must return a (32, 32, 3) uint8 image or raise
`tf.errors.InvalidArgumentError` naming `image_bytes[0]`; a crash, any other
error, a hang (`-timeout`) or runaway memory (`-rss_limit_mb`) is a finding. The graph
runs in TensorFlow's C++, which atheris cannot instrument; the Python header
parser (`inspect_image`) is run on each input too, instrumented, so the
fuzzer still follows header shapes it has not seen. See README.md here.
"""

import os
import sys

import atheris

# The checkout's mmzoo, not an installed one.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

# TensorFlow stays uninstrumented (and is imported once, before any input).
import tensorflow as tf

with atheris.instrument_imports(include=["mmzoo.data.images"]):
    from mmzoo.data import images

# Smaller than the 64 Mpx default, so a large declared size is refused (or,
# up to 4 Mpx, decoded) quickly.
MAX_PIXELS = 1 << 22
SIZE = 32


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def serve(contents):
    return images.load_images(contents[tf.newaxis], SIZE, max_pixels=MAX_PIXELS)[0]


def TestOneInput(data):
    # Coverage to steer by (its answers are fuzz_image_header.py's business).
    images.inspect_image(data)
    try:
        pixels = serve(tf.constant(data))
    except tf.errors.InvalidArgumentError as error:
        assert "image_bytes[0] " in error.message, error.message
        return
    assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == tf.uint8, pixels


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
