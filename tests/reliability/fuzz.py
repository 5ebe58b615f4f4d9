"""Schemathesis against a live server's /openapi.json (issue 6 deliverable 2).

Run by tests/reliability/test_fuzz.py with a bounded number of examples. By hand, against any
running server (the admin token lets /admin/reload be fuzzed past its auth check):

    python -m tests.reliability.fuzz http://127.0.0.1:8000 --examples 200 --token "$MODERATION_ADMIN_TOKEN"

Checks: no 5xx (not_a_server_error), only documented status codes, content types and headers,
and response bodies that match their documented schemas. `negative_data_rejection` is left out:
its list of acceptable rejections has no 413, which is how this API refuses oversized batches.
The JSON report gives the counts that docs/reliability.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance")


def run_schemathesis(base_url: str, *, examples: int = 100, seed: int = 1, token: str | None = None,
                     workdir: Path | None = None, timeout_s: float = 300.0) -> dict:
    """Run the schemathesis CLI; returns its JSON report plus `stdout` and `returncode`."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fuzz-"))  # its crash cache lands here, not in the repo
    report = workdir / "schemathesis.json"
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [str(exe) if exe.exists() else "schemathesis", "run", f"{base_url}/openapi.json",
           "--checks", ",".join(CHECKS), "--max-examples", str(examples), "--seed", str(seed),
           "--workers", "1", "--phases", "examples,coverage,fuzzing",
           "--report", "json", "--report-json-path", str(report)]
    env = dict(os.environ, NO_COLOR="1")
    if token:
        cmd += ["--header", f"Authorization: Bearer {token}"]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout_s)
    out = json.loads(report.read_text()) if report.exists() else {}
    out["stdout"], out["returncode"] = proc.stdout + proc.stderr, proc.returncode
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base_url", help="e.g. http://127.0.0.1:8000")
    ap.add_argument("--examples", type=int, default=200, help="max examples per operation (default 200)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--token", default=None, help="admin bearer token (default: none; reload answers 401)")
    a = ap.parse_args(argv)
    r = run_schemathesis(a.base_url, examples=a.examples, seed=a.seed, token=a.token, workdir=Path.cwd())
    print(r["stdout"][-6000:])
    print(json.dumps({"test_cases": r.get("test_cases"), "failures": r.get("failures")}, indent=1))
    return r["returncode"]


if __name__ == "__main__":
    raise SystemExit(main())
