"""Image bytes to pixels: header inspection, decoding, resizing, augmentation.

Fixtures are real files written by Pillow and by TensorFlow's encoders; Pillow's
own decode is the reference for the lossless formats.
"""

import io
import struct
import zlib

import data_fixtures
import numpy as np
import pytest
import tensorflow as tf

from mmzoo.data import images
from mmzoo.data.images import ImageInfo
from mmzoo.data.images import augment_image
from mmzoo.data.images import decode_image
from mmzoo.data.images import inspect_image
from mmzoo.data.images import load_image
from mmzoo.data.images import resize_image

Image = pytest.importorskip("PIL.Image", reason="the image tests need Pillow")

HEIGHT, WIDTH = 24, 32


def _pixels(seed=0, channels=3):
    return np.random.default_rng(seed).integers(
        0, 256, (HEIGHT, WIDTH, channels), dtype=np.uint8
    )


def _gradient():
    """A smooth image, so JPEG's loss stays small."""
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([rows * 10, columns * 8, (rows + columns) * 4], -1).astype(np.uint8)


def _pillow_bytes(image, file_format, **options):
    buffer = io.BytesIO()
    image.save(buffer, file_format, **options)
    return buffer.getvalue()


def _fixture_bytes():
    rgb = Image.fromarray(_pixels(0))
    other = Image.fromarray(_pixels(1))
    rgba = _pixels(2, channels=4)
    # A 32-bit BMP's fourth byte is reserved; zeros must not make it white.
    rgba[0, :, 3] = 0
    palette = rgb.quantize(colors=16)
    return {
        "jpeg": tf.io.encode_jpeg(_gradient(), quality=95).numpy(),
        "jpeg_pillow": _pillow_bytes(Image.fromarray(_gradient()), "JPEG"),
        "jpeg_progressive": _pillow_bytes(
            Image.fromarray(_gradient()), "JPEG", progressive=True
        ),
        "png": tf.io.encode_png(_pixels(0)).numpy(),
        "png_l": _pillow_bytes(rgb.convert("L"), "PNG"),
        "png_p": _pillow_bytes(palette, "PNG"),
        "bmp_24": _pillow_bytes(rgb, "BMP"),
        "bmp_32": _pillow_bytes(Image.fromarray(rgba, "RGBA"), "BMP"),
        "bmp_8": _pillow_bytes(palette, "BMP"),
        "gif": _pillow_bytes(palette, "GIF"),
        "gif_animated": _pillow_bytes(
            palette, "GIF", save_all=True, append_images=[other.quantize(colors=16)]
        ),
    }


FIXTURES = (
    "jpeg",
    "jpeg_pillow",
    "jpeg_progressive",
    "png",
    "png_l",
    "png_p",
    "bmp_24",
    "bmp_32",
    "bmp_8",
    "gif",
    "gif_animated",
)
LOSSLESS = tuple(name for name in FIXTURES if not name.startswith("jpeg"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{name: path} of the fixture images, written to disk."""
    folder = tmp_path_factory.mktemp("images")
    fixtures = _fixture_bytes()
    assert tuple(fixtures) == FIXTURES
    paths = {}
    for name, data in fixtures.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


def _read(files, name):
    return files[name].read_bytes()


def _pillow_rgb(data):
    """Pillow's RGB decode (the first frame of an animation)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)


def _png_chunk(kind, payload):
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


# === decode_image ===


@pytest.mark.parametrize("name", LOSSLESS)
def test_lossless_formats_decode_exactly_as_pillow(files, name):
    data = _read(files, name)
    image = decode_image(data)
    assert image.dtype == tf.float32
    assert image.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(image, _pillow_rgb(data))


@pytest.mark.parametrize("name", ["jpeg", "jpeg_pillow", "jpeg_progressive"])
def test_jpeg_decodes_close_to_pillow(files, name):
    data = _read(files, name)
    image = decode_image(data)
    assert image.dtype == tf.float32
    assert image.shape == (HEIGHT, WIDTH, 3)
    difference = np.abs(image.numpy() - _pillow_rgb(data))
    # TensorFlow and Pillow use different IDCT settings: a few levels apart.
    assert difference.mean() < 2.0
    assert difference.max() <= 8


def test_animated_gif_gives_its_first_frame(files):
    data = _read(files, "gif_animated")
    animation = Image.open(io.BytesIO(data))
    assert animation.n_frames == 2
    first = np.asarray(animation.convert("RGB"), np.float32)
    animation.seek(1)
    second = np.asarray(animation.convert("RGB"), np.float32)
    image = decode_image(data).numpy()
    np.testing.assert_array_equal(image, first)
    assert not np.array_equal(image, second)


def test_rgba_png_composites_on_white():
    pixels = np.array(
        [
            [[255, 0, 0, 0], [255, 0, 0, 128], [0, 0, 255, 255]],
            [[10, 20, 30, 64], [0, 0, 0, 0], [255, 255, 255, 1]],
        ],
        np.uint8,
    )
    image = decode_image(tf.io.encode_png(pixels)).numpy()
    np.testing.assert_array_equal(image[0, 0], [255, 255, 255])  # transparent
    np.testing.assert_array_equal(image[0, 1], [255, 127, 127])  # half red
    np.testing.assert_array_equal(image[0, 2], [0, 0, 255])  # opaque blue
    np.testing.assert_array_equal(image[1, 1], [255, 255, 255])
    np.testing.assert_array_equal(image[1, 2], [255, 255, 255])
    alpha = np.float32(64)
    expected = np.array([10, 20, 30], np.float32) * alpha / 255 + (255 - alpha)
    np.testing.assert_array_equal(image[1, 0], expected)


def test_gray_alpha_png_composites_on_white():
    pixels = np.array([[[0, 128], [200, 255], [90, 0]]], np.uint8)
    data = _pillow_bytes(Image.fromarray(pixels, "LA"), "PNG")
    image = decode_image(data).numpy()
    np.testing.assert_array_equal(image[0], [[127] * 3, [200] * 3, [255] * 3])


def test_palette_png_with_transparency_composites_on_white():
    palette = Image.fromarray(_pixels(3)).quantize(colors=8)
    transparent = palette.getpixel((0, 0))
    data = _pillow_bytes(palette, "PNG", transparency=transparent)
    image = decode_image(data).numpy()
    visible = np.asarray(palette) != transparent
    np.testing.assert_array_equal(image[~visible], 255)
    np.testing.assert_array_equal(image[visible], _pillow_rgb(data)[visible])


def test_transparent_gif_pixels_come_out_black():
    # Unlike PNG, not white: TensorFlow's GIF decoder drops the transparency.
    palette = Image.fromarray(_pixels(3)).quantize(colors=8)
    transparent = palette.getpixel((0, 0))
    data = _pillow_bytes(palette, "GIF", transparency=transparent)
    image = decode_image(data).numpy()
    visible = np.asarray(palette) != transparent
    np.testing.assert_array_equal(image[~visible], 0)
    np.testing.assert_array_equal(image[visible], _pillow_rgb(data)[visible])


def test_top_down_bmp_decodes_upright(files):
    data = bytearray(_read(files, "bmp_24"))
    (offset,) = struct.unpack_from("<I", data, 10)
    row = (WIDTH * 3 + 3) // 4 * 4
    rows = [data[offset + i * row : offset + (i + 1) * row] for i in range(HEIGHT)]
    data[offset:] = b"".join(reversed(rows))
    struct.pack_into("<i", data, 22, -HEIGHT)
    np.testing.assert_array_equal(decode_image(bytes(data)), _pixels(0))
    assert inspect_image(bytes(data)) == ImageInfo("bmp", WIDTH, HEIGHT, False)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"plain text, not an image\n", "Unknown image file format"),
        ("png_half", "Invalid PNG data"),
        ("jpeg_half", "jpeg::Uncompress failed"),
    ],
)
def test_decode_fails_on_bad_bytes_hence_inspect_first(files, data, message):
    # TensorFlow raises for the whole step (and ignore_errors() would drop
    # the example without a count), which is why the pipeline inspects first.
    if isinstance(data, str):
        whole = _read(files, data.split("_")[0])
        data = whole[: len(whole) // 2]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        decode_image(data)


# === resize_image and load_image ===


@pytest.mark.parametrize("mode", ["stretch", "pad"])
@pytest.mark.parametrize("image_size, shape", [(16, (16, 16)), ((12, 20), (12, 20))])
def test_resize_shapes(mode, image_size, shape):
    image = resize_image(tf.ones([HEIGHT, WIDTH, 3], tf.uint8), image_size, mode)
    assert image.dtype == tf.float32
    assert image.shape == (*shape, 3)


@pytest.mark.parametrize(
    "input_shape, zero_rows, zero_columns",
    [
        ((20, 40), [*range(8), *range(24, 32)], []),
        ((40, 20), [], [*range(8), *range(24, 32)]),
    ],
)
def test_pad_keeps_aspect_ratio_and_pads_with_zeros(
    input_shape, zero_rows, zero_columns
):
    image = resize_image(tf.fill([*input_shape, 3], 100.0), 32, mode="pad").numpy()
    # 2:1 scaled to fit 32x32 is 16x32, centred: 8 zero rows above and below.
    inside = np.ones((32, 32), bool)
    inside[zero_rows, :] = False
    inside[:, zero_columns] = False
    np.testing.assert_array_equal(image[~inside], 0.0)
    np.testing.assert_array_equal(image[inside], 100.0)


def test_pad_never_shrinks_a_side_to_zero():
    image = resize_image(tf.ones([1, 1000, 3]), 32, mode="pad").numpy()
    assert image.shape == (32, 32, 3)
    # 1000:1 keeps a single row, centred at row (32 - 1) // 2.
    np.testing.assert_array_equal(image[15], 1.0)
    assert image.sum() == 32 * 3


@pytest.mark.parametrize("mode", ["stretch", "pad"])
def test_resize_to_the_same_size_is_identity(mode):
    image = tf.random.stateless_uniform([HEIGHT, WIDTH, 3], [1, 2], 0, 255)
    np.testing.assert_array_equal(resize_image(image, (HEIGHT, WIDTH), mode), image)

    # Also when the shape is only known at run time.
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    def resize(image):
        return resize_image(image, (HEIGHT, WIDTH), mode)

    np.testing.assert_array_equal(resize(image), image)


def test_unknown_resize_mode_names_the_argument():
    with pytest.raises(
        ValueError,
        match=r"^`resize` must be one of \['pad', 'stretch'\]\. "
        r"Received: resize='strech'\. Did you mean 'stretch'\?$",
    ):
        load_image(b"unused", 32, resize="strech")
    with pytest.raises(ValueError, match=r"Received: mode='strech'\. Did you mean"):
        resize_image(tf.ones([4, 4, 3]), 32, mode="strech")


@pytest.mark.parametrize("image_size", [0, -3, (32,), (32, 0), "32", 32.0, True])
def test_invalid_image_size(image_size):
    with pytest.raises(ValueError, match=r"`image_size` must be a positive int"):
        load_image(b"unused", image_size)


def test_load_image_rounds_half_to_even():
    # Halving a row's width averages neighbours: 0.5, 1.5, 2.5 and 3.5.
    row = np.array([0, 1, 1, 2, 2, 3, 3, 4], np.uint8)
    data = tf.io.encode_png(np.repeat(row[None, :, None], 3, axis=-1))
    image = load_image(data, (1, 4))
    assert image.dtype == tf.uint8
    np.testing.assert_array_equal(image.numpy()[0, :, 0], [0, 2, 2, 4])


def test_load_image_in_tf_data_and_tf_function_matches_eager(files):
    names = ["jpeg", "png", "bmp_32", "gif_animated", "png_l"]
    contents = [_read(files, name) for name in names]
    eager = [load_image(data, 16, resize="pad").numpy() for data in contents]

    dataset = tf.data.Dataset.from_tensor_slices(contents)
    dataset = dataset.map(lambda data: load_image(data, 16, resize="pad"))
    assert dataset.element_spec == tf.TensorSpec([16, 16, 3], tf.uint8)
    for image, expected in zip(dataset, eager, strict=True):
        np.testing.assert_array_equal(image, expected)

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def serve(data):
        return load_image(data, 16, resize="pad")

    for data, expected in zip(contents, eager, strict=True):
        np.testing.assert_array_equal(serve(tf.constant(data)), expected)


def test_load_image_is_servable(files, tmp_path):
    """Core ops only: it saves to and runs from a SavedModel."""
    module = tf.Module()
    module.serve = tf.function(
        lambda data: {"image": load_image(data, 16, resize="pad")},
        input_signature=[tf.TensorSpec([], tf.string)],
    )
    graph = module.serve.get_concrete_function().graph.as_graph_def()
    nodes = [*graph.node]
    for function in graph.library.function:
        nodes.extend(function.node_def)
    op_types = {node.op for node in nodes}
    assert "DecodeImage" in op_types
    assert not op_types & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}

    tf.saved_model.save(module, str(tmp_path / "model"))
    signature = tf.saved_model.load(str(tmp_path / "model")).signatures[
        "serving_default"
    ]
    for name in ["jpeg", "png_l", "bmp_8"]:
        data = _read(files, name)
        np.testing.assert_array_equal(
            signature(data=tf.constant(data))["image"], load_image(data, 16, "pad")
        )


# === inspect_image ===


@pytest.mark.parametrize("name", FIXTURES)
def test_inspect_reads_format_and_size(files, name):
    data = _read(files, name)
    info = inspect_image(data)
    # The animated fixture's two frames are counted (the point of `frames`).
    frames = 2 if name == "gif_animated" else 1
    assert info == ImageInfo(name.split("_")[0], WIDTH, HEIGHT, False, frames)
    assert info.format in images.SUPPORTED_FORMATS
    assert decode_image(data).shape == (info.height, info.width, 3)


@pytest.mark.parametrize("name", FIXTURES)
def test_inspect_flags_a_file_cut_in_half(files, name):
    data = _read(files, name)
    info = inspect_image(data[: len(data) // 2])
    assert info.format == name.split("_")[0]
    assert info.truncated


@pytest.mark.parametrize("name", ["bmp_24", "bmp_8", "png", "jpeg", "gif"])
def test_inspect_flags_a_file_one_byte_short(files, name):
    assert inspect_image(_read(files, name)[:-1]).truncated


def test_inspect_reads_a_huge_declared_size_without_decoding():
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00"))
        + _png_chunk(b"IEND", b"")
    )
    assert len(data) < 100
    assert inspect_image(data) == ImageInfo("png", 100_000, 100_000, False)


def test_inspect_skips_exif_and_app_segments_before_the_frame(files):
    jpeg = _read(files, "jpeg")
    # A thumbnail inside APP1 carries a frame header of its own, which must
    # be skipped along with its segment.
    thumbnail = tf.io.encode_jpeg(tf.zeros([5, 7, 3], tf.uint8)).numpy()
    exif = b"Exif\x00\x00" + thumbnail
    segments = (
        b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
        + b"\xff\xed" + struct.pack(">H", 8) + b"IPTC!!"
        + b"\xff\xfe" + struct.pack(">H", 9) + b"comment"
        + b"\xff\xff"  # fill bytes before the next marker
    )  # fmt: skip
    data = jpeg[:2] + segments + jpeg[2:]
    assert inspect_image(data) == ImageInfo("jpeg", WIDTH, HEIGHT, False)
    assert decode_image(data).shape == (HEIGHT, WIDTH, 3)

    exif = Image.Exif()
    exif[0x010F] = "mmzoo camera"
    data = _pillow_bytes(Image.fromarray(_gradient()), "JPEG", exif=exif.tobytes())
    assert b"\xff\xe1" in data[:32]
    assert inspect_image(data) == ImageInfo("jpeg", WIDTH, HEIGHT, False)


@pytest.mark.parametrize(
    "padding, truncated",
    [(b"\x00\x00", False), (b"\r\n", False), (b"\x00" * 100, True)],
)
def test_inspect_tolerates_a_little_padding_after_the_trailer(
    files, padding, truncated
):
    for name in ["jpeg", "png", "gif"]:
        info = inspect_image(_read(files, name) + padding)
        assert info.truncated is truncated


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        np.random.default_rng(0).bytes(1000),
        b"name,label\nimages/cat.jpg,cat\n",
        *(b"\xff\xd8\xff"[:n] for n in (1, 2)),
        *(b"\x89PNG\r\n\x1a\n"[:n] for n in range(1, 8)),
        *(b"GIF8"[:n] for n in range(1, 4)),
        b"B",
    ],
)
def test_inspect_unrecognised_bytes(data):
    assert inspect_image(data) == ImageInfo(None, None, None, False)


@pytest.mark.parametrize(
    "signature, file_format",
    [
        (b"\xff\xd8\xff", "jpeg"),
        (b"\x89PNG\r\n\x1a\n", "png"),
        (b"GIF89a", "gif"),
        (b"BM", "bmp"),
    ],
)
def test_inspect_signature_without_a_header(signature, file_format):
    assert inspect_image(signature) == ImageInfo(file_format, None, None, True)


def test_inspect_os2_core_header_bmp():
    row = 4 * 3  # 3 pixels of 3 bytes, padded to 12
    pixels = bytes(row * 2)
    header = struct.pack("<IHHHH", 12, 3, 2, 1, 24)
    data = b"BM" + struct.pack("<IHHI", 26 + len(pixels), 0, 0, 26) + header + pixels
    assert inspect_image(data) == ImageInfo("bmp", 3, 2, False)
    assert inspect_image(data[:-1]).truncated


@pytest.mark.parametrize("name", FIXTURES)
def test_inspect_never_raises(files, name):
    data = _read(files, name)
    rng = np.random.default_rng(0)
    for length in range(0, 80):
        assert isinstance(inspect_image(data[:length]), ImageInfo)
    for _ in range(50):
        corrupt = bytearray(data)
        positions = rng.integers(0, min(len(data), 64), 4)
        corrupt[positions[0] : positions[0] + 1] = b""
        for position in positions[1:]:
            corrupt[position % len(corrupt)] = rng.integers(0, 256)
        assert isinstance(inspect_image(bytes(corrupt)), ImageInfo)
    # Any bytes-like object, without copying the file.
    assert inspect_image(memoryview(data)) == inspect_image(bytearray(data))


# === The header checks: Python (training data) and graph (serving) ===

# Below the fixtures' 32 x 24 = 768 pixels plus room; a 40 x 40 file is over.
MAX_PIXELS = 1_000


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _graph_check(contents):
    return images.check_encoded_image(contents, 7, MAX_PIXELS)


def _graph_accepts(data):
    try:
        _graph_check(tf.constant(data))
    except tf.errors.InvalidArgumentError:
        return False
    return True


def _header_cases(files):
    """(name, bytes): intact, cut short, padded, oversized and unknown files."""
    cases = []
    for name in FIXTURES:
        data = _read(files, name)
        cases += [
            (name, data),
            (f"{name} cut in half", data[: len(data) // 2]),
            (f"{name} one byte short", data[:-1]),
            (f"{name} + 10 padding bytes", data + bytes(10)),
            (f"{name} + 40 padding bytes", data + bytes(40)),
        ]
    big = Image.fromarray(np.zeros((40, 40, 3), np.uint8))
    for file_format in ("JPEG", "PNG", "GIF", "BMP"):
        cases.append((f"40x40 {file_format}", _pillow_bytes(big, file_format)))
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    cases.append(
        (
            "PNG header bomb",
            b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00"))
            + _png_chunk(b"IEND", b""),
        )
    )
    bmp = bytearray(_read(files, "bmp_24"))
    bmp[18:22] = struct.pack("<i", 100_000)  # the width field
    cases.append(("BMP header bomb", bytes(bmp)))
    gif = bytearray(_read(files, "gif"))
    gif[6:10] = struct.pack("<HH", 60_000, 60_000)  # the logical screen
    cases.append(("GIF header bomb", bytes(gif)))
    cases += _gif_structure_cases()
    for file_format in images.IMAGE_FORMATS:
        cases.append((f"{file_format.name} signature only", file_format.signature))
    cases += [
        ("empty", b""),
        ("text", b"name,label\nimages/cat.jpg,cat\n"),
        ("random bytes", np.random.default_rng(0).bytes(1000)),
        ("JPEG without a frame", b"\xff\xd8\xff\xd9"),
    ]
    return cases


def _gif(frames, width=8, height=6):
    return data_fixtures.animated_gif(frames, width, height)


def _gif_structure_cases():
    """GIFs whose block structure, not their screen, decides the check."""
    one, two = _gif(1), _gif(2)
    frame = one[one.index(b"\x2c") : -1]  # one image block
    screen = bytearray(one)
    screen[6:10] = struct.pack("<HH", 0, 0)  # TensorFlow sizes by the frames
    large = bytearray(_gif(1, 40, 30))
    large[6:10] = struct.pack("<HH", 4, 3)  # a 40x30 frame on a 4x3 screen
    return [
        ("GIF of 20 frames of 8x6", _gif(20)),
        ("GIF of 21 frames of 8x6", _gif(21)),
        ("GIF of no frame", one[: one.index(b"\x2c")] + b";"),
        ("GIF cut inside a frame, then ;", two[: len(one) - 4] + b";"),
        ("GIF with a stray byte between blocks", one[:-1] + b"\x00" + frame + b";"),
        ("GIF with a 0x0 screen", bytes(screen)),
        ("GIF frame larger than its screen", bytes(large)),
    ]


def test_python_and_graph_header_checks_agree(files):
    # The graph leaves a BMP's completeness to TensorFlow's decoder (its
    # header's sizes, not an end marker, say where it ends): there, the graph
    # check passes what the Python check refuses, and the decoder refuses it.
    left_to_the_decoder = {"bmp cut in half", "bmp one byte short"}
    cases = _header_cases(files)
    assert len(cases) > 60
    for name, data in cases:
        python_accepts = images.header_problem(inspect_image(data), MAX_PIXELS) is None
        kind = name.replace("_24", "").replace("_32", "").replace("_8", "")
        if kind in left_to_the_decoder:
            assert not python_accepts and _graph_accepts(data), name
            with pytest.raises(tf.errors.InvalidArgumentError):
                decode_image(data)
        else:
            assert python_accepts == _graph_accepts(data), name
    # Both sides accept and refuse some of each.
    verdicts = {_graph_accepts(data) for _, data in cases}
    assert verdicts == {True, False}


@pytest.mark.parametrize(
    "data, message",
    [
        (
            b"",
            r"image_bytes\[7\] could not be decoded: it is empty or not a "
            r"JPEG, PNG, GIF or BMP file\.",
        ),
        (
            b"GIF89a\x01\x00",
            r"image_bytes\[7\] could not be decoded: the GIF file is truncated",
        ),
        (
            tf.io.encode_png(tf.zeros([40, 40, 3], tf.uint8)).numpy(),
            r"image_bytes\[7\] is too large to decode: its header declares 1600 "
            r"pixels, more than max_pixels=1000\.",
        ),
    ],
)
def test_graph_check_names_the_element_and_the_reason(data, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _graph_check(tf.constant(data))
    # Eagerly too, as a tf.data map or a test calls it.
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        images.check_encoded_image(data, 7, MAX_PIXELS)


def test_graph_check_passes_the_contents_through(files):
    data = _read(files, "png")
    checked = images.check_encoded_image(tf.constant(data), tf.constant(0), 768)
    assert checked.numpy() == data


@pytest.mark.parametrize("max_pixels", [0, 1.5, True, None])
def test_graph_check_validates_max_pixels(max_pixels):
    with pytest.raises(ValueError, match=r"`max_pixels` must be a positive integer"):
        images.check_encoded_image(b"", 0, max_pixels)


def test_header_problem_reasons(files):
    data = _read(files, "png")
    assert images.header_problem(inspect_image(data), 768) is None
    assert images.header_problem(inspect_image(data), 767) == (
        "image_too_large",
        "32x24 = 768 pixels > max_pixels=767",
    )
    assert images.header_problem(inspect_image(data[:-1])) == (
        "truncated_image",
        "PNG file ends early",
    )
    assert images.header_problem(inspect_image(b"hello")) == (
        "undecodable_image",
        "not a JPEG, PNG, GIF or BMP image",
    )
    assert images.SUPPORTED_FORMATS == tuple(f.name for f in images.IMAGE_FORMATS)


# === The one guard: GIF frames, strict JPEGs, every entry point ===


def test_gif_pixels_are_counted_over_every_frame():
    # The budget of 1,000 pixels holds 20 frames of 8x6 (960), not 21.
    assert images.check_image(_gif(20), MAX_PIXELS) is None
    assert images.check_image(_gif(21), MAX_PIXELS) == (
        "image_too_large",
        "21 frames of 8x6 = 1,008 pixels > max_pixels=1,000",
    )
    assert inspect_image(_gif(21)) == ImageInfo("gif", 8, 6, False, 21)
    message = (
        r"image_bytes\[7\] is too large to decode: its header declares 1008 "
        r"pixels in 21 frames, more than max_pixels=1000\."
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _graph_check(tf.constant(_gif(21)))
    # The default budget, 64 Mpx, refuses 300 frames of 1000x1000 (a 550 KB
    # file that TensorFlow would decode frame by frame), from the header.
    bomb = _gif(300, 1000, 1000)
    assert len(bomb) < 600_000
    assert images.check_image(bomb)[1] == (
        "300 frames of 1000x1000 = 300,000,000 pixels > max_pixels=67,108,864"
    )


def test_gif_canvas_is_its_largest_frame_as_tensorflow_decodes_it():
    *_, (_, data) = _gif_structure_cases()  # a 40x30 frame on a 4x3 screen
    assert inspect_image(data) == ImageInfo("gif", 40, 30, False, 1)
    assert decode_image(data).shape == (30, 40, 3)
    assert not _graph_accepts(data)  # 1,200 pixels, not the screen's 12


def test_gif_block_structure_problems():
    cases = dict(_gif_structure_cases())
    assert images.check_image(cases["GIF of no frame"]) == (
        "undecodable_image",
        "GIF file holds no image",
    )
    assert images.check_image(cases["GIF cut inside a frame, then ;"]) == (
        "truncated_image",
        "GIF file ends early",
    )
    assert images.check_image(cases["GIF with a stray byte between blocks"]) == (
        "undecodable_image",
        "unreadable GIF blocks",
    )
    for name in ("GIF of no frame", "GIF with a stray byte between blocks"):
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=r"image_bytes\[7\] could not be decoded: its GIF header or "
            r"structure is unreadable\.",
        ):
            _graph_check(tf.constant(cases[name]))
    # TensorFlow decodes a GIF whose screen says 0x0: so does the guard.
    assert images.check_image(cases["GIF with a 0x0 screen"]) is None
    assert decode_image(cases["GIF with a 0x0 screen"]).shape == (6, 8, 3)


@pytest.mark.parametrize("name", ["jpeg", "jpeg_pillow", "gif_animated", "png"])
def test_python_and_graph_agree_on_corrupted_files(files, name):
    # The walks (JPEG markers, GIF blocks) meet arbitrary bytes: the graph
    # never fails but through its own message, and agrees with Python.
    data = _read(files, name)
    rng = np.random.default_rng(1)
    for trial in range(60):
        corrupt = bytearray(data)
        limit = min(len(data), 200)
        for position in rng.integers(0, limit, 1 + trial % 4):
            corrupt[position] = rng.integers(0, 256)
        if trial % 3 == 0:  # cut short, keeping the end marker
            cut = int(rng.integers(2, len(data) - 1))
            corrupt = corrupt[:cut] + corrupt[-2:]
        corrupt = bytes(corrupt)
        python_accepts = images.header_problem(inspect_image(corrupt), MAX_PIXELS)
        try:
            _graph_check(tf.constant(corrupt))
            graph_accepts = True
        except tf.errors.InvalidArgumentError as error:
            assert "image_bytes[7] " in error.message, error.message
            graph_accepts = False
        assert (python_accepts is None) == graph_accepts, (name, trial)


def test_graph_check_names_the_first_bad_element_of_a_batch(files):
    good, png = _read(files, "jpeg"), _read(files, "png")
    batch = tf.constant([good, good, png[:-1], _gif(21), b""])
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"image_bytes\[2\] could not be decoded: the PNG file is truncated",
    ):
        images.check_encoded_images(batch, MAX_PIXELS)
    checked = images.check_encoded_images(tf.constant([good, png]), MAX_PIXELS)
    assert checked.numpy().tolist() == [good, png]
    assert images.check_encoded_images(tf.zeros([0], tf.string)).shape == (0,)


def test_strict_check_refuses_jpegs_with_corrupt_scan_data(files):
    corrupt = data_fixtures.corrupt_jpeg()
    # TensorFlow decodes it (libjpeg only prints an anonymous warning) and
    # every header check passes it: only `strict` refuses it.
    assert decode_image(corrupt).shape == (48, 64, 3)
    assert images.check_image(corrupt) is None
    assert images.check_encoded_image(corrupt, 0).numpy() == corrupt
    reason, detail = images.check_image(corrupt, strict=True)
    assert reason == "undecodable_image"
    assert detail.startswith("corrupt JPEG data: ") and "marker" in detail
    assert images.strict_problem(corrupt) == (reason, detail)
    # Intact files of every kind pass, progressive JPEGs too.
    for name in FIXTURES:
        assert images.check_image(_read(files, name), strict=True) is None, name


def test_prepare_image_is_load_image_behind_the_guard(files, monkeypatch):
    path = files["jpeg_progressive"]
    expected = load_image(_read(files, "jpeg_progressive"), 16, "pad").numpy()
    for image in (path, str(path), _read(files, "jpeg_progressive")):
        pixels = images.prepare_image(image, 16, "pad")
        assert pixels.shape == (1, 16, 16, 3) and pixels.dtype == np.float32
        np.testing.assert_array_equal(pixels[0], expected)
    # A 144-Mpx PNG header is refused before anything is decoded.
    header = struct.pack(">IIBBBBB", 12_000, 12_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
    bomb += _png_chunk(b"IDAT", zlib.compress(b"\x00")) + _png_chunk(b"IEND", b"")
    monkeypatch.setattr(images, "load_image", None)  # calling it would fail
    with pytest.raises(
        ValueError,
        match=r"Cannot decode the image: 12000x12000 = 144,000,000 pixels > "
        r"max_pixels=67,108,864\.",
    ):
        images.prepare_image(bomb, 16)
    with pytest.raises(ValueError, match=r"Cannot decode the image '.*gif': 21 frames"):
        files["gif"].with_name("bomb.gif").write_bytes(_gif(21))
        images.prepare_image(files["gif"].with_name("bomb.gif"), 16, max_pixels=1000)
    with pytest.raises(FileNotFoundError, match="Image not found"):
        images.prepare_image(files["gif"].with_name("missing.gif"), 16)


def test_load_images_decodes_a_batch_and_names_a_file_that_fails_to_decode(files):
    contents = [_read(files, name) for name in FIXTURES]
    batch = images.load_images(tf.constant(contents), 16, "pad")
    expected = [load_image(data, 16, "pad").numpy() for data in contents]
    np.testing.assert_array_equal(batch, np.stack(expected))
    assert images.load_images(tf.zeros([0], tf.string), (8, 12)).shape == (0, 8, 12, 3)
    # Header and end intact, data broken: the decoder fails, the index named.
    broken_png = bytearray(_read(files, "png"))
    start = broken_png.index(b"IDAT") + 4
    broken_png[start + 8 : start + 40] = bytes(32)
    broken_jpeg = data_fixtures.corrupt_jpeg(decodes=False)
    for broken, name in ((bytes(broken_png), "PNG"), (broken_jpeg, "JPEG")):
        assert images.check_image(broken) is None
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=rf"image_bytes\[1\] could not be decoded: its {name} data is "
            r"corrupt \(TensorFlow's decoder failed on it\)\.",
        ):
            images.load_images(tf.constant([contents[0], broken]), 16)


# === augment_image ===

SEED = tf.constant([3, 4], tf.int64)


def test_augment_is_reproducible_and_seed_dependent():
    image = _pixels(0)
    options = dict(crop=0.3, brightness=0.2, contrast=0.3)
    first = augment_image(image, SEED, **options)
    again = augment_image(image, SEED, **options)
    other = augment_image(image, tf.constant([3, 5], tf.int32), **options)
    assert first.dtype == tf.float32
    assert first.shape == image.shape
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_augment_stays_within_range():
    image = _pixels(0)
    for i in range(5):
        augmented = augment_image(
            image, [i, 0], crop=0.5, brightness=1.0, contrast=0.9
        ).numpy()
        assert augmented.min() >= 0.0
        assert augmented.max() <= 255.0


def test_flip_only_mirrors_or_keeps_the_image():
    image = _pixels(0).astype(np.float32)
    flipped = 0
    for i in range(16):
        augmented = augment_image(image, [i, 7]).numpy()
        if np.array_equal(augmented, image[:, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(augmented, image)
    assert 0 < flipped < 16


def test_augment_with_everything_off_is_identity():
    image = _pixels(0)
    augmented = augment_image(image, SEED, flip=False)
    assert augmented.dtype == tf.float32
    np.testing.assert_array_equal(augmented, image.astype(np.float32))


def test_augment_options_draw_independently():
    # Turning brightness on must not change whether the image is flipped.
    image = np.broadcast_to(np.arange(WIDTH)[:, None] + 100.0, (HEIGHT, WIDTH, 3))
    outcomes = set()
    for i in range(8):
        flip_only = augment_image(image, [i, 1]).numpy()
        with_brightness = augment_image(image, [i, 1], brightness=0.1).numpy()
        flipped = flip_only[0, 0, 0] > flip_only[0, -1, 0]
        assert (with_brightness[0, 0, 0] > with_brightness[0, -1, 0]) == flipped
        outcomes.add(bool(flipped))
    assert outcomes == {True, False}  # the seeds do flip some and not others


def test_augment_in_a_seeded_tf_data_pipeline():
    images = tf.random.stateless_uniform([4, HEIGHT, WIDTH, 3], [0, 1], 0, 255)

    def augment(index, image):
        seed = tf.stack([tf.constant(42, tf.int64), index])
        return augment_image(image, seed, crop=0.2, brightness=0.1, contrast=0.1)

    dataset = tf.data.Dataset.from_tensor_slices(images).enumerate().map(augment)
    assert dataset.element_spec == tf.TensorSpec([HEIGHT, WIDTH, 3], tf.float32)
    first = [image.numpy() for image in dataset]
    second = [image.numpy() for image in dataset]
    np.testing.assert_array_equal(first, second)
    assert first[0].shape == (HEIGHT, WIDTH, 3)
    # It augments: every output differs from its input.
    for original, augmented in zip(images.numpy(), first, strict=True):
        assert np.abs(original - augmented).max() > 1.0


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(crop=1.0), r"`crop` must be in \[0, 1\)\. Received: crop=1\.0"),
        (dict(crop=-0.1), r"`crop` must be in \[0, 1\)\. Received: crop=-0\.1"),
        (dict(brightness=-1), r"`brightness` must be >= 0\. Received: brightness=-1"),
        (
            dict(contrast=1.5),
            r"`contrast` must be in \[0, 1\)\. Received: contrast=1\.5",
        ),
        (
            dict(contrast="high"),
            r"`contrast` must be a number\. Received: contrast='high'",
        ),
    ],
)
def test_augment_rejects_invalid_options(options, message):
    with pytest.raises(ValueError, match=message):
        augment_image(_pixels(0), SEED, **options)


def test_augment_takes_one_image_not_a_batch():
    with pytest.raises(ValueError, match=r"Received: image.shape=\(2, 24, 32, 3\)"):
        augment_image(np.zeros((2, HEIGHT, WIDTH, 3), np.uint8), SEED)
