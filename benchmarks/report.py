"""Where the benchmarks put what they measured: a JSON file per run, and the text
between the "measured" markers of their page under docs/."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MEASURED_START = "<!-- measured:start -->"
MEASURED_END = "<!-- measured:end -->"


def write_results(kind: str, result: dict[str, Any]) -> Path:
    """The whole result as ``benchmarks/results/<kind>-<UTC time>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{kind}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def replace_measured(doc: Path, body: str) -> None:
    """Put ``body`` between the measured markers of ``doc``, replacing what was there."""
    text = doc.read_text()
    start, end = text.index(MEASURED_START), text.index(MEASURED_END) + len(MEASURED_END)
    doc.write_text(f"{text[:start]}{MEASURED_START}\n{body}\n{MEASURED_END}{text[end:]}")
