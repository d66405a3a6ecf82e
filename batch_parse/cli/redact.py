"""Scrub credentials from anything the CLI prints: error messages, job logs, summaries."""

from __future__ import annotations

import os
import re

import click

# Env vars whose values are secrets wherever they show up (an error quoting a config, a log line).
_SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "RAY_AUTH_TOKEN")

_PATTERNS = [
    # scheme://user:password@host -> scheme://***@host. Found from the "://" (then the scheme before
    # it checked, _after_scheme): a pattern opening with the scheme's repeated class would be tried at
    # every letter of a long run and rescan it each time, O(n^2) (20,000 characters took 16 s).
    (re.compile(r"://[^/\s@]+@"), lambda m: "://***@" if _after_scheme(m.string, m.start()) else m.group(0)),
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 ***"),
    # key=value / "key": "value" where the key names a secret (also presigned-URL query params).
    # Linear: tried only where a word starts (the lookbehind), the lazy lookahead finds a name in
    # it, then the whole word is taken at once: `(?=(W*))\2` is an atomic W* (Python 3.10 has no
    # possessive quantifiers), so a word like "secretsecret..." is not rescanned from each name.
    (
        re.compile(
            r"((?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*?(?:secret|token|password|passwd|signature|credential))"
            r"(?=([A-Za-z0-9_-]*))\2[\"']?\s*[=:]\s*[\"']?)"
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


_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")


def _after_scheme(text: str, end: int) -> bool:
    """Whether text[:end] ends in something shaped like a URI scheme: a run of [a-zA-Z0-9+.-] with a letter.

    A little wider than RFC 3986's scheme (it need not start with the letter, so `_s3://` and
    `1a://` count too): when in doubt, scrub. Looks back over that run once (the runs before two
    "://" never overlap).
    """
    start = end
    while start > 0 and text[start - 1] in _SCHEME_CHARS:
        start -= 1
    return any(c.isalpha() for c in text[start:end])


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
