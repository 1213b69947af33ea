"""Sites with short names, data locations, the side-effect ledger.

Revision ID: locations_0001
Revises: (none; the base every flow's branch depends on)

Creates what is missing, so it serves a new database and one made by the former ``create_all``
alike. From such a database it moves each row of the former ``location`` table (one task queue
per location, a *kind*, highest priority preferred) to ``datalocation``: a ``destination`` becomes
a long-term archive on disk serving the unembargo operation, ``rucio`` a catalogue service; the
priority is negated (lower is now preferred, same order) and the former queue is kept as the
location's legacy queue, so workflows started before still reach a worker.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "locations_0001"
down_revision = None
branch_labels = ("locations",)
depends_on = None

# The former kinds, as this revision found them.
_KINDS: dict[str, dict[str, str | None]] = {
    "destination": {
        "type": "long_term_archive",
        "storage": "disk",
        "field": "path",
        "operations": "unembargo",
    },
    "rucio": {"type": "catalogue", "storage": "service", "field": "endpoint", "operations": None},
}


def _short_names(names: list[str]) -> dict[str, str]:
    """A unique queue-safe short name per site name (lower case, other characters as '-')."""
    taken: set[str] = set()
    found = {}
    for name in sorted(names):
        base = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:28] or "site"
        short, n = base, 1
        while short in taken:
            n += 1
            short = f"{base}-{n}"
        taken.add(short)
        found[name] = short
    return found


def upgrade() -> None:
    bind = op.get_bind()
    tables = set(sa.inspect(bind).get_table_names())
    if "site" not in tables:
        op.create_table(
            "site",
            sa.Column("name", sa.String(), primary_key=True),
            sa.Column("short_name", sa.String(), nullable=False),
            sa.Column("description", sa.String(), nullable=False, server_default=""),
        )
    elif "short_name" not in {c["name"] for c in sa.inspect(bind).get_columns("site")}:
        with op.batch_alter_table("site") as batch:
            batch.add_column(sa.Column("short_name", sa.String(), nullable=True))
        sites = sa.table("site", sa.column("name", sa.String()), sa.column("short_name", sa.String()))
        for name, short in _short_names([r[0] for r in bind.execute(sa.select(sites.c.name))]).items():
            bind.execute(sites.update().where(sites.c.name == name).values(short_name=short))
        with op.batch_alter_table("site") as batch:
            batch.alter_column("short_name", existing_type=sa.String(), nullable=False)
    op.create_index("ix_site_short_name", "site", ["short_name"], unique=True)

    op.create_table(
        "datalocation",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("site", sa.String(), sa.ForeignKey("site.name"), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("storage", sa.String(), nullable=False),
        sa.Column("path", sa.String(), nullable=True),
        sa.Column("endpoint", sa.String(), nullable=True),
        sa.Column("bucket", sa.String(), nullable=True),
        sa.Column("prefix", sa.String(), nullable=False, server_default=""),
        sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("operations", sa.String(), nullable=True),
        sa.Column("legacy_queue", sa.String(), nullable=True),
    )
    op.create_index("ix_datalocation_site", "datalocation", ["site"])
    op.create_index("ix_datalocation_type", "datalocation", ["type"])

    if "location" in tables:
        _move_locations(bind)
        op.drop_table("location")

    if "effect" not in tables:
        op.create_table(
            "effect",
            sa.Column("id", sa.Integer(), primary_key=True),
            sa.Column("obs_id", sa.String(), nullable=False),
            sa.Column("step", sa.String(), nullable=False),
            sa.Column("action", sa.String(), nullable=False),
            sa.Column("at", sa.DateTime(), nullable=False),
        )
        op.create_index("ix_effect_obs_id", "effect", ["obs_id"])


def _move_locations(bind: sa.Connection) -> None:
    old = sa.table(
        "location",
        *(sa.column(c) for c in ("name", "site", "kind", "storage")),
        sa.column("priority", sa.Integer()),
        sa.column("active", sa.Boolean()),
    )
    new = sa.table(
        "datalocation",
        *(
            sa.column(c)
            for c in ("name", "site", "type", "storage", "path", "endpoint", "operations", "legacy_queue")
        ),
        sa.column("priority", sa.Integer()),
        sa.column("active", sa.Boolean()),
    )
    for row in bind.execute(sa.select(old)).mappings():
        kind = _KINDS.get(row["kind"])
        if kind is None:
            raise RuntimeError(
                f"location {row['name']!r} has kind {row['kind']!r}, which this migration does not know "
                f"(known: {', '.join(_KINDS)}); change or remove the row and migrate again"
            )
        bind.execute(
            new.insert().values(
                name=row["name"],
                site=row["site"],
                type=kind["type"],
                storage=kind["storage"],
                **{str(kind["field"]): row["storage"]},
                operations=kind["operations"],
                priority=-(row["priority"] or 0),
                active=bool(row["active"]),
                legacy_queue=f"unembargo-loc-{row['name']}",
            )
        )


def downgrade() -> None:
    op.drop_table("datalocation")
    op.drop_index("ix_site_short_name", table_name="site")
    with op.batch_alter_table("site") as batch:
        batch.drop_column("short_name")
