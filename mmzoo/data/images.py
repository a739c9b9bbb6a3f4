"""Image bytes to pixels: header checks, decoding, resizing, augmentation.

`load_image` is the one function that turns encoded bytes into model input,
and it is shared: the training input pipeline maps it over tf.data, and the
exported SavedModel calls it on the bytes that TF Serving receives. It and
everything it calls (`decode_image`, `resize_image`) are therefore built from
core TensorFlow ops only (no `tf.py_function`, PIL or NumPy), run under
`tf.function` with unknown shapes, and give the same pixels in both places.

Before decoding, the header is checked, because TensorFlow's decoders fail a
whole step on a truncated file (`InvalidArgumentError`) and happily allocate
whatever size a header declares, so a small file can decode to gigabytes.
The check exists twice, reading one table of formats (`IMAGE_FORMATS`: each
one's signature and end marker) and one pixel limit (`DEFAULT_MAX_PIXELS`):

- `inspect_image` and `header_problem`: plain Python reading the header and
  the end of a file without decoding it, for the training data check;
- `check_encoded_image`: the same rules in TensorFlow ops, for the exported
  serving graph, where a bad request must fail naming the bad image.

`augment_image` is for training only and is never exported.
"""

import numbers
import struct
from typing import NamedTuple

import tensorflow as tf

from mmzoo.checks import check_choice
from mmzoo.data.manifest import DEFAULT_MAX_PIXELS


class ImageFormat(NamedTuple):
    """An encoded image format, as its bytes show it.

    Attributes:
        name: the `ImageInfo.format` name, e.g. `"jpeg"`.
        signature: the bytes every such file starts with.
        trailer: the end marker a complete file ends with, or `None` where
            the header's sizes say where the file ends (BMP).
    """

    name: str
    signature: bytes
    trailer: bytes | None


# The signatures `tf.io.decode_image` sniffs, so the header checks recognise
# exactly the files that TensorFlow would try to decode. The Python and the
# graph check both read this table.
IMAGE_FORMATS = (
    ImageFormat("jpeg", b"\xff\xd8\xff", b"\xff\xd9"),
    ImageFormat("png", b"\x89PNG\r\n\x1a\n", b"\x00\x00\x00\x00IEND\xaeB`\x82"),
    ImageFormat("gif", b"GIF8", b";"),
    ImageFormat("bmp", b"BM", None),
)
SUPPORTED_FORMATS = tuple(image_format.name for image_format in IMAGE_FORMATS)
RESIZE_MODES = ("pad", "stretch")

_FORMAT = {image_format.name: image_format for image_format in IMAGE_FORMATS}
# "JPEG, PNG, GIF or BMP", for messages.
_FORMAT_NAMES = (
    ", ".join(name.upper() for name in SUPPORTED_FORMATS[:-1])
    + f" or {SUPPORTED_FORMATS[-1].upper()}"
)

# Some writers pad a file after its trailer (to an even length, a sector, or
# with a newline). More than this many such bytes is read as a file cut short
# inside its data, e.g. a download pre-allocated with zeros and never
# finished.
_TRAILER_SLACK = 32
_PADDING = b"\x00\t\n\r "

# SOF0..SOF15 hold the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the
# range but are not frame headers.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field.
_JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])

# BMP compressions stored as plain rows: BI_RGB, BI_BITFIELDS,
# BI_ALPHABITFIELDS. Others (RLE, embedded JPEG/PNG) are only sized by bfSize.
_BMP_UNCOMPRESSED = (0, 3, 6)
_BMP_INFO_HEADER_SIZES = (40, 52, 56, 64, 108, 124)
_BMP_CORE_HEADER_SIZE = 12


class ImageInfo(NamedTuple):
    """What an image file's header says, read without decoding it.

    Attributes:
        format: one of `SUPPORTED_FORMATS`, or `None` when the bytes start
            with none of their signatures.
        width: width in pixels, or `None` when the header is missing, cut
            short or unreadable.
        height: height in pixels, or `None` likewise.
        truncated: `True` when the file ends before its data does (no
            trailer, or fewer bytes than the header requires).
    """

    format: str | None
    width: int | None
    height: int | None
    truncated: bool


_UNKNOWN = ImageInfo(None, None, None, False)


def inspect_image(data: bytes) -> ImageInfo:
    """Read an image's format, size and completeness from its bytes.

    Pure Python: nothing is decoded or allocated in proportion to the
    declared size, so the size can be checked against a limit before
    decoding (a decompression bomb declares a huge size in a small file). It
    reads the header and the last few bytes only, and never raises on
    arbitrary bytes: bytes that are not a supported image give
    `format=None`.

    The truncation check looks at the trailer each format ends with (JPEG
    `FFD9`, PNG `IEND`, GIF `3B`, tolerating up to 32 bytes of zero or
    whitespace padding after it) or, for BMP, at the size the header
    requires. It catches files cut short, not files corrupted in the middle.

    Args:
        data: the whole file's bytes (any bytes-like object).

    Returns:
        An `ImageInfo(format, width, height, truncated)`.

    Example:

    >>> data = tf.io.encode_png(tf.zeros([4, 6, 3], tf.uint8)).numpy()
    >>> inspect_image(data)
    ImageInfo(format='png', width=6, height=4, truncated=False)
    >>> inspect_image(data[: len(data) // 2])
    ImageInfo(format='png', width=6, height=4, truncated=True)
    >>> inspect_image(b"hello")
    ImageInfo(format=None, width=None, height=None, truncated=False)
    """
    # A memoryview slices without copying the whole file.
    view = memoryview(data).cast("B")
    head = bytes(view[:8])
    for image_format in IMAGE_FORMATS:
        if head.startswith(image_format.signature):
            return _INSPECTORS[image_format.name](view)
    return _UNKNOWN


def _read(view, offset, size):
    """`size` bytes at `offset`, or None where the data ends first."""
    if offset + size > len(view):
        return None
    return bytes(view[offset : offset + size])


def _is_cut_short(view, name):
    """No trailer of format `name` at the end (after at most a little padding)."""
    trailer = _FORMAT[name].trailer
    tail = bytes(view[-(len(trailer) + _TRAILER_SLACK) :])
    return not tail.rstrip(_PADDING).endswith(trailer)


def _inspect_jpeg(view):
    size = _jpeg_frame_size(view)
    if size is None:
        # Ran out of data before the frame header.
        return ImageInfo("jpeg", None, None, True)
    width, height = size
    return ImageInfo("jpeg", width, height, _is_cut_short(view, "jpeg"))


def _jpeg_frame_size(view):
    """(width, height) from the SOFn segment, or None if the data ends first.

    (None, None) for a malformed marker sequence. Segments are skipped by
    their length, so an EXIF thumbnail (a JPEG inside APP1) is never mistaken
    for the frame.
    """
    position = 2
    end = len(view)
    while True:
        if position >= end:
            return None
        if view[position] != 0xFF:
            return (None, None)
        # Any number of 0xFF fill bytes may precede a marker.
        while position < end and view[position] == 0xFF:
            position += 1
        if position >= end:
            return None
        marker = view[position]
        position += 1
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker in (0xD8, 0xD9, 0xDA):
            # A second SOI, the end of image or the start of scan data before
            # any frame header: malformed.
            return (None, None)
        field = _read(view, position, 2)
        if field is None:
            return None
        (length,) = struct.unpack(">H", field)
        if length < 2:
            return (None, None)
        if marker in _JPEG_SOF_MARKERS:
            frame = _read(view, position + 2, 5)
            if frame is None:
                return None
            _, height, width = struct.unpack(">BHH", frame)
            # Height 0 means "given later by a DNL marker": not known here.
            return (width or None, height or None)
        position += length


def _inspect_png(view):
    # IHDR must be the first chunk: length 13, type, width, height.
    header = _read(view, 8, 16)
    if header is None:
        return ImageInfo("png", None, None, True)
    length, kind, width, height = struct.unpack(">I4sII", header)
    truncated = _is_cut_short(view, "png")
    if length != 13 or kind != b"IHDR" or not width or not height:
        return ImageInfo("png", None, None, truncated)
    return ImageInfo("png", width, height, truncated)


def _inspect_gif(view):
    # The logical screen size follows the 6-byte "GIF87a"/"GIF89a" header;
    # TensorFlow decodes every frame onto a canvas of this size.
    screen = _read(view, 6, 4)
    if screen is None:
        return ImageInfo("gif", None, None, True)
    width, height = struct.unpack("<HH", screen)
    truncated = _is_cut_short(view, "gif")
    return ImageInfo("gif", width or None, height or None, truncated)


def _inspect_bmp(view):
    file_header = _read(view, 2, 16)
    if file_header is None:
        return ImageInfo("bmp", None, None, True)
    file_size, _, data_offset, header_size = struct.unpack("<IIII", file_header)
    if header_size == _BMP_CORE_HEADER_SIZE:
        # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes, never compressed.
        fields = _read(view, 18, 8)
        if fields is None:
            return ImageInfo("bmp", None, None, True)
        width, height, _, bits = struct.unpack("<HHHH", fields)
        compression = 0
    elif header_size in _BMP_INFO_HEADER_SIZES:
        fields = _read(view, 18, 16)
        if fields is None:
            return ImageInfo("bmp", None, None, True)
        width, height, _, bits, compression = struct.unpack("<iiHHI", fields)
    else:
        return ImageInfo("bmp", None, None, len(view) < file_size)
    # A negative height means rows are stored top-down.
    height = abs(height)
    if compression in _BMP_UNCOMPRESSED and bits and width > 0:
        # Each row is padded to a multiple of 4 bytes.
        row_size = (bits * width + 31) // 32 * 4
        required = data_offset + row_size * height
    else:
        required = file_size
    truncated = len(view) < required
    if width <= 0 or height == 0:
        return ImageInfo("bmp", None, None, truncated)
    return ImageInfo("bmp", width, height, truncated)


_INSPECTORS = {
    "jpeg": _inspect_jpeg,
    "png": _inspect_png,
    "gif": _inspect_gif,
    "bmp": _inspect_bmp,
}


def header_problem(info, max_pixels=DEFAULT_MAX_PIXELS):
    """Why an image's header refuses it, or `None` when it passes.

    The rules the training data check skips a row by (`check_manifest`);
    `check_encoded_image` applies them in the serving graph.

    Args:
        info: the `ImageInfo` from `inspect_image`.
        max_pixels: the most pixels the header may declare.

    Returns:
        `None` for a complete image of at most `max_pixels` pixels, else
        `(reason, detail)`: a reason of `mmzoo.data.manifest.REASONS`
        (`"undecodable_image"`, `"truncated_image"` or `"image_too_large"`)
        and what exactly is wrong.

    Example:

    >>> data = tf.io.encode_png(tf.zeros([4, 6, 3], tf.uint8)).numpy()
    >>> header_problem(inspect_image(data)) is None
    True
    >>> header_problem(inspect_image(data), max_pixels=10)
    ('image_too_large', '6x4 = 24 pixels > max_pixels=10')
    """
    if info.format is None:
        return "undecodable_image", f"not a {_FORMAT_NAMES} image"
    if info.truncated:
        return "truncated_image", f"{info.format.upper()} file ends early"
    if info.width is None or info.height is None:
        return "undecodable_image", f"unreadable {info.format.upper()} header"
    if info.width * info.height > max_pixels:
        return (
            "image_too_large",
            f"{info.width}x{info.height} = {info.width * info.height:,} "
            f"pixels > max_pixels={max_pixels:,}",
        )
    return None


# === The header check in the graph ===

_UNKNOWN_FORMAT = len(IMAGE_FORMATS)


def check_encoded_image(contents, index, max_pixels=DEFAULT_MAX_PIXELS):
    """`contents`, once its header shows a complete, not too large image.

    The serving graph's header check, in core TensorFlow ops. TensorFlow's
    decoders fail with messages that do not say which image of a batch is
    bad, and allocate whatever size a header declares; this check runs
    first and names the element. It reads the same `IMAGE_FORMATS`, end
    markers and padding rule as `inspect_image`, so a request is refused for
    the reasons the training data check skips a row (`header_problem`).
    Two things are left to the decoder, which refuses them itself: a BMP cut
    short (its header's sizes, not an end marker, say where it ends) and a
    header unreadable beyond its size fields.

    Args:
        contents: a scalar string tensor holding the encoded file.
        index: the element's position in its batch (an int or int32
            scalar), named in the messages as `image_bytes[index]`.
        max_pixels: the most pixels the header may declare (a Python int).

    Returns:
        `contents`, to be decoded once the checks pass.

    Raises:
        tf.errors.InvalidArgumentError: when the checks run, for bytes of no
            supported format ("image_bytes[i] could not be decoded: it is
            empty or not a JPEG, PNG, GIF or BMP file."), a file without its
            end marker ("... the PNG file is truncated ...") or too many
            pixels ("image_bytes[i] is too large to decode: ...").

    Example:

    >>> data = tf.io.encode_png(tf.zeros([4, 6, 3], tf.uint8))
    >>> check_encoded_image(data, 0).shape
    TensorShape([])
    >>> check_encoded_image(data, 3, max_pixels=10)
    Traceback (most recent call last):
    ...
    InvalidArgumentError: ... image_bytes[3] is too large to decode: its
    header declares 24 pixels, more than max_pixels=10.
    """
    if (
        not isinstance(max_pixels, int)
        or isinstance(max_pixels, bool)
        or max_pixels < 1
    ):
        raise ValueError(
            "`max_pixels` must be a positive integer. "
            f"Received: max_pixels={max_pixels!r}"
        )
    contents = tf.convert_to_tensor(contents, tf.string)
    image_format = _graph_format(contents)
    known = _failure(
        tf.not_equal(image_format, _UNKNOWN_FORMAT),
        index,
        f"could not be decoded: it is empty or not a {_FORMAT_NAMES} file.",
    )
    with tf.control_dependencies([known]):
        names = tf.constant([name.upper() for name in SUPPORTED_FORMATS] + ["?"])
        complete = _failure(
            _graph_is_complete(contents, image_format),
            index,
            tf.strings.join(
                [
                    "could not be decoded: the ",
                    tf.gather(names, image_format),
                    " file is truncated (it ends before its end marker).",
                ]
            ),
        )
    with tf.control_dependencies([known, complete]):
        pixels = _graph_declared_pixels(contents, image_format)
        small = _failure(
            pixels <= max_pixels,
            index,
            tf.strings.join(
                [
                    "is too large to decode: its header declares ",
                    tf.strings.as_string(pixels),
                    f" pixels, more than max_pixels={max_pixels}.",
                ]
            ),
        )
    with tf.control_dependencies([known, complete, small]):
        return tf.identity(contents)


def _failure(condition, index, problem):
    """An assertion whose message names the failing element of the batch."""
    message = tf.strings.join(
        ["image_bytes[", tf.strings.as_string(index), "] ", problem]
    )
    return tf.debugging.Assert(condition, [message])


def _graph_format(contents):
    """Index of the file's format in `IMAGE_FORMATS`, `_UNKNOWN_FORMAT` if none."""
    matches = [
        tf.equal(tf.strings.substr(contents, 0, len(signature)), signature)
        for _, signature, _ in IMAGE_FORMATS
    ]
    # argmax picks the first match; the final `True` catches no match.
    return tf.argmax(
        tf.cast(tf.stack([*matches, True]), tf.int32), output_type=tf.int32
    )


def _graph_is_complete(contents, image_format):
    branches = [
        (lambda trailer=trailer: _graph_ends_with(contents, trailer))
        if trailer is not None
        # A BMP's completeness depends on its header fields; TensorFlow's
        # decoder checks the size itself ("Input size should be ...").
        else (lambda: tf.constant(True))
        for _, _, trailer in IMAGE_FORMATS
    ]
    return tf.switch_case(image_format, [*branches, lambda: tf.constant(False)])


def _graph_ends_with(contents, trailer):
    """Whether the file ends with `trailer`, then at most a little padding.

    The rule of `_is_cut_short` (up to `_TRAILER_SLACK` bytes of `_PADDING`),
    in arithmetic on the bytes rather than a regex: RE2 reads its input as
    UTF-8, and these bytes are not text.
    """
    window = len(trailer) + _TRAILER_SLACK
    length = tf.strings.length(contents)
    tail = tf.strings.substr(contents, tf.maximum(length - window, 0), window)
    values = tf.io.decode_raw(tail, tf.uint8)
    padding = tf.constant(list(_PADDING), tf.uint8)
    is_padding = tf.reduce_any(tf.equal(values[:, tf.newaxis], padding), axis=1)
    # The length of the run of padding at the very end.
    run = tf.reduce_sum(tf.math.cumprod(tf.cast(tf.reverse(is_padding, [0]), tf.int32)))
    end = tf.size(values) - run
    found = tf.equal(
        tf.strings.substr(tail, tf.maximum(end - len(trailer), 0), len(trailer)),
        trailer,
    )
    return tf.logical_and(end >= len(trailer), found)


def _graph_declared_pixels(contents, image_format):
    """width * height as the header declares it, read without decoding.

    The fields `_inspect_png`, `_inspect_gif` and `_inspect_bmp` read; a
    JPEG's frame header is found by TensorFlow's own parser.
    """

    def jpeg():
        # A core op that reads the frame header only.
        shape = tf.io.extract_jpeg_shape(contents, output_type=tf.int32)
        return tf.cast(shape[0], tf.int64) * tf.cast(shape[1], tf.int64)

    def png():
        # IHDR: big-endian width and height at bytes 16 and 20.
        width = _big_endian(_byte_values(contents, 16, 4))
        height = _big_endian(_byte_values(contents, 20, 4))
        return width * height

    def gif():
        # The logical screen: little-endian width and height at bytes 6, 8.
        width = _little_endian(_byte_values(contents, 6, 2))
        height = _little_endian(_byte_values(contents, 8, 2))
        return width * height

    def bmp():
        header_size = _little_endian(_byte_values(contents, 14, 4))
        # OS/2 core header: unsigned 16-bit sizes; others: signed 32-bit,
        # a negative height meaning top-down rows.
        core = _little_endian(_byte_values(contents, 18, 2)) * _little_endian(
            _byte_values(contents, 20, 2)
        )
        width = _signed32(_little_endian(_byte_values(contents, 18, 4)))
        height = _signed32(_little_endian(_byte_values(contents, 22, 4)))
        return tf.where(
            tf.equal(header_size, _BMP_CORE_HEADER_SIZE), core, tf.abs(width * height)
        )

    pixels = {"jpeg": jpeg, "png": png, "gif": gif, "bmp": bmp}
    return tf.switch_case(
        image_format,
        [pixels[name] for name in SUPPORTED_FORMATS]
        + [lambda: tf.constant(0, tf.int64)],
    )


def _byte_values(contents, start, size):
    """`size` bytes from `start` as int64 values, zero past the end.

    Padding with zeros makes a short file read as zeros instead of failing,
    so header fields can be read before the file is known to be complete.
    """
    padding = tf.constant(b"\0" * size)
    field = tf.strings.substr(tf.strings.join([contents, padding]), start, size)
    values = tf.reshape(tf.io.decode_raw(field, tf.uint8), [size])
    return tf.cast(values, tf.int64)


def _big_endian(values):
    total = tf.constant(0, tf.int64)
    for value in tf.unstack(values):
        total = total * 256 + value
    return total


def _little_endian(values):
    return _big_endian(tf.reverse(values, [0]))


def _signed32(value):
    return tf.where(value >= 2**31, value - 2**32, value)


def decode_image(contents):
    """Decode JPEG, PNG, GIF or BMP bytes to RGB pixels.

    Grayscale is repeated to three channels. Transparency is composited on
    white, `rgb * a + 255 * (1 - a)` with `a = alpha / 255`, computed as
    `rgb * alpha / 255 + (255 - alpha)` so fully opaque and fully transparent
    pixels come out exact. Exceptions, set by TensorFlow's decoders:

    - A GIF gives its first frame, and its transparent pixels come out black:
      the GIF decoder drops transparency before this function sees it.
    - A 32-bit BMP's fourth byte is dropped, not used as alpha: in the common
      uncompressed layout it is reserved and often zero (Windows and Pillow
      ignore it too).
    - An 8-bit BMP is looked up in its colour table here, since the decoder
      returns the raw palette indices.

    Built from core TensorFlow ops, so it runs in tf.data and in a
    SavedModel, under `tf.function` with unknown shapes.

    Args:
        contents: a scalar string tensor (or Python `bytes`) holding the file.

    Returns:
        A float32 tensor of shape `(height, width, 3)`, values in [0, 255].

    Raises:
        tf.errors.InvalidArgumentError: for empty, truncated or unrecognised
            bytes (check them with `inspect_image` first).

    Example:

    >>> data = tf.io.encode_png(tf.fill([2, 3, 1], tf.constant(7, tf.uint8)))
    >>> decode_image(data).shape
    TensorShape([2, 3, 3])
    """
    contents = tf.convert_to_tensor(contents, tf.string)
    image = tf.io.decode_image(
        contents, channels=0, dtype=tf.uint8, expand_animations=False
    )
    image = tf.cast(image, tf.float32)
    bmp = _FORMAT["bmp"].signature
    is_bmp = tf.equal(tf.strings.substr(contents, 0, len(bmp)), bmp)

    def gray():
        gray = image[..., 0]
        return tf.cond(
            is_bmp,
            lambda: tf.gather(_bmp_colour_table(contents), tf.cast(gray, tf.int32)),
            lambda: tf.stack([gray, gray, gray], axis=-1),
        )

    def gray_alpha():
        gray = image[..., :1]
        return _composite_on_white(tf.concat([gray, gray, gray], -1), image[..., 1:])

    def rgb():
        return image[..., :3]

    def rgba():
        return tf.cond(
            is_bmp,
            lambda: image[..., :3],
            lambda: _composite_on_white(image[..., :3], image[..., 3:]),
        )

    # The channel count is only known once the bytes are decoded.
    image = tf.switch_case(
        tf.shape(image)[-1] - 1, branch_fns=[gray, gray_alpha, rgb, rgba]
    )
    image.set_shape([None, None, 3])
    return image


def _composite_on_white(rgb, alpha):
    return rgb * alpha / 255.0 + (255.0 - alpha)


def _bmp_colour_table(contents):
    """A BMP's 256-entry colour table as float32 RGB rows.

    The table follows the info header as (blue, green, red, reserved) bytes.
    Entries the file does not hold map to gray, so a table-less 8-bit file
    still reads as grayscale.
    """
    header_size = _uint32_le(contents, 14)
    data_offset = _uint32_le(contents, 10)
    start = 14 + header_size
    entries = tf.clip_by_value((data_offset - start) // 4, 0, 256)
    table = tf.io.decode_raw(tf.strings.substr(contents, start, entries * 4), tf.uint8)
    table = tf.reverse(tf.reshape(table, [-1, 4])[:, :3], axis=[1])
    ramp = tf.range(entries, 256, dtype=tf.float32)
    ramp = tf.stack([ramp, ramp, ramp], axis=1)
    return tf.concat([tf.cast(table, tf.float32), ramp], axis=0)


def _uint32_le(contents, offset):
    value = _little_endian(_byte_values(contents, offset, 4))
    # int32 keeps the arithmetic with `tf.strings.substr` positions simple; a
    # BMP header field beyond 2 GiB is not a file TensorFlow decoded anyway.
    return tf.cast(tf.minimum(value, 2**31 - 1), tf.int32)


def resize_image(image, image_size, mode="stretch"):
    """Resize an image to a fixed size.

    Args:
        image: a `(height, width, channels)` tensor, any real dtype.
        image_size: an int for a square output, or `(height, width)`.
        mode: `"stretch"` resizes to the size, ignoring the aspect ratio;
            `"pad"` keeps the aspect ratio, resizes to fit inside the size and
            centres the result on zeros (black). Both use bilinear
            interpolation without antialiasing.

    Returns:
        A float32 tensor of shape `(height, width, channels)`. An image that
        already has the size comes back unchanged (only cast to float32).

    Example:

    >>> image = tf.ones([20, 40, 3])
    >>> resize_image(image, 32, mode="pad").shape
    TensorShape([32, 32, 3])
    """
    check_choice("mode", mode, RESIZE_MODES)
    height, width = _check_image_size(image_size)
    image = tf.cast(image, tf.float32)
    channels = image.shape[-1] if image.shape.rank is not None else None
    if mode == "stretch":
        image = _resize_exact(image, height, width)
    else:
        image = _resize_with_pad(image, height, width)
    image.set_shape([height, width, channels])
    return image


def _check_image_size(image_size):
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    valid = (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(
            isinstance(side, int) and not isinstance(side, bool) and side > 0
            for side in image_size
        )
    )
    if not valid:
        raise ValueError(
            "`image_size` must be a positive int or a (height, width) pair of "
            f"positive ints. Received: image_size={image_size!r}"
        )
    return tuple(image_size)


def _resize_exact(image, height, width):
    """Bilinear resize that skips images already at the size."""
    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))
    return tf.cond(
        same,
        lambda: image,
        lambda: tf.image.resize(image, tf.stack([height, width]), method="bilinear"),
    )


def _resize_with_pad(image, height, width):
    shape = tf.shape(image, out_type=tf.int64)
    in_height, in_width = shape[0], shape[1]
    height = tf.constant(height, tf.int64)
    width = tf.constant(width, tf.int64)
    # Compare aspect ratios and scale in integers: `tf.image.resize_with_pad`
    # floors float ratios, which can give a side of 0 for a thin image.
    wider = in_width * height >= in_height * width
    new_height = tf.where(wider, _divide_rounded(in_height * width, in_width), height)
    new_width = tf.where(wider, width, _divide_rounded(in_width * height, in_height))
    new_height = tf.maximum(new_height, 1)
    new_width = tf.maximum(new_width, 1)
    image = _resize_exact(
        image, tf.cast(new_height, tf.int32), tf.cast(new_width, tf.int32)
    )
    top = (height - new_height) // 2
    left = (width - new_width) // 2
    paddings = tf.stack(
        [
            [top, height - new_height - top],
            [left, width - new_width - left],
            tf.zeros([2], tf.int64),
        ]
    )
    return tf.pad(image, paddings, constant_values=0.0)


def _divide_rounded(numerator, denominator):
    """numerator / denominator rounded half up, for positive integers."""
    return (2 * numerator + denominator) // (2 * denominator)


def load_image(contents, image_size, resize="stretch"):
    """Decode and resize image bytes to the model's uint8 input.

    The function both the training pipeline and the exported serving
    signature apply to encoded bytes, so a served model sees exactly the
    pixels it was trained on. Resized values are rounded half to even
    (`tf.round`, as `numpy.round` and Python's `round` do, so a NumPy
    re-implementation matches bit for bit) and saturate-cast to uint8.

    Args:
        contents: a scalar string tensor (or `bytes`): a JPEG, PNG, GIF or
            BMP file.
        image_size: an int for a square output, or `(height, width)`.
        resize: `"stretch"` or `"pad"`, as in `resize_image`.

    Returns:
        A uint8 tensor of shape `(height, width, 3)`, RGB.

    Raises:
        ValueError: for an unknown `resize` or an invalid `image_size`.
        tf.errors.InvalidArgumentError: for bytes that do not decode.

    Example:

    >>> data = tf.io.encode_jpeg(tf.zeros([48, 64, 3], tf.uint8))
    >>> load_image(data, 32).dtype
    tf.uint8
    >>> dataset = tf.data.Dataset.from_tensors(data)
    >>> dataset = dataset.map(lambda contents: load_image(contents, (32, 40)))
    >>> dataset.element_spec
    TensorSpec(shape=(32, 40, 3), dtype=tf.uint8, name=None)
    """
    check_choice("resize", resize, RESIZE_MODES)
    _check_image_size(image_size)
    image = resize_image(decode_image(contents), image_size, mode=resize)
    return tf.saturate_cast(tf.round(image), tf.uint8)


def augment_image(image, seed, *, flip=True, crop=0.0, brightness=0.0, contrast=0.0):
    """Randomly flip, crop, brighten and contrast an image, reproducibly.

    Every random choice comes from stateless ops driven by `seed`, so the
    same seed always gives the same image: a pipeline that derives seeds
    from a fixed seed and the example index is reproducible across runs and
    workers. Each operation draws from its own sub-seed, so turning one on
    or off does not change the others' draws.

    Args:
        image: a `(height, width, 3)` image, uint8 or float in [0, 255].
        seed: an int32 or int64 tensor of shape `(2,)`.
        flip: mirror left-right with probability 1/2.
        crop: the largest fraction of each side to cut away, in [0, 1); 0
            turns cropping off. A crop keeping a random fraction in
            `[1 - crop, 1]` of each side (the same fraction for both, keeping
            the aspect ratio) is taken at a random position and resized back
            to the input size.
        brightness: the largest shift, as a fraction of 255, >= 0; the shift
            is drawn from `[-brightness * 255, brightness * 255)`.
        contrast: the largest relative change of contrast, in [0, 1); the
            factor is drawn from `[1 - contrast, 1 + contrast)`.

    Returns:
        A float32 tensor of the input's shape, clipped to [0, 255].

    Example:

    >>> image = tf.random.uniform([32, 32, 3], maxval=255)
    >>> seed = tf.constant([1, 2])
    >>> a = augment_image(image, seed, crop=0.2, brightness=0.1)
    >>> b = augment_image(image, seed, crop=0.2, brightness=0.1)
    >>> bool(tf.reduce_all(a == b))
    True
    """
    _check_range("crop", crop, upper=1.0)
    _check_range("brightness", brightness, upper=None)
    _check_range("contrast", contrast, upper=1.0)
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ValueError(
            "`augment_image` takes a single (height, width, channels) image. "
            f"Received: image.shape={image.shape}"
        )
    image = tf.cast(image, tf.float32)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    flip_seed, crop_seed, brightness_seed, contrast_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4)
    )
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if crop:
        cropped = _random_crop(image, crop, crop_seed)
        cropped.set_shape(image.shape)
        image = cropped
    if brightness:
        image = tf.image.stateless_random_brightness(
            image, brightness * 255.0, brightness_seed
        )
        # Clip before contrast, which pivots on the mean of what is visible.
        image = tf.clip_by_value(image, 0.0, 255.0)
    if contrast:
        image = tf.image.stateless_random_contrast(
            image, 1.0 - contrast, 1.0 + contrast, contrast_seed
        )
    return tf.clip_by_value(image, 0.0, 255.0)


def _check_range(argument, value, upper):
    """Require 0 <= value < upper (or just value >= 0 when upper is None)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"`{argument}` must be a number. Received: {argument}={value!r}"
        )
    if upper is None:
        valid, expected = value >= 0, ">= 0"
    else:
        valid, expected = 0 <= value < upper, f"in [0, {upper:g})"
    if not valid:
        raise ValueError(
            f"`{argument}` must be {expected}. Received: {argument}={value!r}"
        )


def _random_crop(image, crop, seed):
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    fraction_seed, position_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=2)
    )
    fraction = tf.random.stateless_uniform([], fraction_seed, 1.0 - crop, 1.0)
    crop_height = _scaled_side(height, fraction)
    crop_width = _scaled_side(width, fraction)
    cropped = tf.image.stateless_random_crop(
        image, tf.stack([crop_height, crop_width, shape[2]]), position_seed
    )
    return _resize_exact(cropped, height, width)


def _scaled_side(side, fraction):
    scaled = tf.round(tf.cast(side, tf.float32) * fraction)
    return tf.clip_by_value(tf.cast(scaled, tf.int32), 1, side)
