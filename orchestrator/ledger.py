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



class RequestLog:
    """A service's per-request log that streams to Parquet: rows are kept in memory until `chunk` of them
    have come, then written (atomically) as the next part `part-NNNNNN.parquet` of `directory`, so the service's
    memory stays bounded however many requests it answers. Without a directory every row stays in memory
    (for benchmarks and short tests)."""

    def __init__(self, directory: str | os.PathLike | None = None, chunk: int = 4096):
        self.directory = Path(directory) if directory is not None else None
        self.chunk = int(chunk)
        self.buffer: list[dict] = []
        self.written = 0          # rows already in parts on disk
        self.parts = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return self.written + len(self.buffer)

    def append(self, row: dict) -> None:
        self.buffer.append(row)
        if self.directory is not None and len(self.buffer) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one more part (no-op without a directory or rows)."""
        if self.directory is None or not self.buffer:
            return
        write(self.buffer, self.directory / f"part-{self.parts:06d}.parquet")
        self.parts += 1
        self.written += len(self.buffer)
        self.buffer = []

    def rows(self, since: int = 0) -> list[dict]:
        """Rows from index `since` (those on disk are read back)."""
        on_disk = read(self.directory)[since:] if self.directory is not None and since < self.written else []
        return on_disk + self.buffer[max(0, since - self.written):]


def read(directory: str | os.PathLike) -> list[dict]:
    """The rows of every part in `directory`, in order (columns missing from a part are None)."""
    parts = sorted(Path(directory).glob("part-*.parquet"))
    if not parts:
        return []
    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default").to_pylist()
