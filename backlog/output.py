"""The output dataset: OUT/ holds shard-NNNNN.parquet files and _backlog.json describing the run.

A shard file appears only when all of its rows are written (temporary name, then rename), so
after an interruption a rerun trusts every shard file it finds and scores the rest. The run
description pins what the rows depend on (listing, shard size, domain, bundle version, model):
resuming into an output made with anything else is refused rather than mixing two runs.

An error row's `error` reads "code: message" and its `error_code` column holds the code alone:
the stable code `/classify` answers for the same bytes (`unsupported_format`, `empty_image`, ...).
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

RUN_FILE = "_backlog.json"
SHARD = re.compile(r"^shard-(\d{5,})\.parquet$")
PINNED = ("fingerprint", "items", "shard_size", "domain", "bundle_version", "bundle_sha256", "model",
          "pretrained", "review_out_of_scope")  # a resume must agree on all of these


ERROR_CODE = "error_code"


def error_text(code: str, message: str) -> str:
    """An error row's `error` value: the service's stable code, then its message."""
    return f"{code}: {message}"


def with_error_codes(table: pa.Table) -> pa.Table:
    """`table` with an `error_code` column right after `error` (null on scored rows)."""
    if ERROR_CODE in table.column_names:
        return table
    errors = table.column("error")
    codes = pc.if_else(pc.is_null(errors), pa.scalar(None, pa.string()),
                       pc.list_element(pc.split_pattern(pc.fill_null(errors, ""), ": ", max_splits=1), 0))
    return table.add_column(table.column_names.index("error") + 1, ERROR_CODE, codes)


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.parquet"


class OutputDir:
    """Committed shards of one run, and the run description they belong to."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def prepare(self, run: dict) -> None:
        """Create OUT/ for `run`, or check that an existing OUT/ was made by the same run."""
        described = self.path / RUN_FILE
        if described.is_file():
            old = json.loads(described.read_text())
            diff = [f"{k}: {old.get(k)!r} -> {run.get(k)!r}" for k in PINNED if old.get(k) != run.get(k)]
            if diff:
                raise ValueError(f"{self.path} holds a different run ({'; '.join(diff)}); resume only with the "
                                 "same input, shard size, domain, bundle version and model, or pass a new --out")
            for partial in self.path.glob(".shard-*.tmp-*"):  # a shard being written when the last run died
                partial.unlink(missing_ok=True)
            return
        if self.path.exists() and any(self.path.iterdir()):
            raise ValueError(f"{self.path} exists and is not a backlog output (no {RUN_FILE}); pass a new --out")
        self.path.mkdir(parents=True, exist_ok=True)
        run = {**run, "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
        _atomic_write(described, json.dumps(run, indent=2).encode())

    def done(self) -> set[int]:
        """Shards already committed."""
        if not self.path.is_dir():
            return set()
        return {int(m.group(1)) for p in self.path.iterdir() if (m := SHARD.match(p.name))}

    def commit(self, shard: int, table: pa.Table) -> Path:
        """Write one shard's rows atomically (sorted by listing index)."""
        path = self.path / shard_name(shard)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        pq.write_table(with_error_codes(table).sort_by("index"), tmp)
        os.replace(tmp, path)
        log.debug("committed %s (%d rows)", path, table.num_rows)
        return path


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
