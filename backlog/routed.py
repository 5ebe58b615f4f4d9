"""`backlog score --domain auto`: every image routed by the store's domain router, as `/classify` routes
an image sent without a domain, then scored with its domain's bundle.

Two passes over the listing, on the local engine:

1. route: the image's pixels (the service's decode) -> bare CLIP features -> the store's router
   (`promptclip.router.DomainRouter.route` over the store's domains, as the service's engine calls
   it) -> OUT/_routes.parquet, one row per item: the domain and its confidence, or the error row;
2. per routed domain, the local engine's loop over that domain's items -> OUT/<domain>/shard-*.parquet,
   the columns of a one-domain run plus `routed_confidence` and `routed_low_confidence`. As the
   service answers it, an image routed with low confidence that is not flagged needs review.

A rerun routes again (the router is cheap next to scoring) and skips each domain's committed shards.
`read_output(OUT)` reads the whole run back as one table (domains' label columns side by side).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from promptclip.images import ImageRejected

from .config import ScoreConfig
from .inputs import Item, fingerprint, list_inputs, read_bytes
from .output import RUN_FILE, OutputDir, error_text, with_error_codes
from .plan import RunSummary
from .stream import pixels, stream_outcomes, unreadable

log = logging.getLogger(__name__)

ROUTES = "_routes.parquet"
ROUTE_SCHEMA = pa.schema([("index", pa.int64()), ("id", pa.string()), ("path", pa.string()),
                          ("domain", pa.string()), ("routed_confidence", pa.float64()),
                          ("routed_low_confidence", pa.bool_()), ("error", pa.string())])


def _route(cfg: ScoreConfig, items: list[Item]) -> tuple[list[dict], str]:
    """One route row per item (domain and confidence, or the error) and the router's version."""
    import torch

    from promptclip import PromptedCLIP, PromptStore, load_clip
    from promptclip.runner import ModelRunner

    spec = cfg.model_spec()
    if threads := cfg.torch_threads(spec.device):
        torch.set_num_threads(threads)
    clip = load_clip(spec)
    store = PromptStore(cfg.store)
    router = store.load_router(base=clip.info)
    served = store.domains()
    if router is None or not set(router.manifest.domains) & set(served):
        raise ValueError(f"--domain auto needs the store's domain router and {cfg.store} has none that routes to "
                         f"its domains {served}; publish one with `python -m training router --data DATA --store "
                         f"{cfg.store}`, or score with --domain D")
    device = torch.device(spec.device)
    router = router.to(device)
    runner = ModelRunner(PromptedCLIP(clip.model))
    decoder = SimpleNamespace(cfg=cfg, clip=clip)  # what stream.pixels reads: the limits and the preprocess
    rows: list[dict] = []
    for start in range(0, len(items), cfg.batch_size):
        chunk = items[start:start + cfg.batch_size]
        good, batch = [], []
        for it, data in zip(chunk, read_bytes(chunk), strict=True):
            row = {"index": it.index, "id": it.id, "path": it.path, "domain": None, "routed_confidence": None,
                   "routed_low_confidence": None, "error": None}
            rows.append(row)
            try:
                if isinstance(data, Exception):
                    row["error"] = unreadable(it, data)
                    continue
                batch.append(pixels(decoder, data))
                good.append(row)
            except ImageRejected as e:
                row["error"] = error_text(e.code, e.message)
        if not batch:
            continue
        with torch.inference_mode():  # as the service's engine: the runner's bare tower, normalised features
            feats = runner.bare(torch.stack(batch))
            for row, r in zip(good, router.route(feats, served), strict=True):
                row.update(domain=r.domain, routed_confidence=r.confidence, routed_low_confidence=r.low_confidence)
    log.info("routed %d images with router %s over %s", len(items), router.version, served)
    return rows, router.version


def _write_routes(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(with_error_codes(pa.Table.from_pylist(rows, schema=ROUTE_SCHEMA)), tmp)
    os.replace(tmp, path)


def _score_domain(cfg: ScoreConfig, domain: str, items: list[Item], routes: dict[int, dict],
                  router_version: str) -> tuple[int, int, int]:
    """Score `items` (all routed to `domain`) into OUT/<domain>/; (scored, errors, shards skipped)."""
    from .scorer import Scorer

    dcfg = dataclasses.replace(cfg, domain=domain, out=cfg.out / domain)
    scorer = Scorer(dcfg)
    out = OutputDir(dcfg.out)
    out.prepare({"input": str(cfg.input), "fingerprint": fingerprint(items), "items": len(items),
                 "shard_size": cfg.shard_size, "domain": domain, "bundle_version": scorer.version,
                 "bundle_sha256": scorer.sha256, "model": cfg.model, "pretrained": cfg.pretrained,
                 "review_out_of_scope": cfg.review_out_of_scope, "router_version": router_version})
    shard_of = {it.index: k // cfg.shard_size for k, it in enumerate(items)}
    done = out.done()
    pending = [it for it in items if shard_of[it.index] not in done]
    sizes: dict[int, int] = {}
    for it in pending:
        sizes[shard_of[it.index]] = sizes.get(shard_of[it.index], 0) + 1
    scored = errors = 0
    batch_items, outcomes = [], []
    for it, outcome in stream_outcomes(scorer, pending, cfg.batch_size, cfg.decode_workers):
        route = routes[it.index]
        if isinstance(outcome, dict) and route["routed_low_confidence"] and not outcome["flagged"]:
            outcome = {**outcome, "needs_review": True}  # the service's rule for a doubtful route
        batch_items.append(it)
        outcomes.append(outcome)
        errors += isinstance(outcome, str)
        shard = shard_of[it.index]
        if len(batch_items) == sizes[shard]:
            table = scorer.table(batch_items, outcomes)
            table = table.append_column("routed_confidence", pa.array(
                [routes[i.index]["routed_confidence"] for i in batch_items], pa.float64()))
            table = table.append_column("routed_low_confidence", pa.array(
                [routes[i.index]["routed_low_confidence"] for i in batch_items], pa.bool_()))
            out.commit(shard, table)
            scored += len(batch_items)
            batch_items, outcomes = [], []
    return scored, errors, len({shard_of[it.index] for it in items} & done)


def score_routed(cfg: ScoreConfig) -> RunSummary:
    """Route every image of `cfg.input`, then score each domain's images into OUT/<domain>/."""
    if cfg.engine != "local":
        raise ValueError("--domain auto runs on the local engine; pass --engine local (or score each domain "
                         "on Ray with --domain D)")
    items = list_inputs(cfg.input, image_column=cfg.image_column, id_column=cfg.id_column)
    cfg.out.mkdir(parents=True, exist_ok=True)
    run_file = cfg.out / RUN_FILE
    run = {"domain": "auto", "fingerprint": fingerprint(items), "items": len(items), "shard_size": cfg.shard_size}
    if run_file.is_file():
        old = json.loads(run_file.read_text())
        if any(old.get(k) != v for k, v in run.items()):
            raise ValueError(f"{cfg.out} holds a different run; resume only with the same input and shard size, "
                             "or pass a new --out")
    elif any(cfg.out.iterdir()):
        raise ValueError(f"{cfg.out} exists and is not a backlog output (no {RUN_FILE}); pass a new --out")
    run_file.write_text(json.dumps({**run, "input": str(cfg.input)}, indent=2))
    result = RunSummary(cfg.engine, str(cfg.out), len(items), 0, 0)
    rows, router_version = _route(cfg, items)
    _write_routes(cfg.out / ROUTES, rows)
    routes = {r["index"]: r for r in rows}
    result.errors = sum(r["error"] is not None for r in rows)
    by_domain: dict[str, list[Item]] = {}
    for it in items:
        if routes[it.index]["domain"] is not None:
            by_domain.setdefault(routes[it.index]["domain"], []).append(it)
    for domain, its in sorted(by_domain.items()):
        scored, errors, skipped = _score_domain(cfg, domain, its, routes, router_version)
        result.scored += scored
        result.errors += errors
        result.shards += -(-len(its) // cfg.shard_size)
        result.shards_skipped += skipped
        log.info("%s: %d images routed, %d scored now", domain, len(its), scored)
    return result.finish()


def read_routed(path: Path) -> pa.Table:
    """A routed run as one table: every domain's rows plus the rows that failed before routing."""
    tables = [pq.read_table(f) for f in sorted(path.glob("*/shard-*.parquet"))]
    routes = pq.read_table(path / ROUTES)
    tables.append(routes.filter(pc.is_valid(routes.column("error"))))  # refused before routing: no domain
    return pa.concat_tables(tables, promote_options="default").sort_by("index")
