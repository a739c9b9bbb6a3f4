"""The `mmzoo` command line."""

import argparse
import sys

from mmzoo import __version__
from mmzoo import registry


def _list(args):
    sections = {
        "models": (
            "Presets (mmzoo.build_model(NAME, num_classes=...))",
            registry.list_models,
        ),
        "image-towers": ("Image towers", registry.list_image_towers),
        "text-towers": ("Text towers", registry.list_text_towers),
        "fusions": ("Fusions", registry.list_fusions),
    }
    chosen = [args.what] if args.what else list(sections)
    for key in chosen:
        title, lister = sections[key]
        names = lister(args.pattern)
        print(f"{title}: {len(names)}")
        for name in names:
            if key == "models":
                spec = registry.PRESETS[name]
                print(f"  {name:<44} {spec['description']}")
            else:
                print(f"  {name}")
        print()
    return 0


def _data_check(args):
    from mmzoo.data.check import check_manifest
    from mmzoo.data.manifest import ManifestError

    try:
        report = check_manifest(
            args.manifest,
            labels=args.labels,
            multilabel=args.multilabel,
            max_pixels=args.max_pixels,
            decode=not args.headers_only,
        )
    except (ManifestError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(problem)
    print(report.summary())
    return 1 if report.problems else 0


def _data_to_tfrecord(args):
    from mmzoo.data.check import DataError
    from mmzoo.data.manifest import ManifestError
    from mmzoo.data.tfrecord import write_tfrecords

    try:
        paths, report = write_tfrecords(
            args.manifest,
            args.out_dir,
            num_shards=args.shards,
            max_pixels=args.max_pixels,
        )
        report.enforce(args.max_bad_fraction)
    except (ManifestError, DataError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"Wrote {len(report.good):,} rows to {len(paths)} shard(s) in {args.out_dir}")
    return 0


def _data_easy_vqa(args):
    from mmzoo.data.builtin import easy_vqa

    for split, path in easy_vqa(args.out).items():
        print(f"{split}: {path}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="mmzoo",
        description="mmzoo: a Keras 3 model zoo for image + text recognition.",
    )
    parser.add_argument("--version", action="version", version=f"mmzoo {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    listing = commands.add_parser("list", help="list presets, towers and fusions")
    listing.add_argument(
        "what",
        nargs="?",
        choices=("models", "image-towers", "text-towers", "fusions"),
        help="one section only (default: all)",
    )
    listing.add_argument(
        "--pattern", help="only names matching this glob, e.g. '*gated*'"
    )
    listing.set_defaults(run=_list)

    # mmzoo.data.manifest imports no TensorFlow: `mmzoo list` stays quick.
    from mmzoo.data.manifest import DEFAULT_MAX_BAD_FRACTION
    from mmzoo.data.manifest import DEFAULT_MAX_PIXELS

    data = commands.add_parser("data", help="check and convert manifests")
    data_commands = data.add_subparsers(dest="data_command", metavar="COMMAND")
    data_commands.required = True
    check = data_commands.add_parser(
        "check",
        help="list a manifest's bad rows with line numbers and reasons",
        description="Exit status: 0 when every row is good, 1 when any row is "
        "bad, 2 when the manifest cannot be read.",
    )
    check.add_argument("manifest", help="a .csv, .jsonl, .tfrecord or shard folder")
    check.add_argument(
        "--labels", help="labels.txt of a training run: report labels it lacks"
    )
    check.add_argument(
        "--multilabel", action="store_true", help="labels are |-separated sets"
    )
    check.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse larger images (default {DEFAULT_MAX_PIXELS:,})",
    )
    check.add_argument(
        "--headers-only",
        action="store_true",
        help="read image headers and trailers without decoding (faster)",
    )
    check.set_defaults(run=_data_check)

    convert = data_commands.add_parser(
        "to-tfrecord", help="write a manifest's good rows to TFRecord shards"
    )
    convert.add_argument("manifest")
    convert.add_argument("out_dir")
    convert.add_argument("--shards", type=int, help="default: one per 10,000 rows")
    convert.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    convert.add_argument(
        "--max-bad-fraction",
        type=float,
        default=DEFAULT_MAX_BAD_FRACTION,
        help="fail when more rows than this are bad (default 0.01)",
    )
    convert.set_defaults(run=_data_to_tfrecord)

    vqa = data_commands.add_parser(
        "easy-vqa", help="write the built-in easy-VQA manifests and print them"
    )
    vqa.add_argument("--out", help="folder (default ~/.cache/mmzoo/easy_vqa)")
    vqa.set_defaults(run=_data_easy_vqa)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
