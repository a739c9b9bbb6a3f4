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
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
