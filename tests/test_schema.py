"""prefit.schema: the compact psnr.parquet round-trips, and names have one spelling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from prefit.schema import PSNR_COLUMNS, SCHEME_ORDER, cell_dirname, cell_label, cell_stem, ordered, write_psnr


def rows(n_epochs: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    members = [("random", 0, pd.NA), ("same_class", 0, 7), ("random", 1, pd.NA)]
    parts = []
    for scheme, triple, prefit in members:
        loss = np.exp(-np.linspace(0, 8, n_epochs)) * (1 + 0.01 * rng.random(n_epochs))
        parts.append(
            pd.DataFrame(
                {
                    "hls": 2,
                    "hfs": 32,
                    "protocol": "independent",
                    "scheme": scheme,
                    "phase": "fit",
                    "stage": 0,
                    "triple": triple,
                    "epoch": np.arange(n_epochs),
                    "psnr": 10 * np.log10(4 / loss),
                    "loss": loss,
                    "lr": 1e-4,
                    "target_index": 3,
                    "target_label": 1,
                    "prefit_index": pd.array([prefit] * n_epochs, "Int64"),
                    "prefit_label": pd.array([prefit] * n_epochs, "Int64"),
                    "seed": 42,
                    "engine": "batched",
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def test_psnr_parquet_is_compact_and_round_trips(tmp_path):
    frame = rows()
    path = tmp_path / "psnr.parquet"
    write_psnr(frame, path)
    table = pq.read_table(path)
    assert list(table.column_names) == list(PSNR_COLUMNS)
    assert table.schema.field("psnr").type == pa.float32() and table.schema.field("lr").type == pa.float32()
    assert pa.types.is_dictionary(table.schema.field("scheme").type)
    column = pq.ParquetFile(path).metadata.row_group(0).column(list(PSNR_COLUMNS).index("psnr"))
    assert column.compression == "ZSTD" and "BYTE_STREAM_SPLIT" in column.encodings
    back = table.to_pandas()
    np.testing.assert_array_equal(back["psnr"].to_numpy(), frame["psnr"].to_numpy(np.float32))
    assert back["prefit_index"].isna().sum() == 100 and back["scheme"].astype(str).tolist() == frame["scheme"].tolist()


def test_names_have_one_spelling_and_orders_are_categorical():
    assert cell_stem(2, 32) == "2hls_32hfs" and cell_label(2, 32) == "2x32"
    assert cell_dirname(2, 32, "model.hls=2,model.hfs=32,protocol=chained") == "2hls_32hfs,protocol=chained"
    order = ordered(["meta", "random", "zzz", "same_class"], SCHEME_ORDER)
    assert list(order.categories) == ["random", "same_class", "meta", "zzz"] and order.ordered
