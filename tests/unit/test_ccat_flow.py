"""The CCAT flow whole, on the time-skipping server: the real workflows and activities, as
``unembargo worker --location ...`` registers them for every location of three sites (folders
and an SQLite database; the stack test proves the same with S3 archives).

It proves that new work fails over to the secondary buffer when the primary is made inactive
while a bundle is in flight, that the bundle already routed to the primary still completes
from there, and that every package ends up verified in both archives, its SOURCE and BUFFER
copies deleted only then.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path

from pydantic import SecretStr
from sqlmodel import Session, select
from typer.testing import CliRunner

from unembargo.cli.app import app
from unembargo.client.ccat import file_observation, package_view, start_package
from unembargo.devstack.ccat_sites import add_sites
from unembargo.models import ccat as c
from unembargo.models.ccat_tables import CopyState, PhysicalCopy
from unembargo.models.locations import get_location
from unembargo.models.settings import Settings
from unembargo.models.tables import connect
from unembargo.workers.worker import build_workers

RESULT_TIMEOUT = timedelta(seconds=60)


def observe(root: Path, source: str, session: Session, obs: str) -> None:
    folder = root / source / obs
    folder.mkdir(parents=True)
    paths = []
    for i in range(2):
        (folder / f"{obs}_{i}.fits").write_bytes(f"{obs} module {i} ".encode() * 500)
        paths.append(folder / f"{obs}_{i}.fits")
    file_observation(session, source, obs, paths)


async def test_new_work_fails_over_to_the_secondary_buffer_and_every_copy_ends_archived(env, queue, tmp_path):
    settings = Settings(
        database_url=SecretStr(f"sqlite:///{tmp_path / 'ccat.db'}"),
        state_dir=tmp_path,
        workflow_task_queue=queue,
    )
    engine = connect(settings.database_url.get_secret_value())
    root = tmp_path / "sites"
    tag = uuid.uuid4().hex[:6]
    with Session(engine) as s:
        sites = add_sites(s, root, tag=tag)
    primary, secondary = sites.buffers
    policy = c.CcatPolicy(bundle_wait_s=600)
    async with AsyncExitStack() as stack:
        for w in build_workers(env.client, settings, sites.all()):
            await stack.enter_async_context(w)
        with Session(engine) as s:
            observe(root, sites.source, s, f"obs-a-{tag}")
            wid, _ = await start_package(env.client, s, queue, f"obs-a-{tag}", sites.source, policy)
        a = await env.client.get_workflow_handle(wid, result_type=c.PackageReceipt).result(
            rpc_timeout=RESULT_TIMEOUT
        )
        # Obs a's bundle now waits at the primary for more packages: take the primary out.
        with Session(engine) as s:
            loc = get_location(s, primary)
            loc.active = False
            s.add(loc)
            s.commit()
            observe(root, sites.source, s, f"obs-b-{tag}")
            wid, _ = await start_package(env.client, s, queue, f"obs-b-{tag}", sites.source, policy)
        await env.client.get_workflow_handle(wid).result(rpc_timeout=RESULT_TIMEOUT)
        # Past the bundle timer (handles not from a start do not skip time by themselves).
        await env.sleep(policy.bundle_wait_s + 1)
        bundles = {c.transfer_name(primary, 1): primary, c.transfer_name(secondary, 1): secondary}
        results = {}
        for name in bundles:
            handle = env.client.get_workflow_handle(
                c.transfer_workflow_id(name), result_type=c.TransferResult
            )
            results[name] = await handle.result(rpc_timeout=RESULT_TIMEOUT)
        # An operator asking to delete an archive copy: the run fails under its name, the copy stays.
        cli_env = {
            "UNEMBARGO_DATABASE_URL": settings.database_url.get_secret_value(),
            "UNEMBARGO_TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
            "UNEMBARGO_TEMPORAL_NAMESPACE": env.client.namespace,
            "UNEMBARGO_WORKFLOW_TASK_QUEUE": queue,
        }
        archive = sites.archives[0].archive
        refused = await asyncio.to_thread(
            CliRunner().invoke, app, ["ccat", "delete", f"obs-a-{tag}", "--at", archive], env=cli_env
        )
        assert refused.exit_code == 1 and "DeletionRefused" in refused.output, refused.output
    assert a.files == 2
    assert all(r.packages == 1 and not r.refused for r in results.values())
    assert {r.destination for r in results.values()} == {x.site for x in sites.archives}, "not round-robin"
    with Session(engine) as s:
        for obs, buffer in ((f"obs-a-{tag}", primary), (f"obs-b-{tag}", secondary)):
            view = package_view(s, obs)
            assert view is not None and view.state == "archived"
            assert view.verified_archives == sorted(x.site for x in sites.archives)
            at = {(cp.location, cp.kind): cp for cp in view.copies}
            assert at[(buffer, c.PACKAGE)].state == CopyState.DELETED, f"{obs} was not at {buffer}"
            assert at[(sites.source, c.FILE)].state == CopyState.DELETED
            assert not list((root / sites.source / obs).iterdir())
            for x in sites.archives:
                row = at[(x.archive, c.PACKAGE)]
                assert (Path(get_location(s, x.archive).path or "") / row.relpath).stat().st_size == row.size
        live = s.exec(select(PhysicalCopy).where(PhysicalCopy.state != CopyState.DELETED)).all()
        assert {row.location for row in live} == {x.archive for x in sites.archives}
    # `unembargo ccat status`: where the package is, how many copies, which are verified.
    env = {"UNEMBARGO_DATABASE_URL": settings.database_url.get_secret_value()}
    shown = CliRunner().invoke(app, ["ccat", "status", f"obs-a-{tag}", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    got = json.loads(shown.output)
    assert got["state"] == "archived" and len(got["verified_archives"]) == 2
    assert {(cp["location"], cp["verified"]) for cp in got["copies"] if cp["state"] == "present"} == {
        (x.archive, True) for x in sites.archives
    }
    table = CliRunner().invoke(app, ["ccat", "status"], env=env)
    assert table.exit_code == 0 and f"obs-b-{tag}" in table.output and "verified at 2 archive" in table.output
