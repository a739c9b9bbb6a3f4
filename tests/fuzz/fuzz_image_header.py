"""Fuzz the image header inspection (`mmzoo.data.images.inspect_image`,
`header_problem`): plain Python that reads a header and a trailer without
decoding, on arbitrary bytes.

It must never raise, and always answer in its own terms: an `ImageInfo` of
a known format (or none) with positive sizes or `None`, and either no
problem or a `(reason, detail)` whose reason is one of `REASONS`. See
README.md here for how to run it.
"""

import os
import sys

import atheris

# The checkout's mmzoo, not an installed one.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

# TensorFlow (images.py imports it for its graph half) stays uninstrumented.
import keras  # noqa: F401
import tensorflow  # noqa: F401

with atheris.instrument_imports(include=["mmzoo.data.images"]):
    from mmzoo.data import images
    from mmzoo.data.manifest import REASONS

LIMITS = (1, 4096, 1 << 22, images.DEFAULT_MAX_PIXELS)


def TestOneInput(data):
    info = images.inspect_image(data)
    assert info.format is None or info.format in images.SUPPORTED_FORMATS, info
    for size in (info.width, info.height):
        assert size is None or (isinstance(size, int) and size > 0), info
    assert isinstance(info.truncated, bool), info
    for max_pixels in LIMITS:
        problem = images.header_problem(info, max_pixels)
        if problem is None:
            assert info.width * info.height <= max_pixels, info
            continue
        reason, detail = problem
        assert reason in REASONS and isinstance(detail, str), problem


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
