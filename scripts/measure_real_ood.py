"""Flag and out-of-scope rates of a running server on REAL out-of-distribution images (DESIGN §11).

    python scripts/collect_real_images.py --out data/real_ood
    python scripts/measure_real_ood.py --images data/real_ood --half selection --start-server --out ood.json
    python scripts/measure_real_ood.py --images data/real_ood --url http://127.0.0.1:8000

Sends every image of DIR/manifest.json (of the chosen half) to EVERY domain that `GET /domains` lists,
one `POST /classify` each (multipart `image` + form `domain`), a few at a time. None of these images is
any domain's content, so every answer should be out of scope and none flagged. Prints, and writes as JSON
with --out, the flagged rate, the out-of-scope rate and the review rate with 95% Wilson intervals: pooled,
per domain, per kind and per (domain, kind), plus the labels the flagged answers named. The n of an
interval counts answers (image x domain); crops of one photo and the domains of one image are not
independent, so the intervals are narrower than the truth (per-origin counts are given too).

--start-server runs `python -m service` from the repository root on a free port (MODERATION_PORT), with
a throw-away review store and no audit sampling, waits for /readyz and stops it at the end;
--server-root serves another checkout (say, `git archive HEAD` unpacked) with this interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path

import httpx
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.calibrate import wilson  # noqa: E402

RATES = ("flagged", "out_of_scope", "needs_review")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(root: Path = ROOT, ready_timeout_s: float = 600.0):
    """`python -m service` run in `root` on a free port; yields its URL; SIGTERM (then SIGKILL) at the end."""
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="real_ood_server_")
    env = {**os.environ, "MODERATION_PORT": str(port), "MODERATION_HOST": "127.0.0.1",
           "MODERATION_REVIEW_DB": f"sqlite:///{tmp}/review.sqlite3", "MODERATION_REVIEW_AUDIT_RATE": "0",
           "MODERATION_ACCESS_LOG": "false"}
    log_path = Path(tmp, "server.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=root, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}); log:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > ready_timeout_s:
                raise RuntimeError(f"server not ready after {ready_timeout_s:.0f}s; log: {log_path}")
            time.sleep(0.5)
        print(f"server ready on {url} in {time.monotonic() - t0:.1f}s (log {log_path})", file=sys.stderr)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def classify_all(url: str, items: list[dict], images: Path, domains: list[str], concurrency: int) -> list[dict]:
    """One answer per (item, domain): the decision fields, or the error."""
    sem = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(items) * len(domains), desc="classify", unit="req")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        async def one(item: dict, data: bytes, domain: str) -> dict:
            mime = mimetypes.guess_type(item["path"])[0] or "application/octet-stream"
            async with sem:
                for attempt in range(5):
                    r = await http.post("/classify", files={"image": (Path(item["path"]).name, data, mime)},
                                        data={"domain": domain})
                    if r.status_code != 503:
                        break
                    await asyncio.sleep(float(r.headers.get("retry-after", 1)) * (attempt + 1))
            bar.update()
            base = {"path": item["path"], "kind": item["kind"], "source": item["source"],
                    "origin_id": item["origin_id"], "domain": domain, "status": r.status_code}
            if r.status_code != 200:
                return {**base, "error": r.text[:300]}
            j = r.json()
            return {**base, "flagged": bool(j["flagged"]), "out_of_scope": bool(j["out_of_scope"]),
                    "needs_review": bool(j.get("needs_review")), "top_label": j.get("top_label"),
                    "scope_score": j.get("scope_score")}

        tasks = []
        for item in items:
            data = (images / item["path"]).read_bytes()
            tasks += [one(item, data, d) for d in domains]
        out = await asyncio.gather(*tasks)
    bar.close()
    return list(out)


def rates(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == 200]
    out = {k: wilson(sum(r[k] for r in ok), len(ok)) for k in RATES}
    out["n"] = len(ok)
    out["origins"] = len({(r["source"], r["origin_id"]) for r in ok})
    out["errors"] = len(rows) - len(ok)
    return out


def summarise(answers: list[dict], domains: list[str], half: str, url: str, n_images: int) -> dict:
    by_domain, by_kind, by_pair = defaultdict(list), defaultdict(list), defaultdict(list)
    for a in answers:
        by_domain[a["domain"]].append(a)
        by_kind[a["kind"]].append(a)
        by_pair[(a["domain"], a["kind"])].append(a)
    flagged_labels = Counter(f"{a['domain']}/{a['top_label']}" for a in answers if a.get("flagged"))
    errors = Counter(f"{a['status']} {a.get('error', '')[:120]}" for a in answers if a["status"] != 200)
    return {
        "url": url, "half": half, "images": n_images, "domains": domains,
        "pooled": rates(answers),
        "per_domain": {d: rates(by_domain[d]) for d in domains},
        "per_kind": {k: rates(v) for k, v in sorted(by_kind.items())},
        "per_domain_kind": {f"{d}/{k}": rates(v) for (d, k), v in sorted(by_pair.items())},
        "flagged_labels": dict(flagged_labels.most_common()),
        "flagged_images": sorted({a["path"] for a in answers if a.get("flagged")}),
        "errors": dict(errors.most_common(20)),
    }


def fmt(r: dict) -> str:
    def one(w: dict) -> str:
        return "      -      " if w["rate"] is None else f"{w['rate']:.3f} [{w['lo']:.3f},{w['hi']:.3f}]"
    return f"{r['n']:>6} {r['origins']:>5}  {one(r['flagged'])}  {one(r['out_of_scope'])}  {one(r['needs_review'])}"


def print_report(s: dict) -> None:
    head = f"{'':<28} {'n':>6} {'orig':>5}  {'flagged':<21}  {'out_of_scope':<21}  {'needs_review':<21}"
    print(f"\nreal OOD images, half={s['half']}: {s['images']} images x {len(s['domains'])} domains ({s['url']})")
    print(head)
    print(f"{'pooled':<28} {fmt(s['pooled'])}")
    print("-- per domain")
    for d, r in s["per_domain"].items():
        print(f"{d:<28} {fmt(r)}")
    print("-- per kind")
    for k, r in s["per_kind"].items():
        print(f"{k:<28} {fmt(r)}")
    print("-- per domain/kind")
    for dk, r in s["per_domain_kind"].items():
        print(f"{dk:<28} {fmt(r)}")
    if s["flagged_labels"]:
        print("flagged as: " + ", ".join(f"{k} {v}" for k, v in s["flagged_labels"].items()))
    if s["errors"]:
        print("errors: " + json.dumps(s["errors"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=Path("data/real_ood"), help="folder with manifest.json")
    ap.add_argument("--half", choices=("selection", "heldout", "all"), default="selection")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--url", default="http://127.0.0.1:8000")
    g.add_argument("--start-server", action="store_true", help="run `python -m service` on a free port")
    ap.add_argument("--server-root", type=Path, default=ROOT,
                    help="with --start-server: the checkout to serve from (its service/ and prompts_store/), e.g. "
                         "an export of a commit: git archive HEAD | tar -x -C /tmp/head")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", type=Path, help="write the summary as JSON here")
    ap.add_argument("--answers", type=Path, help="write every answer (one JSON object a line) here")
    args = ap.parse_args(argv)

    manifest = json.loads((args.images / "manifest.json").read_text())
    items = [m for m in manifest if args.half == "all" or m["half"] == args.half]
    if not items:
        print(f"no images in half {args.half!r} of {args.images}", file=sys.stderr)
        return 2

    def run(url: str) -> dict:
        domains = [d["domain"] for d in httpx.get(f"{url}/domains", timeout=30).raise_for_status().json()["domains"]]
        t0 = time.monotonic()
        answers = asyncio.run(classify_all(url, items, args.images, domains, args.concurrency))
        print(f"{len(answers)} answers in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        if args.answers:
            args.answers.write_text("".join(json.dumps(a) + "\n" for a in answers))
        return summarise(answers, domains, args.half, url, len(items))

    if args.start_server:
        with server(args.server_root.resolve()) as url:
            summary = run(url)
    else:
        summary = run(args.url.rstrip("/"))
    print_report(summary)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
