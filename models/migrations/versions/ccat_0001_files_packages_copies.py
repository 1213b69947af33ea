"""The CCAT flow's tables: raw files, packages, transfer packages, physical copies.

Revision ID: ccat_0001
Revises: (none; its own branch, after the location tables)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ccat_0001"
down_revision = None
branch_labels = ("ccat",)
depends_on = "locations_0001"


def upgrade() -> None:
    op.create_table(
        "rawdatafile",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("observation", sa.String(), nullable=False),
        sa.Column("instrument_module", sa.String(), nullable=False, server_default=""),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.String(), nullable=False),
        sa.Column("source", sa.String(), sa.ForeignKey("datalocation.name"), nullable=False),
        sa.Column("relpath", sa.String(), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_rawdatafile_observation", "rawdatafile", ["observation"])
    op.create_table(
        "datatransferpackage",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("buffer", sa.String(), sa.ForeignKey("datalocation.name"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("checksum", sa.String(), nullable=False, server_default=""),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("destination_site", sa.String(), nullable=True),
        sa.Column("route_seq", sa.Integer(), nullable=True),
        sa.Column("updated", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_datatransferpackage_buffer", "datatransferpackage", ["buffer"])
    op.create_index("ix_datatransferpackage_state", "datatransferpackage", ["state"])
    op.create_index("ix_datatransferpackage_destination_site", "datatransferpackage", ["destination_site"])
    op.create_table(
        "rawdatapackage",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("observation", sa.String(), nullable=False),
        sa.Column("source", sa.String(), sa.ForeignKey("datalocation.name"), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("size", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("checksum", sa.String(), nullable=False, server_default=""),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("transfer", sa.String(), sa.ForeignKey("datatransferpackage.name"), nullable=True),
        sa.Column("updated", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_rawdatapackage_observation", "rawdatapackage", ["observation"])
    op.create_index("ix_rawdatapackage_state", "rawdatapackage", ["state"])
    op.create_index("ix_rawdatapackage_transfer", "rawdatapackage", ["transfer"])
    op.create_table(
        "physicalcopy",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("unit", sa.String(), nullable=False),
        sa.Column("location", sa.String(), sa.ForeignKey("datalocation.name"), nullable=False),
        sa.Column("relpath", sa.String(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.String(), nullable=False),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("updated", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("kind", "unit", "location"),
    )
    op.create_index("ix_physicalcopy_unit", "physicalcopy", ["unit"])
    op.create_index("ix_physicalcopy_location", "physicalcopy", ["location"])


def downgrade() -> None:
    for table in ("physicalcopy", "rawdatapackage", "datatransferpackage", "rawdatafile"):
        op.drop_table(table)
