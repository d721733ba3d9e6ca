"""The options of the verbs that run a server: ``appliance serve`` and ``appliance mcp --http``.

    appliance serve --model VERSION --host 0.0.0.0 --port 8080 --require-keys
    appliance mcp --http --host 0.0.0.0 --port 8765 --no-output-filter

One definition each of the address to bind, the port, the key rule and the output filter. A verb
gives its own default port and what its filter redacts; ``when`` is a lead-in for an option that
applies in one mode only (``"With --http: "``).
"""
from __future__ import annotations

from typing import Any

import typer


def host_option(when: str = "") -> Any:
    """``--host``: the address to bind, loopback unless told otherwise."""
    return typer.Option("127.0.0.1", "--host", help=_lead(when, "Address to bind (loopback unless told otherwise)."))


def port_option(default: int, when: str = "") -> Any:
    """``--port``: the TCP port, ``default`` unless told otherwise."""
    return typer.Option(default, "--port", help=_lead(when, "TCP port."))


def require_keys_option(when: str = "") -> Any:
    """``--require-keys/--no-require-keys``: unset, site.toml decides (keys are always required beyond loopback)."""
    return typer.Option(None, "--require-keys/--no-require-keys",
                        help=_lead(when, "API keys on loopback too (default: site.toml [serve] require_keys; "
                                         "always required beyond loopback)."))


def output_filter_option(redacts: str) -> Any:
    """``--output-filter/--no-output-filter`` (on): PII redaction in ``redacts`` without a key."""
    return typer.Option(True, "--output-filter/--no-output-filter",
                        help=f"Redact PII in {redacts} without a key (keys carry their own setting).")


def _lead(when: str, text: str) -> str:
    """``text`` after the lead-in ``when``: its first word then starts in lower case, unless it is an
    acronym (``API``, ``TCP``)."""
    if not when or text[1:2].isupper():
        return when + text
    return when + text[0].lower() + text[1:]
