"""python -m prefit.data: tools for the study's data. build-tiles: a real image_dir without the internet."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prefit.data.base import DataError
from prefit.data.tiles import DEFAULT_PHOTOS, INSTALL, PHOTOS, build_tiles
from prefit.data.tiles import __doc__ as tiles_doc
from prefit.errors import OneLineParser, fail


def parser() -> argparse.ArgumentParser:
    top = OneLineParser(prog="python -m prefit.data", description=__doc__)
    commands = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser, required=True)
    tiles = commands.add_parser(
        "build-tiles",
        help="cut photographs shipped with scikit-image into tiles: an image_dir dataset, offline",
        description=tiles_doc + " Use it with dataset=image_dir dataset.path=OUT. Needs scikit-image: " + INSTALL,
        epilog=f"photographs: {', '.join(PHOTOS)}",
    )
    tiles.add_argument("out", metavar="OUT", help="the folder to create (refused if it exists and is not empty)")
    tiles.add_argument("--size", type=int, default=64, help="tile side in source pixels, >= 2 (default: %(default)s)")
    tiles.add_argument(
        "--photos",
        type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
        default=list(DEFAULT_PHOTOS),
        metavar="A,B,...",
        help=f"comma-separated photographs, one class each (default: {','.join(DEFAULT_PHOTOS)})",
    )
    tiles.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUT made by an earlier build-tiles, once the new one is complete",
    )
    return top


def main(argv: Sequence[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    if opts.command == "build-tiles":
        try:
            counts = build_tiles(opts.out, size=opts.size, photos=opts.photos, overwrite=opts.overwrite, echo=print)
        except DataError as e:
            return fail(e)
        print(f"total: {sum(counts.values())} tiles of {opts.size}x{opts.size} in {len(counts)} classes -> {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
