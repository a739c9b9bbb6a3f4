"""Image bytes to pixels: header checks, decoding, resizing, augmentation.

`load_image` is the one function that turns encoded bytes into model input,
and it is shared: the training input pipeline maps it over tf.data, and the
exported SavedModel calls it on the bytes that TF Serving receives. It and
everything it calls (`decode_image`, `resize_image`) are therefore built from
core TensorFlow ops only (no `tf.py_function`, PIL or NumPy), run under
`tf.function` with unknown shapes, and give the same pixels in both places.

`inspect_image` is plain Python that reads the header and the end of a file
without decoding it. The pipeline calls it first, because TensorFlow's
decoders fail a whole step on a truncated file (`InvalidArgumentError`) and
happily allocate whatever size a header declares, so a small file can decode
to gigabytes. `augment_image` is for training only and is never exported.
"""

import numbers
import struct
from typing import NamedTuple

import tensorflow as tf

from mmzoo.registry import check_choice

SUPPORTED_FORMATS = ("jpeg", "png", "gif", "bmp")
RESIZE_MODES = ("pad", "stretch")

# The signatures `tf.io.decode_image` sniffs, so `inspect_image` recognises
# exactly the files that TensorFlow would try to decode.
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GIF_SIGNATURE = b"GIF8"
_BMP_SIGNATURE = b"BM"

_JPEG_TRAILER = b"\xff\xd9"
_PNG_TRAILER = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_GIF_TRAILER = b";"

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
    if head.startswith(_JPEG_SIGNATURE):
        return _inspect_jpeg(view)
    if head.startswith(_PNG_SIGNATURE):
        return _inspect_png(view)
    if head.startswith(_GIF_SIGNATURE):
        return _inspect_gif(view)
    if head.startswith(_BMP_SIGNATURE):
        return _inspect_bmp(view)
    return _UNKNOWN


def _read(view, offset, size):
    """`size` bytes at `offset`, or None where the data ends first."""
    if offset + size > len(view):
        return None
    return bytes(view[offset : offset + size])


def _ends_with(view, trailer):
    tail = bytes(view[-(len(trailer) + _TRAILER_SLACK) :])
    return tail.rstrip(_PADDING).endswith(trailer)


def _inspect_jpeg(view):
    size = _jpeg_frame_size(view)
    if size is None:
        # Ran out of data before the frame header.
        return ImageInfo("jpeg", None, None, True)
    width, height = size
    return ImageInfo("jpeg", width, height, not _ends_with(view, _JPEG_TRAILER))


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
    truncated = not _ends_with(view, _PNG_TRAILER)
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
    truncated = not _ends_with(view, _GIF_TRAILER)
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
    is_bmp = tf.equal(tf.strings.substr(contents, 0, 2), _BMP_SIGNATURE)

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
    field = tf.io.decode_raw(tf.strings.substr(contents, offset, 4), tf.uint8)
    field = tf.cast(field, tf.int64)
    value = field[0] + field[1] * 256 + field[2] * 65536 + field[3] * 16777216
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
