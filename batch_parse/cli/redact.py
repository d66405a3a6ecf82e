"""Scrub credentials from anything the CLI prints: error messages, job logs, summaries."""

from __future__ import annotations

import os
import re

import click

# Env vars whose values are secrets wherever they show up (an error quoting a config, a log line).
_SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "RAY_AUTH_TOKEN")

_PATTERNS = [
    # scheme://user:password@host -> scheme://***@host
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@"), r"\1***@"),
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 ***"),
    # key=value / "key": "value" where the key names a secret (also presigned-URL query params)
    (
        re.compile(
            r"([A-Za-z0-9_-]*(?:secret|token|password|passwd|signature|credential)[A-Za-z0-9_-]*[\"']?\s*[=:]\s*[\"']?)"
            r"[^\s\"',&;]+",
            re.IGNORECASE,
        ),
        r"\1***",
    ),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), "***"),
    # A 40-character base64 run with both letter cases: the shape of an AWS secret access key.
    # Lowercase-only hex of the same length (git and sha1 digests) is left alone.
    (re.compile(r"(?<![A-Za-z0-9/+])(?=[A-Za-z0-9/+]{0,39}[A-Z])(?=[A-Za-z0-9/+]{0,39}[a-z])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"), "***"),
]


def redact(text: str) -> str:
    for name in _SECRET_ENV_VARS:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def echo(text: str = "", **kwargs) -> None:
    """click.echo, scrubbed."""
    click.echo(redact(text), **kwargs)
