"""The FITS flow's tables (the Gemini FitsStorage database) and its settings.

A file (its name) has one diskfile per version per location: the current version is
present and canonical, an older one neither; each diskfile has one header row with the
keywords operators query. The watcher's memory of the DHS disk, each destination's
health, previews and the calibration association cache are tables here too. Locations
are referred to by ``DataLocation.name``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from unembargo.models.fits_flow import SETTLING, FitsPolicy
from unembargo.models.locations import DataLocation  # noqa: F401 - the foreign keys' table


def _now() -> datetime:
    return datetime.now(UTC)


class FitsSeen(SQLModel, table=True):
    """What the watcher knows of a name on the DHS disk: what it last saw and did."""

    __tablename__ = "fits_seen"

    location: str = Field(primary_key=True, foreign_key="datalocation.name")
    name: str = Field(primary_key=True)
    size: int
    mtime: float
    state: str = SETTLING
    # md5 of the version whose workflow was started (so a touched file is not copied again).
    md5: str | None = None
    # Scans in a row that found the file invalid; at ``invalid_after`` it is reported.
    failures: int = 0
    problem: str = ""
    first_seen: datetime = Field(default_factory=_now)
    updated: datetime = Field(default_factory=_now)


# ---------------------------------------------------------------------------- the database


class FitsFile(SQLModel, table=True):
    """A file name: its versions on every location are its diskfiles."""

    __tablename__ = "fits_file"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)


class FitsDiskFile(SQLModel, table=True):
    """One version of a file on one location; the current one is present and canonical."""

    __tablename__ = "fits_diskfile"
    __table_args__ = (Index("ix_fits_diskfile_current", "file_id", "location", "canonical"),)

    id: int | None = Field(default=None, primary_key=True)
    file_id: int = Field(foreign_key="fits_file.id", index=True)
    # DataLocation.name of the location that holds this version.
    location: str = Field(index=True, foreign_key="datalocation.name")
    # Path (or key) relative to the location's root.
    path: str
    present: bool = True
    canonical: bool = True
    md5: str
    size: int
    lastmod: datetime
    entrytime: datetime = Field(default_factory=_now)
    # astropy's verdict: ok, and what it warned of or could not read (bounded text).
    fits_ok: bool = True
    fits_warnings: str = ""
    fits_errors: str = ""


class HeaderValues(SQLModel):
    """The header keywords operators query, normalised (observation type upper case, binning 'XxY')."""

    instrument: str | None = None
    observation_type: str | None = None
    object: str | None = None
    filter: str | None = None
    exposure_time: float | None = None
    binning: str | None = None
    ut_datetime: datetime | None = None
    ut_date: date | None = None


class FitsHeader(HeaderValues, table=True):
    """A diskfile's header keywords, one row per diskfile."""

    __tablename__ = "fits_header"
    __table_args__ = (
        Index("ix_fits_header_cal", "instrument", "observation_type", "binning", "filter", "ut_date"),
    )

    id: int | None = Field(default=None, primary_key=True)
    diskfile_id: int = Field(foreign_key="fits_diskfile.id", unique=True)


class FitsCalibration(SQLModel, table=True):
    """The calibration association cache: a science file's best bias, flat and dark."""

    __tablename__ = "fits_calibration"
    __table_args__ = (UniqueConstraint("science_file_id", "location", "cal_type"),)

    id: int | None = Field(default=None, primary_key=True)
    science_file_id: int = Field(foreign_key="fits_file.id", index=True)
    location: str = Field(foreign_key="datalocation.name")
    cal_type: str
    cal_file_id: int = Field(foreign_key="fits_file.id")
    # |science - calibration| in days (the closest wins).
    days_apart: float
    made: datetime = Field(default_factory=_now)


class FitsPreview(SQLModel, table=True):
    """A file's preview image at a location, made from the version whose md5 it names."""

    __tablename__ = "fits_preview"

    file_id: int = Field(foreign_key="fits_file.id", primary_key=True)
    location: str = Field(primary_key=True, foreign_key="datalocation.name")
    key: str
    source_md5: str
    width: int
    height: int
    made: datetime = Field(default_factory=_now)


class FitsDestination(SQLModel, table=True):
    """A destination's health: after a failure every file's export to it waits (backoff)."""

    __tablename__ = "fits_destination"

    name: str = Field(primary_key=True, foreign_key="datalocation.name")
    failures: int = 0
    backoff_until: datetime | None = None
    last_error: str = ""
    last_ok: datetime | None = None


FITS_TABLES = (FitsSeen, FitsFile, FitsDiskFile, FitsHeader, FitsCalibration, FitsPreview, FitsDestination)

# ---------------------------------------------------------------------------- settings


class FitsSettings(BaseSettings):
    """The FITS flow's settings (``UNEMBARGO_FITS_*``): its locations and its watcher's pace."""

    model_config = SettingsConfigDict(env_prefix="UNEMBARGO_FITS_", extra="ignore")

    # DataLocation names: the DHS disk watched, the dataflow disk copied to, the destinations
    # exported to, and which destination is the archive (ingest, preview, calibrations).
    dhs: str = "dhs"
    dataflow: str = "dataflow"
    destinations: list[str] = ["archive"]
    archive: str = "archive"
    # The archive's own database (a URL, often with a password: a secret, so not a column of
    # its location row): the archive's ingest, preview and calibration rows are written there.
    # Unset, they share the main database (``UNEMBARGO_DATABASE_URL``) with the summit's.
    archive_database_url: SecretStr | None = None
    # The poller's period (no inotify on NFS filers), a file's minimum age before it is
    # copied, and how many scans in a row a file must fail validation to be reported.
    poll_s: float = 5.0
    min_age_s: float = 10.0
    invalid_after: int = 3
    # A destination that fails waits this long before its next try, doubling up to the maximum.
    backoff_initial_s: float = 5.0
    backoff_max_s: float = 600.0
    calibration_window_days: float = 30.0
    # A worker killed mid-step is noticed after this long without a heartbeat.
    heartbeat_s: float = 30.0

    def policy(self) -> FitsPolicy:
        """The file workflows' policy these settings ask for."""
        return FitsPolicy(heartbeat_s=self.heartbeat_s, calibration_window_days=self.calibration_window_days)
