"""Settings keep secrets secret; names refuse anything that could escape a folder or a DID."""

from __future__ import annotations

import doctest
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from unembargo.models import names, tables
from unembargo.models import settings as settings_module
from unembargo.models.errors import NON_RETRYABLE, BadInput
from unembargo.models.settings import Settings


def test_secrets_never_show_in_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    s = Settings(rucio_password="hunter2-secret", database_url="postgresql://u:pw-secret@db/x")
    logging.getLogger("test").warning("settings: %s %r", s, s)
    for text in (repr(s), str(s), caplog.text, s.model_dump_json()):
        assert "hunter2-secret" not in text and "pw-secret" not in text
    assert s.rucio_secret() == "hunter2-secret"


def test_password_file_is_read_when_no_password_is_set(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    assert Settings(rucio_password_file=secret).rucio_secret() == "from-a-file"
    with pytest.raises(RuntimeError, match="no Rucio password"):
        Settings(rucio_password_file=tmp_path / "missing").rucio_secret()


def test_environment_and_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "site.toml"
    config.write_text('s3_bucket = "from-file"\nrucio_rse = "SLAC_RAW"\nembargo_period = "PT40H"\n')
    monkeypatch.setenv("UNEMBARGO_CONFIG", str(config))
    monkeypatch.setenv("UNEMBARGO_RUCIO_RSE", "FROM_ENV")
    s = Settings()
    assert s.s3_bucket == "from-file"
    assert s.rucio_rse == "FROM_ENV"  # the environment wins over the file
    assert s.embargo_period == timedelta(hours=40)


def test_rse_prefix_is_the_parent_of_the_scope_folder(tmp_path: Path) -> None:
    s = Settings(dest_root=tmp_path / "raw")
    assert s.rse_prefix == tmp_path.resolve()


@pytest.mark.parametrize(
    "bad", ["", "..", "../etc", "a/b", "a b", "é", "_x", "-x", "x" * 129, "a\x00b", "MC_O_1.zip"]
)
def test_unsafe_names_are_refused(bad: str) -> None:
    with pytest.raises(names.InvalidName):
        names.workflow_id("LSSTCam", bad)
    with pytest.raises(BadInput):
        names.zip_relpath("LSSTCam", 20251231, bad)


@pytest.mark.parametrize("bad", [0, 2025123, "20251331", "20250230x", "abcdefgh", 30001231])
def test_bad_day_obs_is_refused(bad: int | str) -> None:
    with pytest.raises(names.InvalidName):
        names.day_relpath("LSSTCam", bad)  # type: ignore[arg-type]


def test_every_named_error_is_non_retryable() -> None:
    import unembargo.models.errors as errors

    defined = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, BadInput)}
    assert defined <= set(NON_RETRYABLE)
    assert names.InvalidName.__name__ in NON_RETRYABLE


@pytest.mark.parametrize("module", [names, settings_module, tables])
def test_doc_examples_run(module: object) -> None:
    failed, _ = doctest.testmod(module)  # type: ignore[arg-type]
    assert failed == 0
