"""The review store's tables and its versioned migrations (SQLAlchemy Core, SQLite and PostgreSQL alike).

`review_migrations` records each applied version. `migrate(conn)` applies the missing steps in
order inside the caller's transaction; on PostgreSQL an advisory lock serialises processes that
start together, on SQLite the caller's BEGIN IMMEDIATE does.

Versions:
  1. images (content-addressed by sha256, bytes in the database), items (answer JSON, reason,
     times, claim, verdict).
  2. the model's decision as columns (`model_label`, `model_flagged`, `model_review`), backfilled
     from the answer JSON, so that stats read columns instead of parsing every answer; and the
     index the claim query walks (pending items of a domain, oldest first).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

metadata = sa.MetaData()

migrations = sa.Table(
    "review_migrations", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_at", sa.Double, nullable=False),  # unix seconds
)

images = sa.Table(
    "review_images", metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("content_type", sa.String(64), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=True),  # NULL once purged by retention
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("purged_at", sa.Double, nullable=True),
)

items = sa.Table(
    "review_items", metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # the answer's review_id
    sa.Column("image_sha256", sa.String(64), sa.ForeignKey("review_images.sha256"), nullable=False),
    sa.Column("domain", sa.String(128), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),  # bundle version that answered
    sa.Column("reason", sa.String(32), nullable=False),  # needs_review | audit | out_of_scope
    sa.Column("answer", sa.Text, nullable=False),  # the /classify answer, JSON, as returned
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("claimed_by", sa.String(128), nullable=True),
    sa.Column("claim_expires", sa.Double, nullable=True),
    sa.Column("decided_at", sa.Double, nullable=True),
    sa.Column("verdict_label", sa.String(128), nullable=True),  # NULL: none of the labels / benign
    sa.Column("verdict_unsafe", sa.Boolean, nullable=True),
    sa.Column("reviewer", sa.String(128), nullable=True),
    # version 2
    sa.Column("model_label", sa.String(128), nullable=True),  # the answer's top_label (NULL: out of scope)
    sa.Column("model_flagged", sa.Boolean, nullable=True),
    sa.Column("model_review", sa.Boolean, nullable=True),  # the answer's needs_review
    sa.Index("ix_review_items_decided", "decided_at"),
    sa.Index("ix_review_items_image", "image_sha256"),
)
PENDING_INDEX = sa.Index("ix_review_items_pending", items.c.domain, items.c.decided_at, items.c.created_at)

V1_COLUMNS = [c for c in items.columns if c.name not in ("model_label", "model_flagged", "model_review")]


def _v1(conn: Connection) -> None:
    """Initial schema: images, items (without the version-2 columns), the decided and image indexes."""
    v1_items = sa.Table("review_items", sa.MetaData(), *(c._copy() for c in V1_COLUMNS),
                        sa.Index("ix_review_items_decided", "decided_at"),
                        sa.Index("ix_review_items_image", "image_sha256"))
    images.to_metadata(v1_items.metadata)  # the foreign key's target
    v1_items.metadata.create_all(conn)


def _v2(conn: Connection) -> None:
    """Decision columns backfilled from the answer JSON; the pending-claim index."""
    for name, kind in (("model_label", "VARCHAR(128)"), ("model_flagged", "BOOLEAN"), ("model_review", "BOOLEAN")):
        conn.execute(sa.text(f"ALTER TABLE review_items ADD COLUMN {name} {kind}"))
    rows = conn.execute(sa.select(items.c.id, items.c.answer)).all()
    for rid, answer in rows:
        a = json.loads(answer)
        conn.execute(items.update().where(items.c.id == rid).values(**decision_columns(a)))
    PENDING_INDEX.create(conn)


def decision_columns(answer: dict) -> dict:
    """The version-2 columns of an item, read from its answer."""
    return {"model_label": answer.get("top_label"), "model_flagged": bool(answer.get("flagged")),
            "model_review": bool(answer.get("needs_review"))}


STEPS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "images and items", _v1),
    (2, "decision columns (backfilled) and the pending-claim index", _v2),
]
LATEST = STEPS[-1][0]
PG_LOCK_KEY = 0x5E71E7  # pg_advisory_xact_lock key: one migrating process at a time


def current_version(conn: Connection) -> int:
    """The applied schema version; 0 for an empty database."""
    if not sa.inspect(conn).has_table("review_migrations"):
        return 0
    return conn.execute(sa.select(sa.func.max(migrations.c.version))).scalar() or 0


def migrate(conn: Connection, target: int = LATEST) -> list[int]:
    """Apply the missing steps up to `target` in the caller's transaction; returns the versions applied."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
    migrations.create(conn, checkfirst=True)
    have = current_version(conn)
    if have > LATEST:
        raise RuntimeError(f"the review database has schema version {have}; this code knows up to {LATEST}: "
                           "upgrade the service")
    applied = []
    for version, description, step in STEPS:
        if have < version <= target:
            step(conn)
            conn.execute(migrations.insert().values(version=version, description=description,
                                                    applied_at=time.time()))
            applied.append(version)
    return applied
