"""Frozen dataclasses that cross a process boundary (an Airflow XCom, a JSON file) as JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any, Self


class Record:
    """Mixin for frozen dataclasses of plain values: ``to_json()`` and ``from_json()``.

    ``from_json`` ignores keys the class does not know (an older or newer writer) and passes an
    instance of the class through unchanged, so a step accepts either.
    """

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready copy (nested records become dicts)."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, values: Mapping[str, Any] | Self) -> Self:
        """Rebuild from :meth:`to_json` output."""
        if isinstance(values, cls):
            return values
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in dict(values).items() if k in known})  # type: ignore[arg-type]

    # the names the pipeline used before (kept: the registry records decisions with them)
    def to_dict(self) -> dict[str, Any]:
        """Same as :meth:`to_json`."""
        return self.to_json()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | Self) -> Self:
        """Same as :meth:`from_json`."""
        return cls.from_json(values)
