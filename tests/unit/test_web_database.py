"""What the dataflow page reads from and writes to the project's database: a ccat package's
copies (client/ccat.package_view: filed raw files at their SOURCE, by location, with their state
and whether they are verified), and the actions operators took through the page."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from pydantic import SecretStr
from sqlmodel import Session

from unembargo.client.ccat import file_observation
from unembargo.devstack.ccat_sites import add_sites
from unembargo.models.settings import Settings
from unembargo.models.tables import connect
from unembargo.models.web_actions import WebAction
from unembargo.web.flows import flow
from unembargo.web.source import Listed, TemporalSource


def test_a_filed_package_shows_its_files_copy_at_the_source(tmp_path: Path) -> None:
    settings = Settings(database_url=SecretStr(f"sqlite:///{tmp_path / 'ccat.db'}"), state_dir=tmp_path)
    with Session(connect(settings.database_url.get_secret_value())) as session:
        sites = add_sites(session, tmp_path / "sites", tag=uuid.uuid4().hex[:6])
        folder = Path(sites.root) / sites.source / "obs-1"
        folder.mkdir(parents=True)
        paths = []
        for i in range(3):
            paths.append(folder / f"obs-1_m{i}.fits")
            paths[-1].write_bytes(os.urandom(1000))
        file_observation(session, sites.source, "obs-1", paths)
    now = datetime.now(UTC)
    unit = Listed("ccat-package-obs-1", "run", "CcatPackage", "running", {}, now, None)
    [copy] = TemporalSource(settings)._copies(flow("ccat"), unit)
    assert (copy["location"], copy["kind"], copy["size"], copy["relpath"]) == (
        sites.source,
        "file",
        3000,
        "obs-1",
    )
    other = Listed("ccat-transfer-x", "run", "CcatTransfer", "running", {}, now, None)
    assert TemporalSource(settings)._copies(flow("ccat"), other) == []


async def test_actions_are_kept_in_the_database_newest_first(tmp_path: Path) -> None:
    settings = Settings(database_url=SecretStr(f"sqlite:///{tmp_path / 'web.db'}"), state_dir=tmp_path)
    source = TemporalSource(settings)
    for wid, outcome in (("unembargo-LSSTCam-A", "restarted"), ("unembargo-LSSTCam-B", "reset")):
        await source.record(WebAction(who="ops (127.0.0.1:1)", action="retry", flow="unembargo",
                                      workflow_id=wid, outcome=outcome))  # fmt: skip
    assert [a.outcome for a in await source.recorded(None, 10)] == ["reset", "restarted"]
    [only] = await TemporalSource(settings).recorded("unembargo-LSSTCam-A", 10)
    assert only.who == "ops (127.0.0.1:1)" and only.at is not None
