"""What the docs state about settings, the zip's memory and benchmark results, checked
against the code and the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from unembargo.adapters import zipping
from unembargo.models.settings import Settings

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"
MIB = 1024 * 1024

# A row of the settings table: | `field` | `UNEMBARGO_FIELD` | default | used for |
_ROW = re.compile(
    r"^\| `(?P<field>[a-z0-9_]+)` \| `(?P<env>UNEMBARGO_[A-Z0-9_]+)` \| (?P<default>[^|]+) \|", re.M
)


def _settings_table() -> dict[str, str]:
    text = (DOCS / "configuration.md").read_text()
    rows = list(_ROW.finditer(text))
    assert all(m["env"] == f"UNEMBARGO_{m['field'].upper()}" for m in rows)
    return {m["field"]: m["default"].strip() for m in rows}


def test_every_setting_is_in_the_configuration_table() -> None:
    table = _settings_table()
    assert set(Settings.model_fields) == set(table)


def test_path_defaults_follow_state_dir_as_documented() -> None:
    marker = Path("<state_dir>")
    moved, default = Settings(state_dir=marker), Settings()
    text = (DOCS / "configuration.md").read_text()
    assert "do not follow `state_dir`" not in text
    for field, shown in _settings_table().items():
        value = getattr(moved, field)
        value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if field != "state_dir" and getattr(default, field) is not None and "<state_dir>" in str(value):
            assert shown == f"`{value}`", f"{field}: the docs say {shown}, the default is {value}"


def test_the_zips_memory_in_flight_is_the_codes() -> None:
    text = (DOCS / "workflow.md").read_text()
    quoted = {int(n) for n in re.findall(r"(\d+) MiB", " ".join(text.split()))}
    assert quoted == {zipping.WINDOW_BYTES // MIB, zipping.PROCESS_BYTES // MIB}


def _quoted_results() -> list[str]:
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *DOCS.glob("*.md")])
    return sorted(set(re.findall(r"benchmarks/results/[A-Za-z0-9_.-]+\.json", text)))


@pytest.mark.parametrize("path", [*_quoted_results(), "benchmarks/results/pipeline-20990101T000000Z.json"])
def test_results_the_docs_quote_can_be_tracked(path: str) -> None:
    if not path.endswith("20990101T000000Z.json"):
        assert (ROOT / path).is_file(), f"the docs quote {path}, which is not there"
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT, capture_output=True, timeout=30
    )
    assert ignored.returncode == 1, f".gitignore ignores {path}, which the docs quote"
