"""Image bytes to pixels: header checks, decoding, resizing, augmentation.

`load_image` is the one function that turns encoded bytes into model input,
and it is shared: the training input pipeline maps it over tf.data, and the
exported SavedModel calls it on the bytes that TF Serving receives. It and
everything it calls (`decode_image`, `resize_image`) are therefore built from
core TensorFlow ops only (no `tf.py_function`, PIL or NumPy), run under
`tf.function` with unknown shapes, and give the same pixels in both places.

Before decoding, every image passes one guard, because TensorFlow's
decoders fail a whole step on a truncated file (`InvalidArgumentError`) and
happily allocate whatever size a header declares, so a small file can
decode to gigabytes (and a GIF decodes every one of its frames). The guard
exists twice, reading one table of formats (`IMAGE_FORMATS`: each one's
signature and end marker), one GIF block walk and one pixel limit
(`DEFAULT_MAX_PIXELS`, counted over all frames):

- `check_image` (`inspect_image` and `header_problem`): plain Python
  reading the header, the block structure and the end of a file without
  decoding it. The data check (and so the training pipeline), `mmzoo
  predict` and the TFLite app path (`prepare_image`) call it; its `strict`
  option also has libjpeg decode a JPEG and refuses it when libjpeg warns
  that its data is corrupt;
- `check_encoded_image`: the same rules in TensorFlow ops, for the exported
  serving graph (`load_images`), where a bad request must fail naming the
  bad image.

`augment_image` is for training only and is never exported.
"""

import numbers
import os
import struct
from typing import NamedTuple

import numpy as np
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
        frames: how many frames the decoder decodes: 1, except for a GIF,
            whose frames are counted from its block structure (0 for a GIF
            holding no image, `None` where its blocks are unreadable).
            TensorFlow's GIF decoder decodes every frame even when it
            returns only the first.

    A GIF's `width` and `height` are its canvas: the logical screen,
    widened to any frame reaching beyond it. TensorFlow sizes its output by
    the frames, not the screen (a 10x10 screen holding a 3000x3000 frame
    decodes to 3000x3000), and Pillow by both.
    """

    format: str | None
    width: int | None
    height: int | None
    truncated: bool
    frames: int | None = 1


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
    screen = _read(view, 6, 5)
    if screen is None or len(view) < _GIF_BLOCKS_START:
        return ImageInfo("gif", None, None, True)
    width, height, packed = struct.unpack("<HHB", screen)
    frames, right, bottom, state = _gif_frames(
        view, _GIF_BLOCKS_START + _gif_table_size(packed)
    )
    truncated = state == _TRUNCATED or _is_cut_short(view, "gif")
    width, height = max(width, right), max(height, bottom)
    frames = None if state == _MALFORMED else frames
    return ImageInfo("gif", width or None, height or None, truncated, frames)


# A GIF is a header (6 bytes), a logical screen descriptor (7), an optional
# colour table, then blocks, each introduced by one byte: an image (2C: a
# 9-byte descriptor, an optional local colour table, the LZW code size byte
# and data sub-blocks), an extension (21: a label byte and data sub-blocks)
# or the trailer (3B). Data sub-blocks are a length byte and that many bytes,
# ended by a zero length.
_GIF_BLOCKS_START = 13
_GIF_IMAGE, _GIF_EXTENSION, _GIF_TRAILER = 0x2C, 0x21, 0x3B
# A walk's states: looking at a marker or block introducer, in a GIF's data
# sub-blocks, and how it ends (the graph twins' loop states too).
_AT_MARKER, _IN_SUB_BLOCKS = 0, 1
_COMPLETE, _TRUNCATED, _MALFORMED = 2, 3, 4


def _gif_table_size(packed):
    """Bytes of the colour table a screen or image descriptor announces."""
    return 3 << ((packed & 7) + 1) if packed & 0x80 else 0


def _gif_frames(view, position):
    """`(frames, right, bottom, state)` from walking a GIF's blocks.

    `right` and `bottom` are the furthest extent of any frame; `state` is
    `_COMPLETE` (the trailer reached), `_TRUNCATED` (the data ends
    first) or `_MALFORMED` (a byte that introduces no block, which
    giflib refuses too). One step per sub-block, never per pixel: a 780 KB
    file of 300 frames takes about 3,700 steps. `_graph_gif_size` is the
    same walk in TensorFlow ops.
    """
    end = len(view)
    frames = right = bottom = 0
    while True:
        if position >= end:
            return frames, right, bottom, _TRUNCATED
        introducer = view[position]
        if introducer == _GIF_TRAILER:
            return frames, right, bottom, _COMPLETE
        if introducer == _GIF_EXTENSION:
            position += 2
        elif introducer == _GIF_IMAGE:
            descriptor = _read(view, position + 1, 9)
            if descriptor is None:
                return frames, right, bottom, _TRUNCATED
            left, top, width, height, packed = struct.unpack("<HHHHB", descriptor)
            frames += 1
            right, bottom = max(right, left + width), max(bottom, top + height)
            # The descriptor, its colour table and the LZW code size byte.
            position += 10 + _gif_table_size(packed) + 1
        else:
            return frames, right, bottom, _MALFORMED
        while True:
            if position >= end:
                return frames, right, bottom, _TRUNCATED
            size = view[position]
            position += 1 + size
            if size == 0:
                break


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

    The rules of `check_image`, on what `inspect_image` read;
    `check_encoded_image` applies them in the serving graph.

    Args:
        info: the `ImageInfo` from `inspect_image`.
        max_pixels: the most pixels the header may declare, counted over
            every frame a decoder decodes (a GIF's frames times its canvas).

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
    name = info.format.upper()
    if info.truncated:
        return "truncated_image", f"{name} file ends early"
    if info.width is None or info.height is None:
        return "undecodable_image", f"unreadable {name} header"
    if info.frames is None:
        return "undecodable_image", f"unreadable {name} blocks"
    if info.frames == 0:
        return "undecodable_image", f"{name} file holds no image"
    pixels = info.frames * info.width * info.height
    if pixels > max_pixels:
        size = f"{info.width}x{info.height}"
        if info.frames > 1:
            size = f"{info.frames:,} frames of {size}"
        return (
            "image_too_large",
            f"{size} = {pixels:,} pixels > max_pixels={max_pixels:,}",
        )
    return None


def check_image(data, max_pixels=DEFAULT_MAX_PIXELS, strict=False):
    """Why image bytes must not be decoded, or `None` when they may.

    The one guard every image passes before it is decoded: the data check
    and so the training pipeline (`mmzoo.data.check_manifest`),
    `mmzoo predict` and the TFLite app path (`prepare_image`) call it, and
    the serving graph applies the same rules in TensorFlow ops
    (`check_encoded_image`, through `load_images`). It reads the header and
    the block structure only, never the pixels: unknown format, a file cut
    short, an unreadable header, or more than `max_pixels` pixels over all
    the frames a decoder decodes (a decompression bomb is refused here, in
    microseconds, before anything allocates its pixels).

    Args:
        data: the whole file's bytes (any bytes-like object).
        max_pixels: the most pixels the image may decode to, counted over
            every frame (TensorFlow decodes every frame of a GIF even when
            it returns only the first: 300 frames of 1000x1000 take 150
            times as long as one). The default, 64 Mpx, also bounds an
            animation: 67 frames of 1000x1000 pass, 68 do not.
        strict: also decode a JPEG's entropy-coded data with libjpeg-turbo
            and refuse it when libjpeg warns that the data is corrupt
            ("Corrupt JPEG data: ..."). TensorFlow's decoder prints that
            warning without failing and returns garbage pixels; most JPEGs
            with a few changed bytes pass every other check. It costs a
            decode (about 0.1 ms for 64x64 pixels, 50 ms for 6 Mpx).

    Returns:
        `None`, or `(reason, detail)` as `header_problem` gives it.

    Example:

    >>> data = tf.io.encode_png(tf.zeros([4, 6, 3], tf.uint8)).numpy()
    >>> check_image(data) is None
    True
    >>> check_image(data[:-1])
    ('truncated_image', 'PNG file ends early')
    """
    problem = header_problem(inspect_image(data), max_pixels)
    if problem is None and strict:
        problem = strict_problem(data)
    return problem


def strict_problem(data):
    """The part of `check_image` that `strict` adds, on its own.

    For the data check, which decodes every image anyway and runs this on
    the ones that decoded.

    Args:
        data: the whole file's bytes.

    Returns:
        `("undecodable_image", "corrupt JPEG data: ...")` for a JPEG whose
        entropy-coded data libjpeg finds corrupt, in libjpeg's words
        ("bad Huffman code", "premature end of data segment"); else `None`
        (other formats too: their decoders fail on corrupt data).
    """
    if not bytes(memoryview(data)[:3]) == _FORMAT["jpeg"].signature:
        return None
    warning = _jpeg_warning(data)
    if warning is None:
        return None
    warning = warning.removeprefix("Corrupt JPEG data: ")
    return "undecodable_image", f"corrupt JPEG data: {warning[:1].lower()}{warning[1:]}"


def _jpeg_warning(data):
    """libjpeg-turbo's warning on decoding a JPEG, or `None`.

    simplejpeg's `strict=True` turns libjpeg's warnings into errors, which
    is exactly the signal needed: of 200 JPEGs with 20 bytes of their scan
    data changed, TensorFlow's decoder failed on 30 (and printed an
    anonymous warning for the rest), libjpeg warned on 197, and a structural
    check of the entropy-coded segments (0xFF followed by 0x00 or the next
    RSTn, the scan ending at a marker) caught 47. Capturing TensorFlow's own
    warning would mean redirecting the process's stderr, which is global to
    every thread; Pillow ignores the warnings.

    Gray output keeps the cost down: the entropy-coded data of every
    component is still decoded (that is where corruption shows). A JPEG
    that this decoder cannot read at all (it also fails without `strict`)
    is left to TensorFlow's decode: not a warning, not this check's call.
    """
    import simplejpeg

    try:
        colorspace = simplejpeg.decode_jpeg_header(data)[2]
    except ValueError:
        return None
    colorspace = "CMYK" if colorspace in ("CMYK", "YCCK") else "GRAY"
    try:
        simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True)
    except ValueError as error:
        try:
            simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=False)
        except ValueError:
            return None
        return str(error)
    return None


def prepare_image(image, image_size, resize="stretch", max_pixels=DEFAULT_MAX_PIXELS):
    """An image file as a zoo model's `image` input: a batch of one.

    What an app does before it runs an exported TFLite model, and what
    `mmzoo predict` does: `check_image` first (so a bomb is refused before
    anything is decoded), then `load_image`, the function the training
    pipeline and the serving graph apply, so the model sees the pixels it
    was trained on, bit for bit.

    Args:
        image: a file path, or the file's bytes (JPEG, PNG, GIF or BMP).
        image_size: an int for a square output, or `(height, width)`.
        resize: `"stretch"` or `"pad"`, as the run was trained with.
        max_pixels: as in `check_image`.

    Returns:
        A float32 NumPy array of shape `(1, height, width, 3)`, RGB values
        in [0, 255] (whole numbers), the input of every zoo model and of
        the exported TFLite file.

    Raises:
        FileNotFoundError: no file at the path.
        ValueError: for an unknown `resize` or an invalid `image_size`, or
            an image the guard refuses or the decoder fails on; the message
            names the file and the reason.

    Example:

    >>> pixels = prepare_image("cat.jpg", 64)
    >>> pixels.shape, pixels.dtype
    ((1, 64, 64, 3), dtype('float32'))
    """
    check_choice("resize", resize, RESIZE_MODES)
    _check_image_size(image_size)
    name = "the image"
    if isinstance(image, (str, os.PathLike)):
        name = f"the image {os.fspath(image)!r}"
        if not os.path.isfile(image):
            raise FileNotFoundError(f"Image not found: {os.fspath(image)!r}")
        with open(image, "rb") as file:
            image = file.read()
    problem = check_image(image, max_pixels)
    if problem is not None:
        raise ValueError(f"Cannot decode {name}: {problem[1]}.")
    try:
        pixels = load_image(tf.constant(bytes(image)), image_size, resize)
    except tf.errors.InvalidArgumentError as error:
        raise ValueError(f"Cannot decode {name}: {error.message}") from None
    return pixels.numpy()[np.newaxis].astype(np.float32)


# === The guard in the graph ===

_UNKNOWN_FORMAT = len(IMAGE_FORMATS)


def check_encoded_image(contents, index, max_pixels=DEFAULT_MAX_PIXELS):
    """`contents`, once its header shows a complete, not too large image.

    One file through `check_encoded_images`, named `image_bytes[index]`.

    Args:
        contents: a scalar string tensor holding the encoded file.
        index: the element's position in its batch (an int or int32
            scalar), named in the messages as `image_bytes[index]`.
        max_pixels: the most pixels the header may declare (a Python int),
            over all of a GIF's frames.

    Returns:
        `contents`, to be decoded once the checks pass.

    Raises:
        tf.errors.InvalidArgumentError: as `check_encoded_images`.

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
    contents = tf.convert_to_tensor(contents, tf.string)
    checked = check_encoded_images(contents[tf.newaxis], max_pixels, index)
    return checked[0]


# Graph code throughout, with no Python control flow on tensors: AutoGraph
# has nothing to convert, and converting it took two thirds of the time to
# trace a serving signature.
@tf.autograph.experimental.do_not_convert
def check_encoded_images(image_bytes, max_pixels=DEFAULT_MAX_PIXELS, first_index=0):
    """`image_bytes`, once every header shows a complete, not too large image.

    The serving graph's twin of `check_image`, in core TensorFlow ops, on a
    whole batch at once. TensorFlow's decoders fail with messages that do
    not say which image of a batch is bad, and allocate whatever size a
    header declares; this check runs first, fails only through its own
    assertion, and names the first bad element and its reason. It reads the
    same `IMAGE_FORMATS`, end markers, padding rule, JPEG marker walk and
    GIF block walk as `inspect_image`, so a request is refused for the
    reasons the training data check skips a row (`header_problem`), a GIF's
    pixels counted over all its frames. Left to the decoder (and named by
    `load_images`): a BMP cut short (its header's sizes, not an end marker,
    say where it ends).

    Every step is a vector op over the batch (the walks are `tf.while_loop`s
    over all the elements together), so the check costs about the same for
    one image as for a batch of them.

    Args:
        image_bytes: a string tensor of shape `(batch,)`: encoded files.
        max_pixels: the most pixels a header may declare (a Python int),
            over all of a GIF's frames.
        first_index: the first element's position, for the messages.

    Returns:
        `image_bytes`, to be decoded once the checks pass.

    Raises:
        tf.errors.InvalidArgumentError: when the check runs, naming the
            first bad element: bytes of no supported format
            ("image_bytes[i] could not be decoded: it is empty or not a
            JPEG, PNG, GIF or BMP file."), a file without its end marker
            ("... the PNG file is truncated ..."), a header or block
            structure giving no size ("... its GIF header or structure is
            unreadable."), or too many pixels ("image_bytes[i] is too large
            to decode: ...").

    Example:

    >>> data = tf.io.encode_png(tf.zeros([4, 6, 3], tf.uint8)).numpy()
    >>> check_encoded_images(tf.constant([data, data[:-1]]))
    Traceback (most recent call last):
    ...
    InvalidArgumentError: ... image_bytes[1] could not be decoded: the PNG
    file is truncated (it ends before its end marker).
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
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    image_bytes.shape.assert_has_rank(1)
    formats = _graph_formats(image_bytes)
    files = _GraphBytes(image_bytes)
    frames, width, height, state = _graph_sizes(files, formats)
    pixels = frames * width * height
    readable = tf.reduce_all(
        [tf.equal(state, _COMPLETE), frames > 0, width > 0, height > 0], axis=0
    )
    # `header_problem`'s order: format, completeness, header, size.
    problem = _select(
        [
            (tf.equal(formats, _UNKNOWN_FORMAT), 1),
            (tf.logical_not(_graph_ends_complete(files, formats)), 2),
            (tf.equal(state, _TRUNCATED), 2),
            (tf.logical_not(readable), 3),
            (pixels > max_pixels, 4),
        ],
        0,
    )
    bad = problem > 0
    # The first bad element (the batch's size when none is, or it is empty).
    first = tf.argmax(
        tf.cast(tf.concat([bad, [True]], 0), tf.int32), output_type=tf.int32
    )

    def message():
        name = tf.gather(_graph_format_names(), tf.gather(formats, first))
        count = tf.gather(frames, first)
        animated = count > 1
        messages = [
            f"could not be decoded: it is empty or not a {_FORMAT_NAMES} file.",
            tf.strings.join(
                [
                    "could not be decoded: the ",
                    name,
                    " file is truncated (it ends before its end marker).",
                ]
            ),
            tf.strings.join(
                [
                    "could not be decoded: its ",
                    name,
                    " header or structure is unreadable.",
                ]
            ),
            tf.strings.join(
                [
                    "is too large to decode: its header declares ",
                    tf.strings.as_string(tf.gather(pixels, first)),
                    " pixels",
                    tf.where(
                        animated,
                        tf.strings.join([" in ", tf.strings.as_string(count)]),
                        "",
                    ),
                    tf.where(animated, " frames", ""),
                    f", more than max_pixels={max_pixels}.",
                ]
            ),
        ]
        return tf.strings.join(
            [
                "image_bytes[",
                tf.strings.as_string(first + tf.cast(first_index, tf.int32)),
                "] ",
                tf.gather(tf.stack(messages), tf.gather(problem, first) - 1),
            ]
        )

    all_good = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        [tf.cond(tf.reduce_any(bad), message, lambda: tf.constant(""))],
    )
    with tf.control_dependencies([all_good]):
        return tf.identity(image_bytes)


def _graph_format_names():
    """ "JPEG", "PNG", ... in `IMAGE_FORMATS` order, then "?" for none."""
    return tf.constant([name.upper() for name in SUPPORTED_FORMATS] + ["?"])


def _select(cases, default):
    """The value of the first true condition in `cases`: an if/elif chain.

    Elementwise: the conditions are boolean tensors of one shape, the values
    tensors or numbers.
    """
    result = default
    for condition, value in reversed(cases):
        result = tf.where(condition, value, result)
    return result


def _graph_formats(image_bytes):
    """Each file's format index in `IMAGE_FORMATS`, `_UNKNOWN_FORMAT` if none."""
    matches = [
        tf.equal(tf.strings.substr(image_bytes, 0, len(signature)), signature)
        for _, signature, _ in IMAGE_FORMATS
    ]
    formats = tf.fill(tf.shape(image_bytes), _UNKNOWN_FORMAT)
    # The first match wins, as in `inspect_image`.
    for position, match in reversed(list(enumerate(matches))):
        formats = tf.where(match, position, formats)
    return formats


class _GraphBytes:
    """A batch of files as one buffer of bytes, for lookups at any position.

    `byte(positions)` reads one byte per element (or a row of them) as
    int64; a position past a file's end reads as 0 (each file is followed
    by zero padding in the buffer), so fields can be read before the file
    is known to hold them: the walks check the length before they trust a
    field. The buffer is one copy of the batch.
    """

    _PADDING = 16

    def __init__(self, image_bytes):
        self.length = tf.cast(tf.strings.length(image_bytes), tf.int64)
        padded = tf.strings.join([image_bytes, b"\0" * self._PADDING])
        self.buffer = tf.io.decode_raw(tf.strings.reduce_join(padded), tf.uint8)
        self.start = tf.cumsum(self.length + self._PADDING, exclusive=True)
        # As columns, for rows of positions (batch, k).
        self.length_column = self.length[:, tf.newaxis]
        self.start_column = self.start[:, tf.newaxis]

    def byte(self, positions):
        """One byte per position: positions of shape (batch,) or (batch, k)."""
        positions = tf.convert_to_tensor(positions, tf.int64)
        rows = positions.shape.rank == 2
        length = self.length_column if rows else self.length
        start = self.start_column if rows else self.start
        offsets = start + tf.minimum(tf.maximum(positions, 0), length)
        return tf.cast(tf.gather(self.buffer, offsets), tf.int64)

    def row(self, position, size):
        """`size` bytes from `position` of each file, shape (batch, size)."""
        position = tf.convert_to_tensor(position, tf.int64)
        position = position + tf.zeros_like(self.length)  # one per element
        return self.byte(position[:, tf.newaxis] + tf.range(size, dtype=tf.int64))

    def field(self, position, size, byteorder):
        """The unsigned `size`-byte integer at `position` of each file."""
        return _integer(self.row(position, size), byteorder)


def _integer(values, byteorder):
    """The unsigned integer of a row of byte values, per element."""
    weights = [256**k for k in range(values.shape[-1])]
    if byteorder == "big":
        weights.reverse()
    return tf.reduce_sum(values * weights, axis=-1)


def _graph_ends_complete(files, formats):
    """Whether each file ends with its format's end marker (`_is_cut_short`).

    Up to `_TRAILER_SLACK` bytes of `_PADDING` may follow the marker. A BMP
    passes: its header's sizes, not a marker, say where it ends, and
    TensorFlow's decoder checks them ("Input size should be ...").
    """
    longest = max(len(trailer) for _, _, trailer in IMAGE_FORMATS if trailer)
    window = longest + _TRAILER_SLACK + 1
    positions = files.length[:, tf.newaxis] - window + tf.range(window, dtype=tf.int64)
    inside = positions >= 0
    values = files.byte(positions)
    padding = tf.constant(list(_PADDING), tf.int64)
    is_padding = tf.logical_and(
        inside, tf.reduce_any(tf.equal(values[..., tf.newaxis], padding), axis=-1)
    )
    # The run of padding at the very end (capped by the window, which is
    # longer than the slack allows).
    run = tf.reduce_sum(
        tf.math.cumprod(tf.cast(tf.reverse(is_padding, [1]), tf.int64), axis=1),
        axis=1,
    )
    ends = []
    for _, _, trailer in IMAGE_FORMATS:
        if trailer is None:
            ends.append(tf.ones_like(run, tf.bool))
            continue
        end = files.length - run
        marker = files.byte(
            end[:, tf.newaxis] - len(trailer) + tf.range(len(trailer), dtype=tf.int64)
        )
        found = tf.reduce_all(tf.equal(marker, list(trailer)), axis=1)
        ends.append(
            tf.reduce_all([run <= _TRAILER_SLACK, end >= len(trailer), found], axis=0)
        )
    ends.append(tf.zeros_like(run, tf.bool))
    # Each element's own format's answer.
    return tf.gather(tf.stack(ends, axis=1), formats, batch_dims=1)


def _graph_sizes(files, formats):
    """`(frames, width, height, state)` per file, as `inspect_image` reads them.

    int64 vectors. `state` is `_COMPLETE` where the size was found,
    `_TRUNCATED` where the data ends first and `_MALFORMED` where the
    markers or blocks are not a JPEG's or a GIF's; a size field of 0 (or a
    BMP's negative width) leaves the size unreadable.
    """
    is_format = {
        name: tf.equal(formats, position)
        for position, name in enumerate(SUPPORTED_FORMATS)
    }
    batch = tf.shape(formats)
    complete = tf.fill(batch, tf.constant(_COMPLETE, tf.int64))
    ones = tf.ones(batch, tf.int64)
    # The first chunk: IHDR, of length 13, with the big-endian width and
    # height at bytes 16 and 20.
    ihdr = files.byte(8 + tf.range(8, dtype=tf.int64)[tf.newaxis])
    ihdr = tf.reduce_all(tf.equal(ihdr, list(b"\0\0\0\x0dIHDR")), axis=1)
    png = (
        ones,
        files.field(16, 4, "big"),
        files.field(20, 4, "big"),
        tf.where(ihdr, complete, _MALFORMED),
    )
    # OS/2 core header: unsigned 16-bit sizes; others: signed 32-bit, a
    # negative height meaning top-down rows.
    header_size = files.field(14, 4, "little")
    core = tf.equal(header_size, _BMP_CORE_HEADER_SIZE)
    known = tf.reduce_any(
        tf.equal(
            header_size[:, tf.newaxis],
            [_BMP_CORE_HEADER_SIZE, *_BMP_INFO_HEADER_SIZES],
        ),
        axis=1,
    )
    bmp = (
        ones,
        tf.where(
            core, files.field(18, 2, "little"), _signed32(files.field(18, 4, "little"))
        ),
        tf.where(
            core,
            files.field(20, 2, "little"),
            tf.abs(_signed32(files.field(22, 4, "little"))),
        ),
        tf.where(known, complete, _MALFORMED),
    )
    jpeg = _graph_jpeg_sizes(files, is_format["jpeg"])
    gif = _graph_gif_sizes(files, is_format["gif"])
    sizes = {"jpeg": jpeg, "png": png, "gif": gif, "bmp": bmp}
    unknown = (
        0 * ones,
        0 * ones,
        0 * ones,
        tf.fill(batch, tf.constant(_MALFORMED, tf.int64)),
    )
    return tuple(
        _select(
            [(is_format[name], sizes[name][field]) for name in SUPPORTED_FORMATS],
            unknown[field],
        )
        for field in range(4)
    )


def _walk_states():
    """The walks' states as int64 scalars, the dtype of every loop variable."""
    states = (_AT_MARKER, _IN_SUB_BLOCKS, _COMPLETE, _TRUNCATED, _MALFORMED)
    return [tf.constant(state, tf.int64) for state in states]


def _walk(step, state, variables, walking):
    """Run `step` over the elements `walking` until each one's walk ends.

    The others start (and stay) `_COMPLETE`; the loop does not run at all
    without an element to walk.
    """
    state = tf.where(walking, state, tf.constant(_COMPLETE, tf.int64))

    def loop():
        return tf.while_loop(
            lambda *loop: tf.reduce_any(loop[-1] < _COMPLETE),
            step,
            (*variables, state),
        )

    return tf.cond(tf.reduce_any(walking), loop, lambda: (*variables, state))


def _graph_jpeg_sizes(files, is_jpeg):
    """`(1, width, height, state)`: `_jpeg_frame_size` in TensorFlow ops.

    The same walk over the marker segments up to the frame header (SOFn),
    two segments (or fill bytes) a loop step, skipping segments by their
    length as the Python walk does. TensorFlow's own `extract_jpeg_shape`
    would read the size too, but it parses the tables on its way and fails,
    naming no element, on a corrupt one.
    """
    at_marker, _, complete, truncated, malformed = _walk_states()
    length = files.length

    def table(markers):
        return tf.constant([marker in markers for marker in range(256)])

    sof, standalone = table(_JPEG_SOF_MARKERS), table(_JPEG_STANDALONE_MARKERS)
    # A second SOI, the end of image or the scan before any frame header.
    misplaced = table({0xD8, 0xD9, 0xDA})

    def segment(position, width, height, state):
        # FF, the marker, its segment's length, and a frame header's
        # precision, height and width.
        row = files.row(position, 9)
        marker = row[:, 1]
        is_fill = tf.equal(marker, 0xFF)
        is_standalone = tf.gather(standalone, marker)
        is_sof = tf.gather(sof, marker)
        size = _integer(row[:, 2:4], "big")
        new_state = _select(
            [
                (position >= length, truncated),
                (tf.not_equal(row[:, 0], 0xFF), malformed),
                (position + 1 >= length, truncated),
                (tf.logical_or(is_fill, is_standalone), at_marker),
                (tf.gather(misplaced, marker), malformed),
                (position + 4 > length, truncated),
                (size < 2, malformed),
                (tf.logical_and(is_sof, position + 9 > length), truncated),
                (is_sof, complete),
            ],
            at_marker,
        )
        applies = tf.equal(state, at_marker)
        found = tf.logical_and(applies, tf.equal(new_state, complete))
        new_position = _select(
            [(is_fill, position + 1), (is_standalone, position + 2)],
            position + 2 + size,
        )
        return (
            tf.where(applies, new_position, position),
            tf.where(found, _integer(row[:, 7:9], "big"), width),
            tf.where(found, _integer(row[:, 5:7], "big"), height),
            tf.where(applies, new_state, state),
        )

    def step(position, width, height, state):
        # Two segments a step (each acts only while its walk goes on): a
        # TensorFlow loop step costs tens of microseconds, and every
        # unrolled segment adds to the time to trace a signature.
        for _ in range(2):
            position, width, height, state = segment(position, width, height, state)
        return position, width, height, state

    zero = tf.zeros_like(length)
    _, width, height, state = _walk(
        step, at_marker + zero, (2 + zero, zero, zero), is_jpeg
    )
    return tf.ones_like(length), width, height, state


def _graph_gif_sizes(files, is_gif):
    """`(frames, width, height, state)` of GIFs: `_gif_frames` in TF ops.

    The same walk over the blocks, in a `tf.while_loop` of usually one step
    per block; every step moves forward at least one byte, so the loop ends
    within the file's length. `width` and `height` are the canvas, as
    `_inspect_gif` gives it.
    """
    at_block, in_sub_blocks, complete, truncated, malformed = _walk_states()
    length = files.length

    def table_size(packed):
        has_table = tf.not_equal(tf.bitwise.bitwise_and(packed, 0x80), 0)
        size = 3 * tf.bitwise.left_shift(
            tf.constant(2, tf.int64), tf.bitwise.bitwise_and(packed, 7)
        )
        return tf.where(has_table, size, tf.zeros_like(size))

    def block(position, frames, right, bottom, state):
        # At a block introducer: read the block's header.
        beyond = position >= length
        # The introducer, and an image descriptor's left, top, width, height
        # and packed fields.
        row = files.row(position, 10)
        current = row[:, 0]
        is_image = tf.equal(current, _GIF_IMAGE)
        is_extension = tf.equal(current, _GIF_EXTENSION)
        has_descriptor = position + 10 <= length
        new_state = _select(
            [
                (beyond, truncated),
                (tf.equal(current, _GIF_TRAILER), complete),
                (is_extension, in_sub_blocks),
                (tf.logical_and(is_image, has_descriptor), in_sub_blocks),
                (is_image, truncated),
            ],
            malformed,
        )
        new_position = tf.where(
            is_extension,
            position + 2,
            position + 11 + table_size(row[:, 9]),
        )
        applies = tf.equal(state, at_block)
        new_frame = tf.logical_and(applies, tf.equal(new_state, in_sub_blocks))
        new_frame = tf.logical_and(new_frame, is_image)
        left, top, width, height = (
            _integer(row[:, offset : offset + 2], "little") for offset in (1, 3, 5, 7)
        )
        return (
            tf.where(applies, new_position, position),
            frames + tf.cast(new_frame, tf.int64),
            tf.where(new_frame, tf.maximum(right, left + width), right),
            tf.where(new_frame, tf.maximum(bottom, top + height), bottom),
            tf.where(applies, new_state, state),
        )

    def skip_full_sub_blocks(position, state):
        # Encoders write data in full sub-blocks of 255 bytes: a run of them,
        # every 256th byte a length of 255, is skipped at once (up to 512 of
        # them, 128 KB, per step; past a file's end, lengths read as 0).
        lengths = files.byte(
            position[:, tf.newaxis] + 256 * tf.range(512, dtype=tf.int64)
        )
        run = tf.math.cumprod(tf.cast(tf.equal(lengths, 255), tf.int64), axis=1)
        skipped = position + 256 * tf.reduce_sum(run, axis=1)
        return tf.where(tf.equal(state, in_sub_blocks), skipped, position)

    def sub_block(position, state):
        # In data sub-blocks: skip one; a zero length ends them.
        size = files.byte(position)
        new_state = _select(
            [(position >= length, truncated), (tf.equal(size, 0), at_block)],
            in_sub_blocks,
        )
        applies = tf.equal(state, in_sub_blocks)
        return (
            tf.where(applies, position + 1 + size, position),
            tf.where(applies, new_state, state),
        )

    def step(position, frames, right, bottom, state):
        # Each part acts only in its state, so one step usually covers a
        # whole block: its header, its full sub-blocks, the last one and the
        # terminator (a TensorFlow loop step costs tens of microseconds).
        position, frames, right, bottom, state = block(
            position, frames, right, bottom, state
        )
        position = skip_full_sub_blocks(position, state)
        for _ in range(2):
            position, state = sub_block(position, state)
        return position, frames, right, bottom, state

    zero = tf.zeros_like(length)
    start = _GIF_BLOCKS_START + table_size(files.byte(10 + zero))
    _, frames, right, bottom, state = _walk(
        step, at_block + zero, (start, zero, zero, zero), is_gif
    )
    width = tf.maximum(files.field(6 + zero, 2, "little"), right)
    height = tf.maximum(files.field(8 + zero, 2, "little"), bottom)
    return frames, width, height, state


def _byte_values(contents, start, size):
    """`size` bytes from `start` as int64 values, zero past the end.

    Padding with zeros makes a short file read as zeros instead of failing,
    so header fields can be read before the file is known to be complete.
    `start + size` bytes of it, so that even an empty file reads as zeros:
    `tf.strings.substr` past the end fails with a message quoting the
    file's bytes, which are not UTF-8 and not the element's name.
    """
    padding = tf.constant(b"\0" * (start + size))
    field = tf.strings.substr(tf.strings.join([contents, padding]), start, size)
    values = tf.reshape(tf.io.decode_raw(field, tf.uint8), [size])
    return tf.cast(values, tf.int64)


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
    value = _integer(_byte_values(contents, offset, 4), "little")
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


@tf.autograph.experimental.do_not_convert
def load_images(
    image_bytes, image_size, resize="stretch", max_pixels=DEFAULT_MAX_PIXELS
):
    """A batch of encoded images as uint8 model input; a bad one named.

    The serving signature's image path, in core TensorFlow ops. Each
    element's header is checked first (`check_encoded_image`, which names
    `image_bytes[i]`), then each is decoded and resized by `load_image`, so
    the pixels are the training pipeline's. A file whose header passes but
    whose data does not decode (a corrupt PNG stream, a JPEG whose scan
    data is broken) fails the batch naming its index too: a graph has no
    try/except, so the decoding runs through a tf.data pipeline that drops
    failures (`ignore_errors`, which logs the decoder's own message), and
    the first index that did not come back is named.

    Args:
        image_bytes: a string tensor of shape `(batch,)`: encoded files.
        image_size: an int for a square output, or `(height, width)`.
        resize: `"stretch"` or `"pad"`, as in `resize_image`.
        max_pixels: as in `check_encoded_image`.

    Returns:
        A uint8 tensor of shape `(batch, height, width, 3)`.

    Raises:
        tf.errors.InvalidArgumentError: when it runs, naming the first bad
            element: "image_bytes[i] is too large to decode: ...",
            "image_bytes[i] could not be decoded: ...".

    Example:

    >>> data = tf.io.encode_png(tf.zeros([4, 6, 3], tf.uint8))
    >>> load_images(tf.stack([data, data]), 8).shape
    TensorShape([2, 8, 8, 3])
    >>> load_images(tf.constant([data.numpy(), b"GIF8"]), 8)
    Traceback (most recent call last):
    ...
    InvalidArgumentError: ... image_bytes[1] could not be decoded: the GIF
    file is truncated (it ends before its end marker).
    """
    check_choice("resize", resize, RESIZE_MODES)
    height, width = _check_image_size(image_size)
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    count = tf.shape(image_bytes)[0]
    indices = tf.range(count)
    checked = check_encoded_images(image_bytes, max_pixels)
    decoded = tf.data.Dataset.from_tensor_slices((indices, checked))
    decoded = decoded.map(
        tf.autograph.experimental.do_not_convert(
            lambda index, contents: (index, load_image(contents, image_size, resize))
        ),
        # Up to 10 at once, as `tf.map_fn` ran them before; AUTOTUNE costs
        # about a millisecond more per request, spent tuning a short run.
        num_parallel_calls=10,
        deterministic=True,
    )
    decoded = decoded.ignore_errors(log_warning=True)
    # All the survivors as one batch; the empty one when none survived (or
    # the batch was empty), since `get_single_element` needs an element.
    nothing = tf.data.Dataset.from_tensors(
        (tf.zeros([0], tf.int32), tf.zeros([0, height, width, 3], tf.uint8))
    )
    decoded = decoded.batch(tf.cast(tf.maximum(count, 1), tf.int64))
    survivors, pixels = decoded.concatenate(nothing).take(1).get_single_element()
    returned = tf.shape(survivors)[0]
    # The survivors keep their order: the first missing index is the length
    # of the run of survivors that match 0, 1, 2, ...
    in_place = tf.equal(survivors, tf.range(returned))
    missing = tf.reduce_sum(tf.math.cumprod(tf.cast(in_place, tf.int32)))

    def problem():
        name = tf.gather(_graph_format_names(), _graph_formats(image_bytes)[missing])
        return tf.strings.join(
            [
                "image_bytes[",
                tf.strings.as_string(missing),
                "] could not be decoded: its ",
                name,
                " data is corrupt (TensorFlow's decoder failed on it).",
            ]
        )

    all_decoded = tf.debugging.Assert(
        tf.equal(returned, count),
        [tf.cond(returned < count, problem, lambda: tf.constant(""))],
    )
    with tf.control_dependencies([all_decoded]):
        return tf.identity(pixels)


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
