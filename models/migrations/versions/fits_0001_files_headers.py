"""The FITS flow's tables: files, diskfiles, headers, the watcher's memory, destinations'
health, previews and the calibration association cache (models/fits.py).

Revision ID: fits_0001
Revises: (none; its own branch, after the location tables)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "fits_0001"
down_revision = None
branch_labels = ("fits",)
depends_on = "locations_0001"

_LOCATION = "datalocation.name"


def upgrade() -> None:
    op.create_table(
        "fits_seen",
        sa.Column("location", sa.String(), sa.ForeignKey(_LOCATION), primary_key=True),
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime", sa.Float(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("md5", sa.String(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("problem", sa.String(), nullable=False),
        sa.Column("first_seen", sa.DateTime(), nullable=False),
        sa.Column("updated", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "fits_file",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
    )
    op.create_index("ix_fits_file_name", "fits_file", ["name"], unique=True)
    op.create_table(
        "fits_diskfile",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("file_id", sa.Integer(), sa.ForeignKey("fits_file.id"), nullable=False),
        sa.Column("location", sa.String(), sa.ForeignKey(_LOCATION), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("present", sa.Boolean(), nullable=False),
        sa.Column("canonical", sa.Boolean(), nullable=False),
        sa.Column("md5", sa.String(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("lastmod", sa.DateTime(), nullable=False),
        sa.Column("entrytime", sa.DateTime(), nullable=False),
        sa.Column("fits_ok", sa.Boolean(), nullable=False),
        sa.Column("fits_warnings", sa.String(), nullable=False),
        sa.Column("fits_errors", sa.String(), nullable=False),
    )
    op.create_index("ix_fits_diskfile_file_id", "fits_diskfile", ["file_id"])
    op.create_index("ix_fits_diskfile_location", "fits_diskfile", ["location"])
    op.create_index("ix_fits_diskfile_current", "fits_diskfile", ["file_id", "location", "canonical"])
    op.create_table(
        "fits_header",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "diskfile_id", sa.Integer(), sa.ForeignKey("fits_diskfile.id"), nullable=False, unique=True
        ),
        sa.Column("instrument", sa.String(), nullable=True),
        sa.Column("observation_type", sa.String(), nullable=True),
        sa.Column("object", sa.String(), nullable=True),
        sa.Column("filter", sa.String(), nullable=True),
        sa.Column("exposure_time", sa.Float(), nullable=True),
        sa.Column("binning", sa.String(), nullable=True),
        sa.Column("ut_datetime", sa.DateTime(), nullable=True),
        sa.Column("ut_date", sa.Date(), nullable=True),
    )
    op.create_index(
        "ix_fits_header_cal",
        "fits_header",
        ["instrument", "observation_type", "binning", "filter", "ut_date"],
    )
    op.create_table(
        "fits_calibration",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("science_file_id", sa.Integer(), sa.ForeignKey("fits_file.id"), nullable=False),
        sa.Column("location", sa.String(), sa.ForeignKey(_LOCATION), nullable=False),
        sa.Column("cal_type", sa.String(), nullable=False),
        sa.Column("cal_file_id", sa.Integer(), sa.ForeignKey("fits_file.id"), nullable=False),
        sa.Column("days_apart", sa.Float(), nullable=False),
        sa.Column("made", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("science_file_id", "location", "cal_type"),
    )
    op.create_index("ix_fits_calibration_science_file_id", "fits_calibration", ["science_file_id"])
    op.create_table(
        "fits_preview",
        sa.Column("file_id", sa.Integer(), sa.ForeignKey("fits_file.id"), primary_key=True),
        sa.Column("location", sa.String(), sa.ForeignKey(_LOCATION), primary_key=True),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("source_md5", sa.String(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("made", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "fits_destination",
        sa.Column("name", sa.String(), sa.ForeignKey(_LOCATION), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("backoff_until", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=False),
        sa.Column("last_ok", sa.DateTime(), nullable=True),
    )


def downgrade() -> None:
    for table in ("fits_destination", "fits_preview", "fits_calibration", "fits_header", "fits_diskfile",
                  "fits_file", "fits_seen"):  # fmt: skip
        op.drop_table(table)
