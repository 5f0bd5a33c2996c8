"""The resolution report: the same cells fit at several image sizes (a sweep whose one study key is
`dataset.resolution`, e.g. `dataset.resolution=32,64` over `model.hfs=32,64,128`), everything else equal. Whether
pre-fitting helps may depend on how hard an image is for the network, so the verdicts stand side by side per
resolution, with how hard each fit was (the random start's final PSNR, weights per image value) and what each job
cost (prefit.analysis.axis). The protocol report includes the same section (`--resolution`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from .axis import Axis, write_axis_report
from .axis import lead_table as axis_lead_table
from .folders import Folder, Folders
from .pipeline import DEFAULT_OPTIONS, Options

KEY = "dataset.resolution"
BY = "resolution"  # the column the tables group by: `32x32`, `64x64`


def side_label(side: int) -> str:
    return f"{side}x{side}"


AXIS = Axis(KEY, BY, "resolution", lambda v: side_label(int(v)), int, "run the cells at two in one sweep")
DEFAULT_NAME = AXIS.default_name
lead_table = partial(axis_lead_table, column=BY)


def write_resolution_report(
    sweep: Folders, out: Folder | None = None, options: Options = DEFAULT_OPTIONS
) -> dict[str, Path]:
    """Read a resolution sweep's analysis (one folder, or several of one study) and write its report (beside the
    first folder by default) with its figures."""
    return write_axis_report(AXIS, sweep, out, options)
