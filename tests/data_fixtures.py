"""Real image files and manifests for the data tests, good and bad.

`messy_manifest` writes the kind of data users bring: RGBA PNGs of many
sizes, JPEG, BMP and GIF files, captions with commas, quotes, newlines and
Unicode, and, mixed in, every kind of bad row mmzoo must count. Its
`expected` dict says exactly which lines are bad and why.
"""

import csv
import io
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image

LABELS = ("circle", "square", "triangle")


def pixels(height, width, seed=0, channels=3):
    return np.random.default_rng(seed).integers(
        0, 256, (height, width, channels), dtype=np.uint8
    )


def write_image(path, height=24, width=24, kind="png", seed=0, mode="RGB"):
    """An image file through Pillow; `mode` RGB, RGBA, L or LA."""
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    array = pixels(height, width, seed, channels)
    image = Image.fromarray(array[..., 0] if channels == 1 else array, mode)
    if kind == "gif":
        image = image.convert("RGB").convert("P")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, format={"jpg": "JPEG"}.get(kind, kind.upper()))
    return path


def _chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def write_png_header_bomb(path, width=20_000, height=20_000):
    """A structurally valid PNG declaring width x height pixels in 100 bytes.

    Decoding it would allocate width * height * 3 bytes; mmzoo must refuse
    it from the header alone.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\0" * 64)
    with open(path, "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n")
        file.write(_chunk(b"IHDR", header))
        file.write(_chunk(b"IDAT", data))
        file.write(_chunk(b"IEND", b""))
    return path


def write_corrupt_png(path, seed=0):
    """A PNG with intact header and trailer but garbage compressed data.

    Only a real decode finds it (stage 3 of the check).
    """
    buffer = io.BytesIO()
    Image.fromarray(pixels(32, 32, seed)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IDAT") + 4
    data[start + 8 : start + 40] = bytes(32)
    with open(path, "wb") as file:
        file.write(bytes(data))
    return path


def animated_gif(frames, width, height):
    """The bytes of a GIF of `frames` full-canvas frames, however many.

    Pillow writes one solid frame; its image block is repeated, so even
    hundreds of megapixels of frames cost a few kilobytes and no time. Each
    frame covers the whole canvas, as a decoder that decodes every frame
    must (Pillow would crop identical frames away).
    """
    image = Image.new("P", (width, height), 1)
    image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    buffer = io.BytesIO()
    image.save(buffer, format="GIF")
    data = buffer.getvalue()
    start = data.index(b"\x2c\x00\x00\x00\x00")  # the image descriptor
    block = data[start:-1]  # up to the trailer, 3B
    return data[:start] + block * frames + b";"


def corrupt_jpeg(seed=0, decodes=True):
    """A JPEG with 20 bytes of its scan data changed, header and end intact.

    `decodes=True`: one TensorFlow's decoder decodes without failing (to
    garbage pixels, printing libjpeg's anonymous warning), which every
    header check passes; `decodes=False`: one the decoder refuses. The
    first of a fixed series of corruptions that does, so always the same.
    """
    import tensorflow as tf

    rows, columns = np.mgrid[0:48, 0:64]
    smooth = np.stack([rows * 5, columns * 4, (rows + columns) * 2], -1)
    noise = np.random.default_rng(seed).integers(0, 40, smooth.shape)
    buffer = io.BytesIO()
    Image.fromarray((smooth + noise).astype(np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    # The entropy-coded data runs from after the SOS segment to the EOI.
    scan = data.index(b"\xff\xda")
    scan += 2 + int.from_bytes(data[scan + 2 : scan + 4], "big")
    for attempt in range(100):
        rng = np.random.default_rng([seed, attempt])
        corrupt = bytearray(data)
        for position in rng.choice(np.arange(scan, len(data) - 2), 20, False):
            corrupt[position] ^= int(rng.integers(1, 256))
        try:
            tf.io.decode_jpeg(bytes(corrupt))
            decoded = True
        except tf.errors.InvalidArgumentError:
            decoded = False
        if decoded == decodes:
            return bytes(corrupt)
    raise AssertionError("no corruption of the wanted kind")


def truncate(path, fraction=0.5):
    with open(path, "rb") as file:
        data = file.read()
    with open(path, "wb") as file:
        file.write(data[: int(len(data) * fraction)])
    return path


TEXTS = (
    'a "quoted" caption, with commas',
    "multi-line\ncaption, second line",
    "Ünïcödé café naïve — ok",
    "日本語のキャプション、です。",
    "emoji 🐱 and « guillemets »",
    "¿qué forma es? ¡círculo!",
    "tabs\tand  spaces",
    "plain words",
)


def messy_manifest(folder, fmt="csv"):
    """A manifest of 20 good rows and one bad row per kind of problem.

    Returns:
        `(manifest path, expected)`, `expected` mapping each bad line number
        to its reason, plus `"good"`: the number of good rows. The caller
        checks with max_pixels=1_000_000 (the "large" image has 1.2 Mpx).
    """
    folder = os.fspath(folder)
    images = os.path.join(folder, "images")
    os.makedirs(images, exist_ok=True)
    rows = []  # (image, text, label, reason or None)
    kinds = [
        ("png", "RGBA"),
        ("png", "RGB"),
        ("png", "L"),
        ("png", "LA"),
        ("jpg", "RGB"),
        ("bmp", "RGB"),
        ("gif", "RGB"),
    ]
    for index in range(20):
        kind, mode = kinds[index % len(kinds)]
        height, width = 16 + 7 * index, 40 - index
        name = f"good_{index}.{kind}"
        write_image(
            os.path.join(images, name), height, width, kind, seed=index, mode=mode
        )
        rows.append(
            (f"images/{name}", TEXTS[index % len(TEXTS)], LABELS[index % 3], None)
        )

    write_image(os.path.join(images, "truncated.png"), 40, 40, "png", seed=1)
    truncate(os.path.join(images, "truncated.png"))
    write_image(os.path.join(images, "truncated.jpg"), 40, 40, "jpg", seed=2)
    truncate(os.path.join(images, "truncated.jpg"))
    write_corrupt_png(os.path.join(images, "corrupt.png"))
    with open(os.path.join(images, "not_an_image.jpg"), "w") as file:
        file.write("this is a text file\n")
    open(os.path.join(images, "empty.png"), "wb").close()
    write_png_header_bomb(os.path.join(images, "bomb.png"))
    write_image(os.path.join(images, "large.png"), 1000, 1200, "png", seed=3)
    rows += [
        ("images/missing.png", "no such file", "circle", "missing_file"),
        ("images/truncated.png", "cut in half", "circle", "truncated_image"),
        ("images/truncated.jpg", "cut in half", "square", "truncated_image"),
        ("images/corrupt.png", "garbage pixels", "square", "undecodable_image"),
        ("images/not_an_image.jpg", "text file", "circle", "undecodable_image"),
        ("images/empty.png", "empty file", "circle", "undecodable_image"),
        ("images/bomb.png", "header bomb", "circle", "image_too_large"),
        ("images/large.png", "large image", "circle", "image_too_large"),
        ("images/good_0.png", "   ", "circle", "empty_text"),
        ("images/good_1.png", "", "square", "empty_text"),
        ("images/good_2.png", b"bad \xff\xfe bytes", "circle", "invalid_utf8"),
        ("images/good_3.png", "no label", "", "missing_column"),
    ]
    return _write(folder, rows, fmt)


def _write(folder, rows, fmt, malformed=True):
    expected = {}
    path = os.path.join(folder, f"manifest.{fmt}")
    if fmt == "csv":
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["image", "text", "label"])
        line = 2
        parts = [buffer.getvalue().encode()]
        for image, text, label, reason in rows:
            buffer = io.StringIO(newline="")
            writer = csv.writer(buffer, lineterminator="\n")
            raw = isinstance(text, bytes)
            writer.writerow([image, "RAW" if raw else text, label])
            encoded = buffer.getvalue().encode()
            if raw:
                encoded = encoded.replace(b"RAW", text)
            parts.append(encoded)
            if reason:
                expected[line] = reason
            line += encoded.count(b"\n")
        if malformed:
            parts.append(b"only,two\n")
            expected[line] = "malformed_row"
        with open(path, "wb") as file:
            file.write(b"".join(parts))
    else:
        lines = []
        for number, (image, text, label, reason) in enumerate(rows, start=1):
            raw = isinstance(text, bytes)
            record = {"image": image, "text": "RAW" if raw else text, "label": label}
            encoded = json.dumps(record, ensure_ascii=False).encode()
            if raw:
                encoded = encoded.replace(b"RAW", text)
            if label == "":
                record.pop("label")
                encoded = json.dumps(record, ensure_ascii=False).encode()
            lines.append(encoded)
            if reason:
                expected[number] = reason
        if malformed:
            lines.append(b'{"image": "images/good_0.png", "text": ')
            expected[len(lines)] = "malformed_row"
        with open(path, "wb") as file:
            file.write(b"\n".join(lines) + b"\n")
    expected["good"] = sum(1 for row in rows if row[3] is None)
    return path, expected


def clean_manifest(folder, rows=12, fmt="csv", size=(20, 28), seed=0, labels=None):
    """A manifest of good rows only: RGB PNGs, simple texts, 3 labels.

    `labels`: one raw label per row instead (e.g. a task's
    `example_labels`), for multilabel or regression manifests.
    """
    folder = os.fspath(folder)
    entries = []
    for index in range(rows):
        name = f"images/img_{index}.png"
        write_image(os.path.join(folder, name), *size, seed=seed + index)
        label = LABELS[index % 3] if labels is None else labels[index]
        entries.append((name, f"is this a {label} number {index}", label, None))
    path, _ = _write(folder, entries, fmt, malformed=False)
    return path


COLORS = ("red", "green", "blue", "yellow")


def caption_manifest(folder, images=8, captions=2, size=(24, 24), labels=False):
    """Image + caption pairs without labels, `captions` rows per image.

    `labels`: add a `label` column, the image's colour (for zero-shot).

    Each image is one flat colour (of `COLORS`) with noise, and its
    captions name the colour, so a dual encoder has something to learn;
    the first two captions of every image are the same text for images of
    one colour ("a red picture"), the others its own.
    """
    folder = os.fspath(folder)
    rng = np.random.default_rng(0)
    rgb = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    rgb["yellow"] = (230, 220, 30)
    lines = ["image,text,label" if labels else "image,text"]
    for index in range(images):
        color = COLORS[index % len(COLORS)]
        noise = rng.integers(-20, 20, (*size, 3))
        pixels = np.clip(np.asarray(rgb[color]) + noise, 0, 255).astype(np.uint8)
        name = f"images/{color}_{index}.png"
        os.makedirs(os.path.join(folder, "images"), exist_ok=True)
        Image.fromarray(pixels).save(os.path.join(folder, name))
        for caption in range(captions):
            if caption < 2:
                text = f"a {color} picture" if caption == 0 else f"all {color}"
            else:
                text = f"{color} image number {index} caption {caption}"
            lines.append(f"{name},{text},{color}" if labels else f"{name},{text}")
    path = os.path.join(folder, "captions.csv")
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    return path
