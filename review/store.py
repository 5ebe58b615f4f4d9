"""The review store: queue items, claims, verdicts, retention, stats; SQLite or PostgreSQL through one code path.

SQLAlchemy 2 Core, not raw drivers: the two backends differ in a handful of places (claim locking,
upsert, transaction start), and Core keeps every query written once, with the dialect choosing
the SQL. Sessions and the ORM are not used: every operation is one short transaction.

Concurrency:
  * SQLite runs in WAL mode (readers never block the writer; several service processes write).
    Every writing transaction starts with BEGIN IMMEDIATE, so it holds the write lock before it
    reads: a claim's SELECT and UPDATE cannot interleave with another process's claim, and a
    busy writer is waited for (busy timeout) instead of failing on a stale snapshot.
  * PostgreSQL claims with `SELECT ... FOR UPDATE SKIP LOCKED` inside the UPDATE: concurrent
    claimers skip each other's rows instead of waiting for or double-taking them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from . import schema
from .schema import images, items
from .stats import DecidedRow, domain_stats

log = logging.getLogger(__name__)

REASONS = ("needs_review", "audit", "out_of_scope")
OFF = "off"


class ReviewError(Exception):
    """A request the store refuses. `kind`: not_found, already_decided, not_undoable, image_purged."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class NewItem:
    """What the service hands the store for one answer sent to review."""

    id: str  # the answer's review_id
    image: bytes
    content_type: str
    domain: str
    version: str  # bundle version that answered
    reason: str  # one of REASONS
    answer: dict  # the answer as returned (review_id included)
    created_at: float  # unix seconds


def normalise_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3 (SQLAlchemy's own default would be psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str) -> Engine:
    """An engine for `url` (sqlite:///PATH or postgresql://...), with the SQLite settings described above."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30.0})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's own BEGIN is deferred)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("review_readonly") else "BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql"):
        return sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4,
                                connect_args={"connect_timeout": 5})
    raise ValueError(f"unsupported review database URL {url!r}: use sqlite:///PATH, postgresql://... or 'off'")


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


_LIST_COLUMNS = [*items.c, images.c.content_type, images.c.purged_at]


def _item(row: Any) -> dict:
    """A stored row -> the API's item shape."""
    m = row._mapping
    verdict = None if m["decided_at"] is None else {
        "label": m["verdict_label"], "unsafe": bool(m["verdict_unsafe"]), "reviewer": m["reviewer"],
        "decided_at": _iso(m["decided_at"])}
    claim = None if m["claimed_by"] is None else {"reviewer": m["claimed_by"],
                                                  "expires_at": _iso(m["claim_expires"])}
    return {"id": m["id"], "domain": m["domain"], "version": m["version"], "reason": m["reason"],
            "created_at": _iso(m["created_at"]), "answer": json.loads(m["answer"]), "verdict": verdict,
            "claim": claim, "content_type": m.get("content_type"),
            "image_available": m.get("purged_at") is None}


class ReviewStore:
    """One review database. Thread-safe (a connection pool); every method is one short transaction."""

    def __init__(self, url: str, *, claim_s: float = 300.0, retention_days: float = 30.0, undo_s: float = 300.0):
        self.url = url
        self.engine = make_engine(url)
        self.claim_s, self.retention_s, self.undo_s = claim_s, retention_days * 86400.0, undo_s
        self.postgres = self.engine.dialect.name == "postgresql"
        self._migrated = False

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(review_readonly=True) as conn, conn.begin():
            yield conn

    def migrate(self, target: int = schema.LATEST) -> list[int]:
        """Bring the schema to `target` (default: the latest); returns the versions applied."""
        with self._write() as conn:
            applied = schema.migrate(conn, target)
        if applied:
            log.info("review database %s: applied schema version(s) %s", self.engine.url.render_as_string(),
                     applied)
        return applied

    def ensure_schema(self) -> None:
        """Migrate once per process (idempotent; concurrent processes are serialised in `schema.migrate`)."""
        if not self._migrated:
            self.migrate()
            self._migrated = True

    def schema_version(self) -> int:
        with self._read() as conn:
            return schema.current_version(conn)

    def close(self) -> None:
        self.engine.dispose()

    def _insert(self, table: sa.Table):
        if self.postgres:
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    # ------------------------------------------------------------------ queue
    def add(self, new: Iterable[NewItem]) -> int:
        """Store items (one transaction); an image already stored (same sha256) is kept once."""
        import hashlib

        new = list(new)
        if not new:
            return 0
        imgs, rows = {}, []
        for it in new:
            if it.reason not in REASONS:
                raise ValueError(f"unknown review reason {it.reason!r}; one of {REASONS}")
            sha = hashlib.sha256(it.image).hexdigest()
            imgs[sha] = {"sha256": sha, "content_type": it.content_type, "size": len(it.image), "data": it.image,
                         "created_at": it.created_at, "purged_at": None}
            rows.append({"id": it.id, "image_sha256": sha, "domain": it.domain, "version": it.version,
                         "reason": it.reason, "answer": json.dumps(it.answer, separators=(",", ":")),
                         "created_at": it.created_at, **schema.decision_columns(it.answer)})
        ins = self._insert(images)
        upsert = ins.on_conflict_do_update(  # a purged image sent again gets its bytes back
            index_elements=[images.c.sha256], set_={"data": ins.excluded.data, "purged_at": None},
            where=images.c.data.is_(None))
        with self._write() as conn:
            conn.execute(upsert, list(imgs.values()))
            conn.execute(items.insert(), rows)
        return len(rows)

    def pending_counts(self) -> dict[str, int]:
        """Undecided items per domain."""
        q = (sa.select(items.c.domain, sa.func.count()).where(items.c.decided_at.is_(None))
             .group_by(items.c.domain))
        with self._read() as conn:
            return {d: n for d, n in conn.execute(q)}

    def get(self, item_id: str) -> dict:
        q = sa.select(*_LIST_COLUMNS).join(images).where(items.c.id == item_id)
        with self._read() as conn:
            row = conn.execute(q).first()
        if row is None:
            raise ReviewError("not_found", f"no review item {item_id!r}")
        return _item(row)

    def list(self, status: str = "pending", domain: str | None = None, reason: str | None = None,
             limit: int = 50) -> list[dict]:
        """Pending items oldest first, or decided items most recent verdict first."""
        q = sa.select(*_LIST_COLUMNS).join(images)
        if status == "pending":
            q = q.where(items.c.decided_at.is_(None)).order_by(items.c.created_at, items.c.id)
        elif status == "decided":
            q = q.where(items.c.decided_at.is_not(None)).order_by(items.c.decided_at.desc(), items.c.id)
        else:
            raise ValueError(f"status must be 'pending' or 'decided', not {status!r}")
        if domain:
            q = q.where(items.c.domain == domain)
        if reason:
            q = q.where(items.c.reason == reason)
        with self._read() as conn:
            return [_item(r) for r in conn.execute(q.limit(limit))]

    def claim(self, reviewer: str, domain: str | None = None, limit: int = 1, now: float | None = None) -> list[dict]:
        """Claim up to `limit` pending items, oldest first, that nobody holds an unexpired claim on."""
        now = time.time() if now is None else now
        free = sa.and_(items.c.decided_at.is_(None),
                       sa.or_(items.c.claim_expires.is_(None), items.c.claim_expires < now))
        pick = sa.select(items.c.id).where(free)
        if domain:
            pick = pick.where(items.c.domain == domain)
        pick = pick.order_by(items.c.created_at, items.c.id).limit(limit)
        if self.postgres:
            pick = pick.with_for_update(skip_locked=True)
        # a CTE, not `id IN (subquery)`: PostgreSQL may rescan an IN subquery once per outer row, and each
        # rescan of a LIMIT ... SKIP LOCKED subquery locks the next rows (one claim would take them all)
        picked = pick.cte("picked")
        stmt = (items.update().where(items.c.id == picked.c.id).where(free)
                .values(claimed_by=reviewer, claim_expires=now + self.claim_s).returning(items.c.id))
        with self._write() as conn:
            ids = [r[0] for r in conn.execute(stmt)]
            if not ids:
                return []
            rows = conn.execute(sa.select(*_LIST_COLUMNS).join(images).where(items.c.id.in_(ids))
                                .order_by(items.c.created_at, items.c.id)).all()
        return [_item(r) for r in rows]

    def image(self, item_id: str) -> tuple[bytes, str]:
        """The item's image bytes and content type."""
        q = sa.select(images.c.data, images.c.content_type).join(items).where(items.c.id == item_id)
        with self._read() as conn:
            row = conn.execute(q).first()
        if row is None:
            raise ReviewError("not_found", f"no review item {item_id!r}")
        if row.data is None:
            raise ReviewError("image_purged", f"the image of review item {item_id!r} was purged by retention")
        return bytes(row.data), row.content_type

    # ------------------------------------------------------------------ verdicts
    def decide(self, item_id: str, label: str | None, unsafe: bool, reviewer: str, now: float | None = None) -> dict:
        """Record a verdict; ReviewError not_found / already_decided."""
        now = time.time() if now is None else now
        stmt = (items.update().where(items.c.id == item_id, items.c.decided_at.is_(None))
                .values(decided_at=now, verdict_label=label, verdict_unsafe=bool(unsafe), reviewer=reviewer,
                        claimed_by=None, claim_expires=None).returning(items.c.id))
        with self._write() as conn:
            if conn.execute(stmt).first() is None:
                row = conn.execute(sa.select(items.c.reviewer).where(items.c.id == item_id)).first()
                if row is None:
                    raise ReviewError("not_found", f"no review item {item_id!r}")
                raise ReviewError("already_decided", f"review item {item_id!r} already has a verdict "
                                                     f"(by {row.reviewer!r})")
        return self.get(item_id)

    def undo(self, item_id: str, reviewer: str, now: float | None = None) -> dict:
        """Withdraw `reviewer`'s verdict within `undo_s` of it; the item is pending again, claimed by them."""
        now = time.time() if now is None else now
        stmt = (items.update().where(items.c.id == item_id, items.c.reviewer == reviewer,
                                     items.c.decided_at >= now - self.undo_s)
                .values(decided_at=None, verdict_label=None, verdict_unsafe=None, reviewer=None,
                        claimed_by=reviewer, claim_expires=now + self.claim_s).returning(items.c.id))
        with self._write() as conn:
            if conn.execute(stmt).first() is None:
                row = conn.execute(sa.select(items.c.reviewer, items.c.decided_at)
                                   .where(items.c.id == item_id)).first()
                if row is None:
                    raise ReviewError("not_found", f"no review item {item_id!r}")
                if row.decided_at is None:
                    why = "it has no verdict"
                elif row.reviewer != reviewer:
                    why = f"the verdict is {row.reviewer!r}'s, not {reviewer!r}'s"
                else:
                    why = f"the verdict is older than the undo window ({self.undo_s:g} s)"
                raise ReviewError("not_undoable", f"cannot undo the verdict on {item_id!r}: {why}")
        return self.get(item_id)

    def decided_rows(self, domain: str | None = None) -> list[DecidedRow]:
        q = sa.select(items.c.domain, items.c.reason, items.c.model_label, items.c.model_flagged,
                      items.c.model_review, items.c.verdict_label, items.c.verdict_unsafe).where(
            items.c.decided_at.is_not(None))
        if domain:
            q = q.where(items.c.domain == domain)
        with self._read() as conn:
            return [DecidedRow(r.domain, r.reason, r.model_label, bool(r.model_flagged), bool(r.model_review),
                               r.verdict_label, bool(r.verdict_unsafe)) for r in conn.execute(q)]

    def stats(self) -> dict:
        """DESIGN §13's `/review/stats` body (plus per-label agreement)."""
        return domain_stats(self.pending_counts(), self.decided_rows())

    def verdicts(self, domain: str) -> list[dict]:
        """Decided items of `domain` whose image is still stored, oldest verdict first: for recalibration."""
        q = (sa.select(items.c.id, items.c.reason, items.c.version, items.c.verdict_label, items.c.verdict_unsafe,
                       items.c.decided_at, images.c.data, images.c.content_type).join(images)
             .where(items.c.domain == domain, items.c.decided_at.is_not(None), images.c.data.is_not(None))
             .order_by(items.c.decided_at, items.c.id))
        with self._read() as conn:
            return [{"id": r.id, "reason": r.reason, "version": r.version, "label": r.verdict_label,
                     "unsafe": bool(r.verdict_unsafe), "image": bytes(r.data), "content_type": r.content_type}
                    for r in conn.execute(q)]

    # ------------------------------------------------------------------ retention
    def purge(self, now: float | None = None) -> int:
        """Drop the bytes of images whose every item got its verdict more than the retention period ago."""
        now = time.time() if now is None else now
        cutoff = now - self.retention_s
        ref = items.c.image_sha256 == images.c.sha256
        live = sa.select(items.c.id).where(ref, sa.or_(items.c.decided_at.is_(None), items.c.decided_at >= cutoff))
        stmt = (images.update().where(images.c.data.is_not(None), ~sa.exists(live),
                                      sa.exists(sa.select(items.c.id).where(ref)))
                .values(data=None, purged_at=now))
        with self._write() as conn:
            n = conn.execute(stmt).rowcount
        if n:
            log.info("review retention: purged %d image(s) decided before %s", n, _iso(cutoff))
        return n
