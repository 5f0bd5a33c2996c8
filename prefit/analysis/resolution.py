"""The resolution report: the same cells fit at several image sizes (a sweep whose one study key is
`dataset.resolution`, e.g. `dataset.resolution=32,64` over `model.hfs=32,64,128`), everything else equal. Whether
pre-fitting helps may depend on how hard an image is for the network, so the verdicts stand side by side per
resolution, with how hard each fit was (the random start's final PSNR, weights per image value) and what each job
cost (prefit.analysis.axis). The protocol report includes the same section (`--resolution`).
"""

from __future__ import annotations

from .axis import Axis

KEY = "dataset.resolution"
BY = "resolution"  # the column the tables group by: `32x32`, `64x64`
AXIS = Axis(KEY, BY, "resolution", lambda v: f"{int(v)}x{int(v)}", int, "run the cells at two in one sweep")
