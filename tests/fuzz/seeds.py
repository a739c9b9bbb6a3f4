"""Seed corpora for the fuzz targets, written on demand (no binaries in git).

    python tests/fuzz/seeds.py manifest DIR   # CSV and JSONL manifests
    python tests/fuzz/seeds.py images DIR     # JPEG, PNG, GIF, BMP, broken ones

Each seed is one file; a fuzz target reads the folder as a corpus. The
manifest seeds start with the mode byte `fuzz_manifest.py` reads first.
"""

import csv
import io
import json
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image

TEXTS = (
    'a "quoted" caption, with commas',
    "multi-line\ncaption, second line",
    "crlf\r\nline",
    "Ünïcödé café — 日本語 🐱",
    "",
    "   ",
    'a 12" pizza',
)


def _csv(rows, terminator="\r\n"):
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator=terminator)
    writer.writerow(["image", "text", "label"])
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def manifest_seeds():
    """Byte strings: a mode byte (0: CSV after a fixed header, 1: a whole
    CSV file, 2: JSONL), then the file's bytes."""
    rows = [
        (f"images/{i}.png", text, ("circle", "square|dog", "")[i % 3])
        for i, text in enumerate(TEXTS)
    ]
    header = b"image,text,label\r\n"
    whole = _csv(rows)
    seeds = [
        b"\x00" + whole[len(header) :],
        b"\x00" + _csv(rows, "\n")[len(b"image,text,label\n") :],
        b'\x00a.png,"unclosed,circle\r\nb.png,fine,square\r\n',
        b'\x00a.png,t,"cat\nb.png,"x",dog\n',
        b'\x00a.png,"a"b,5"\n\n,,\n' + "caf\xe9".encode("latin-1") + b",x,y\n",
        b"\x01" + whole,
        b'\x01\xef\xbb\xbfimage,text,label,note\r\na.png,t,l,"n\r\n"\r\n',
    ]
    lines = [
        json.dumps({"image": image, "text": text, "label": label})
        for image, text, label in rows
    ]
    lines += [
        '{"image": "a.png", "text": 123, "label": ["a", 1]}',
        '{"image": null, "text": "t", "label": {"x": 1}}',
        "[1, 2]",
        '{"image": "a.png", "text": "\\ud800", "label": 2.5}',
        "",
        "not json",
    ]
    seeds.append(b"\x02" + "\n".join(lines).encode("utf-8") + b"\n")
    return seeds


def _encoded(image, kind, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


def _png_chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def image_seeds():
    """Byte strings: small images of every format and mode, cut and bombed."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (7, 9, 4), dtype=np.uint8), "RGBA")
    gray = rgb.convert("L")
    seeds = [
        _encoded(rgb, "PNG"),
        _encoded(rgba, "PNG"),
        _encoded(gray, "PNG"),
        _encoded(rgb.convert("P"), "PNG"),
        _encoded(rgb, "JPEG", quality=50),
        _encoded(rgb, "JPEG", progressive=True),
        _encoded(gray, "JPEG"),
        _encoded(rgb.convert("P"), "GIF"),
        _encoded(
            rgb.convert("P"),
            "GIF",
            save_all=True,
            append_images=[gray.convert("P")],
        ),
        _encoded(rgb, "BMP"),
        _encoded(rgba, "BMP"),
        _encoded(rgb.convert("P"), "BMP"),
    ]
    seeds += [seed[: len(seed) // 2] for seed in seeds[::3]]  # cut short
    bomb = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0)
    seeds.append(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", bomb)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )
    seeds += [b"", b"GIF89a", b"BM", b"\xff\xd8\xff", b"hello, not an image\n"]
    return seeds


SEEDS = {"manifest": manifest_seeds, "images": image_seeds}


def write_seeds(kind, folder):
    """Write the `kind` seed corpus into `folder`; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    for index, seed in enumerate(SEEDS[kind]()):
        with open(os.path.join(folder, f"seed-{index:03d}"), "wb") as file:
            file.write(seed)
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in SEEDS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(SEEDS)}}} DIR")
    print(write_seeds(sys.argv[1], sys.argv[2]))
