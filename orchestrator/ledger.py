"""A trial's query ledger as Parquet (pyarrow): one row per answered request.

Rows are the dicts `run_trial` returns in `TrialResult.ledger` (client, kind, seq, images, queue_ms,
compute_ms, served_batch_images, batch, t, attack, client_kind); the sweep adds `sweep_id` and
`trial_id` columns so ledgers of many trials can be read as one dataset:

    pyarrow.dataset.dataset("<sweep dir>/ledgers", format="parquet").to_table()
"""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write(rows: list[dict], path: str | os.PathLike, **columns: str) -> Path:
    """Write `rows` (plus constant string `columns`) to `path` atomically, zstd-compressed."""
    table = pa.Table.from_pylist(rows)
    for name, value in columns.items():
        table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return path

