"""Metadata filters on RAG search, as one SQL predicate for LanceDB's ``where``.

    appliance rag query "question" --source policies/ --department policies --since 2026-01-01

``source``: the chunk's source path contains this text (a file name, ``policies/``, a full path);
``department``: equals this (front matter ``department`` or the top-level folder under the
indexed root); ``since``: the document changed at or after this date (``YYYY-MM-DD``, an ISO
date-time, or a relative ``7d`` / ``12h``). Dates are stored as ``YYYY-MM-DDTHH:MM:SSZ`` in UTC,
so a date filter is a string comparison.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_RELATIVE = re.compile(r"^\s*(\d+)\s*([dh])\s*$", re.IGNORECASE)


def where_clause(source: str | None = None, department: str | None = None, since: str | None = None) -> str | None:
    """The SQL predicate for the given filters (all must hold), or ``None`` when there are none."""
    parts = []
    if source:
        parts.append(f"source LIKE {_quote('%' + _escape_like(source) + '%')} ESCAPE '\\'")
    if department is not None and department != "":
        parts.append(f"department = {_quote(department)}")
    if since:
        parts.append(f"date >= {_quote(parse_since(since))}")
    return " AND ".join(parts) or None


def parse_since(value: str, now: datetime | None = None) -> str:
    """``value`` as ``YYYY-MM-DDTHH:MM:SSZ`` (UTC); a date without a zone is taken as UTC."""
    relative = _RELATIVE.match(value)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2).lower()
        moment = (now or datetime.now(timezone.utc)) - timedelta(**{"days" if unit == "d" else "hours": amount})
    else:
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--since expects a date (2026-01-31), a date-time (2026-01-31T08:00) "
                             f"or an age (7d, 12h), got '{value}'") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
