"""Two outputs of the same listing -> do they make the same decisions, with scores within a tolerance?

Used by `python -m backlog compare` and by the tests that hold the engines and the service to
one another.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

EXACT = ("id", "domain", "error", "error_code", "top_label", "out_of_scope", "flagged",
         "needs_review")  # decisions: must be equal


def read_output(path: Path | str) -> pa.Table:
    """Every committed shard of an output folder (or one Parquet file), in listing order."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist; give a `backlog score` output folder or a Parquet file")
    if (path / "_routes.parquet").is_file():  # a --domain auto run: one folder per routed domain
        from .routed import read_routed

        return read_routed(path)
    files = sorted(path.glob("shard-*.parquet")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path} holds no shard-*.parquet file")
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("index")


def compare_tables(a: pa.Table, b: pa.Table, atol: float = 1e-5) -> dict:
    """Rows matched by id: count, differing decisions (first few), and the largest score difference
    (`max_abs_diff`: absolute for values within [-1, 1], relative to the value beyond)."""
    ra = {r["id"]: r for r in a.to_pylist()}
    rb = {r["id"]: r for r in b.to_pylist()}
    common = sorted(set(ra) & set(rb))
    numeric = [c for c in a.column_names if c in b.column_names and c not in EXACT and c != "index"
               and pa.types.is_floating(a.schema.field(c).type)]
    mismatched, max_diff, worst = [], 0.0, None
    for key in common:
        x, y = ra[key], rb[key]
        bad = [c for c in EXACT if c in x and c in y and x[c] != y[c]]
        if bad:
            mismatched.append({"id": key, "fields": {c: (x[c], y[c]) for c in bad}})
        for c in numeric:
            if x[c] is None or y[c] is None:
                if (x[c] is None) != (y[c] is None):
                    mismatched.append({"id": key, "fields": {c: (x[c], y[c])}})
                continue
            # absolute for scores and probabilities (|v| <= 1), relative for larger values (scope_score:
            # a distance in the hundreds carries float32 rounding of batch composition in its 5th digit)
            d = abs(x[c] - y[c]) / max(1.0, abs(x[c]), abs(y[c]))
            if d > max_diff or math.isnan(d):
                max_diff, worst = d, (key, c)
    return {"rows": len(common), "only_a": len(set(ra) - set(rb)), "only_b": len(set(rb) - set(ra)),
            "decisions_differ": len(mismatched), "examples": mismatched[:5], "max_abs_diff": max_diff,
            "worst": worst, "atol": atol,
            "identical": not mismatched and max_diff <= atol and len(ra) == len(rb) == len(common)}
