"""A trial's query ledger as Parquet: every row and column comes back, tagged with its sweep and trial."""
from __future__ import annotations

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from orchestrator import ledger

ROWS = [{"client": "w0", "kind": "attacker", "seq": i, "images": 50, "queue_ms": 0.5 * i, "compute_ms": 1.25,
         "served_batch_images": 100, "batch": i, "t": 0.01 * i, "attack": "knockoff_soft_split",
         "client_kind": "attacker"} for i in range(5)]


def test_rows_come_back_with_sweep_and_trial_columns(tmp_path):
    path = ledger.write(ROWS, tmp_path / "ledgers" / "t1.parquet", sweep_id="s", trial_id="t1")
    table = pq.read_table(path)
    assert table.to_pylist() == [row | {"sweep_id": "s", "trial_id": "t1"} for row in ROWS]
    assert list(tmp_path.joinpath("ledgers").iterdir()) == [path]        # written atomically, nothing left over


def test_an_empty_ledger_is_still_a_file(tmp_path):
    assert pq.read_table(ledger.write([], tmp_path / "t.parquet", trial_id="t")).num_rows == 0


def test_many_trials_read_as_one_dataset(tmp_path):
    for trial in ("t1", "t2"):
        ledger.write(ROWS, tmp_path / f"{trial}.parquet", sweep_id="s", trial_id=trial)
    table = ds.dataset(tmp_path, format="parquet").to_table(columns=["trial_id", "images"])
    assert table.num_rows == 10 and set(table.column("trial_id").to_pylist()) == {"t1", "t2"}
