"""Messages for bad input (issue 13, item 5), on small in-memory data (no services)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from unembargo.adapters.butler import main_record_conflict
from unembargo.adapters.headers import raw_metadata
from unembargo.adapters.s3 import S3Object
from unembargo.adapters.zipping import Folder, folder_members
from unembargo.models.errors import RERUN, SourceMismatch, UnsafeKey
from unembargo.models.exposure import Exposure

FOLDER = Folder("embargo", "LSSTCam/20251231/MC_O_20251231_000010/", members={})
WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def obj(name: str, size: int = 3) -> S3Object:
    return S3Object(FOLDER.prefix + name, size, "0" * 32, WHEN)


def test_a_folder_marker_is_no_member() -> None:
    marker = S3Object(FOLDER.prefix, 0, "d41d8cd98f00b204e9800998ecf8427e", WHEN)
    members = folder_members(FOLDER, [marker, obj("a.fits"), obj("b.json")])
    assert sorted(members) == ["a.fits", "b.json"]


def test_an_object_at_the_folder_key_with_bytes_is_still_refused() -> None:
    with pytest.raises(UnsafeKey, match="empty"):
        folder_members(FOLDER, [S3Object(FOLDER.prefix, 5, "0" * 32, WHEN)])


def test_every_unsafe_key_in_one_error() -> None:
    bad = [obj("sub/../../escape.json"), obj("notes/./night.json"), obj("x\\y.json")]
    with pytest.raises(UnsafeKey) as caught:
        folder_members(FOLDER, [obj("a.fits"), *bad])
    message = str(caught.value)
    assert message.startswith(f"3 object keys in s3://embargo/{FOLDER.prefix} cannot be zip members")
    for item in bad:
        assert repr(item.key) in message
    assert "nothing was written" in message and "Rename or remove them" in message


def test_a_raw_that_is_not_fits_says_what_to_do() -> None:
    with pytest.raises(SourceMismatch) as caught:
        raw_metadata("MC_O_20251231_000010_R01_S00.fits", b"NOTFITS " * 360)
    message = str(caught.value)
    assert "does not start with a FITS primary header" in message
    assert "re-upload" in message and RERUN in message


def test_obs_id_conflicts_in_the_main_butler_name_both_sides() -> None:
    exp = Exposure("LSSTCam", 20251231, "MC_O_20251231_000010", 2025123100010)
    other_id = main_record_conflict(exp, other_id=2025123100099)
    assert "holds obs_id 'MC_O_20251231_000010' as exposure 2025123100099, not 2025123100010" in other_id
    other_obs = main_record_conflict(exp, found_obs_id="MC_O_20251231_000099")
    assert (
        "holds exposure 2025123100010 as obs_id 'MC_O_20251231_000099', not 'MC_O_20251231_000010'"
        in other_obs
    )
    assert "Correct the wrong record" in other_obs
