"""The butler's yaml export and import through libyaml, PyYAML's C emitter and parser.

daf_butler's yaml transfer backends (``Butler.export`` and ``Butler.import_`` with
``format="yaml"``) call ``yaml.dump`` and ``yaml.safe_load``, PyYAML's pure-Python
code, although PyYAML ships libyaml. For one exposure's dimension yaml (about 200
records) that is most of the export step's and a third of the ingest step's CPU:
libyaml parses it about 6 times and writes it about 4 times faster, to the same data.

The backends reach PyYAML through their module's ``yaml`` name, the one seam there
is; :func:`use_for_butler_transfers` points it at a copy of ``yaml`` whose ``dump``
and ``safe_load`` use the C classes with every tag the butler registered on
``yaml.Dumper`` and ``yaml.SafeLoader`` (uuids, times, timespans, regions). The text
written may be formatted differently; what it reads back as is the same, which is
what the export step checks. Without libyaml nothing changes.

>>> from unembargo.adapters import libyaml
>>> libyaml.use_for_butler_transfers()
True
"""

from __future__ import annotations

import types
from typing import IO, Any

import yaml
from lsst.daf.butler.transfers import _yaml as butler_yaml


class _Dumper(getattr(yaml, "CDumper", yaml.Dumper)):  # type: ignore[misc]
    """libyaml's emitter with yaml.Dumper's representers (the same dicts, so tags
    registered later are seen too)."""

    yaml_representers = yaml.Dumper.yaml_representers
    yaml_multi_representers = yaml.Dumper.yaml_multi_representers


class _SafeLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's parser with yaml.SafeLoader's constructors (the same dicts)."""

    yaml_constructors = yaml.SafeLoader.yaml_constructors
    yaml_multi_constructors = yaml.SafeLoader.yaml_multi_constructors


def dump(data: Any, stream: IO[str] | None = None, **kwargs: Any) -> Any:
    """``yaml.dump`` through libyaml."""
    return yaml.dump(data, stream, Dumper=_Dumper, **kwargs)


def safe_load(stream: Any) -> Any:
    """``yaml.safe_load`` through libyaml."""
    return yaml.load(stream, Loader=_SafeLoader)  # noqa: S506 - a safe loader


def use_for_butler_transfers() -> bool:
    """Make the butler's yaml export and import use libyaml; idempotent.

    Returns whether libyaml is in use (False when PyYAML was built without it).
    """
    if not yaml.__with_libyaml__:
        return False
    if not isinstance(butler_yaml.yaml, types.SimpleNamespace):
        fast = types.SimpleNamespace(**vars(yaml))
        fast.dump = dump
        fast.safe_load = safe_load
        butler_yaml.yaml = fast
    return True
