"""python -m prefit.data: tools for the study's data. build-tiles: a real image_dir without the internet."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from prefit.data.base import DataError
from prefit.data.tiles import DEFAULT_PHOTOS, PHOTOS, build_tiles


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line ("error: ...") and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be an integer, got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"--size must be >= 2, got {value}")
    return value


def _photos(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--photos names no photograph")
    unknown = [n for n in names if n not in PHOTOS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown photograph(s) {', '.join(unknown)}; choose from {', '.join(PHOTOS)}")
    return names


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="python -m prefit.data", description=__doc__)
    commands = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)
    tiles = commands.add_parser(
        "build-tiles",
        help="cut photographs shipped with scikit-image into tiles: an image_dir dataset, offline",
        description=(
            "Cut colour photographs shipped inside scikit-image (no download) into non-overlapping SIZE x SIZE "
            "tiles, one class (sub-folder) per photograph: OUT/<photo>/<photo>_r<row>_c<col>.png, on a grid from "
            "the top-left corner, dropping the remainder at the right and bottom edges. The tile size is in "
            "pixels of the source photograph; dataset.resolution resizes the tiles when they are loaded "
            "(dataset=image_dir dataset.path=OUT). The folder is built under a temporary name beside OUT and "
            "renamed into place when complete. Needs scikit-image: pip install scikit-image, or the project's "
            "extra: pip install -e '.[tiles]'."
        ),
        epilog=f"photographs: {', '.join(PHOTOS)}",
    )
    tiles.add_argument("out", metavar="OUT", help="the folder to create (refused if it exists and is not empty)")
    tiles.add_argument("--size", type=_size, default=64, help="tile side in source pixels, >= 2 (default: %(default)s)")
    tiles.add_argument(
        "--photos",
        type=_photos,
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
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"total: {sum(counts.values())} tiles of {opts.size}x{opts.size} in {len(counts)} classes -> {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
