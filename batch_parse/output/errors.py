"""Error codes of `error` rows: verdicts on the object (final) and failures that can pass (retried).

A permanent code says the object itself cannot be labelled: rerunning gives the same answer, so
the row is final. A retryable code says the store, the credentials or the model failed: the image
may be fine. Those are retried within the run (fetch.py: backoff; the model stage: one image at a
time), recorded with their code when they still fail, and tried again by the next run of the same
command (commit.py removes their rows first), unless it runs with --no-retry-errors. A run that
leaves retryable rows exits with EXIT_RETRYABLE, so a scheduler sees a failed night.
"""

from __future__ import annotations

from batch_parse.storage.fetch import TRANSIENT

PERMANENT = frozenset({"empty", "not_an_image", "truncated", "too_small", "too_large", "decode_failed", "not_found", "duplicate_key",
                       "too_many_samples", "too_many_rows"})
RETRYABLE = TRANSIENT | {"model_failed"}
EXIT_RETRYABLE = 3


def is_retryable(code: str | None) -> bool:
    """True for codes of failures that can pass; unknown codes are final (never retried forever)."""
    return code in RETRYABLE
