"""Automatic retries: how many a job may ask for, and how long each waits (exponential back-off)."""

from __future__ import annotations

MAX_RETRIES = 100  # more is a loop, not a retry policy (pueue and Slurm cap theirs too)
FIRST_DELAY_S = 1.0
MAX_DELAY_S = 60.0


def retry_delay_s(failed_attempt: int) -> float:
    """Seconds before the attempt after `failed_attempt` (1-based) may start: 1 s doubling per
    failure, at most 60 s (1, 2, 4, ... 32, 60, 60 ...), the exponential back-off pueue and
    Slurm's requeue delays use so a job that fails at once does not spin."""
    exponent = max(0, min(failed_attempt - 1, 16))
    return min(MAX_DELAY_S, FIRST_DELAY_S * 2.0**exponent)
