"""Run one of Rucio's conveyor daemons with the stack's copying transfertool; in the server venv.

    <rucio venv>/bin/python rucio_conveyor.py RECORDS_DIR DAEMON [daemon options...]

``DAEMON`` is ``submitter``, ``poller``, ``finisher`` or ``stager``; the options are the
daemon's own (``rucio-conveyor-<daemon> --help``). With ``RUCIO_CONFIG`` naming the server's
rucio.cfg, this sets ``[conveyor] transfertool = stackcopy`` (and, for the poller,
``filter_transfertool``, so it polls only this tool's transfers) and ``stackcopy_records`` in
memory, registers ``rucio_copytool.CopyTransfertool`` in Rucio's table of transfertools by
name, then runs the venv's own ``rucio-conveyor-<daemon>`` script: Rucio's code, unchanged,
choosing the tool by name as it would choose FTS3. Nothing in the venv is edited.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

DAEMONS = ("submitter", "poller", "finisher", "stager")


def configure(records: Path, daemon: str) -> None:
    """Rucio's in-memory config for this process: the daemons read it when they are imported."""
    import rucio_copytool
    from rucio.common.config import config_add_section, config_has_section, config_set

    if not config_has_section("conveyor"):
        config_add_section("conveyor")
    config_set("conveyor", "transfertool", rucio_copytool.NAME)
    config_set("conveyor", rucio_copytool.RECORDS_OPTION, str(records))
    if daemon == "poller":
        config_set("conveyor", "filter_transfertool", rucio_copytool.NAME)


def register() -> None:
    """Rucio picks a transfertool by name from ``TRANSFERTOOL_CLASSES_BY_NAME``: add ours."""
    import rucio_copytool
    from rucio.core import transfer

    transfer.TRANSFERTOOL_CLASSES_BY_NAME[rucio_copytool.NAME] = rucio_copytool.CopyTransfertool


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in DAEMONS:
        raise SystemExit(f"usage: rucio_conveyor.py RECORDS_DIR {{{','.join(DAEMONS)}}} [options...]")
    records, daemon, options = Path(argv[0]).resolve(), argv[1], argv[2:]
    records.mkdir(parents=True, exist_ok=True)
    configure(records, daemon)
    register()
    script = Path(sys.executable).parent / f"rucio-conveyor-{daemon}"
    sys.argv = [str(script), *options]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
