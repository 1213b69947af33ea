"""What keeps names, paths and payloads safe without a service: names that could escape a
folder, destination paths that would leave the root, the payload key and codec. (What real
runs leave in histories and logs: tests/stack/test_security.py.)"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload

from unembargo.activities.context import Resources
from unembargo.engine.codec import PayloadCodecAES, PayloadKeyError, new_key, read_key
from unembargo.models import names
from unembargo.models.errors import UnsafeKey
from unembargo.models.settings import Settings


def test_a_bad_key_file_is_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(PayloadKeyError, match="cannot read"):
        read_key(tmp_path / "missing")
    for content in ("", "not base64!", base64.b64encode(b"short").decode()):
        path = tmp_path / "key"
        path.write_text(content)
        with pytest.raises(PayloadKeyError, match="base64 of 32 bytes"):
            read_key(path)


async def test_a_tampered_payload_is_a_named_error() -> None:
    codec = PayloadCodecAES(new_key())
    [sealed] = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')])
    sealed.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(PayloadKeyError, match="does not decrypt"):
        await codec.decode([sealed])


def test_destination_paths_stay_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "dest" / "raw"
    (root / "inside").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "out-link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "in-link").symlink_to(root / "inside", target_is_directory=True)
    (root / "dangling.zip").symlink_to(tmp_path / "elsewhere" / "x.zip")
    resources = Resources(Settings(dest_root=root))
    assert resources.dest_path("LSSTCam/20251231/x.zip") == root.resolve() / "LSSTCam/20251231/x.zip"
    assert resources.dest_path("in-link/x.zip") == (root / "inside" / "x.zip").resolve()
    for bad in ["../x.zip", "/etc/passwd", "a/../../x.zip", "", ".", "out-link/x.zip", "dangling.zip"]:
        with pytest.raises(UnsafeKey, match="would leave the destination root"):
            resources.dest_path(bad)


@pytest.mark.parametrize("bad", ["..", "../x", "a/b", "a\\b", "x\x00", "", " x", "-x", "x" * 129, "é"])
def test_names_refuse_what_could_escape_a_folder(bad: str) -> None:
    for check in (names.check_name, lambda kind, v: names.zip_relpath("LSSTCam", 20251231, v)):
        with pytest.raises(names.InvalidName):
            check("obs_id", bad)
    with pytest.raises(names.InvalidName):
        names.zip_relpath(bad, 20251231, "MC_O_20251231_000001")
