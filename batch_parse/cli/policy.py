"""The inference-policy flags (--faces, --detector, --min-face, --detector-threshold), shared by `run` and `eval`.

Names, types, defaults and help come from faces/policy.py; click shows each default itself.
"""

from __future__ import annotations

import click

from batch_parse.faces.policy import DETECTORS, FACE_MODES, HELP, InferencePolicy


def policy_options(defaults: InferencePolicy):
    """Decorator adding the four flags, with `defaults` shown by click; the command gets them as keyword arguments."""
    flags = [
        click.option("--faces", type=click.Choice(FACE_MODES), default=defaults.faces, show_default=True, help=HELP["faces"]),
        click.option("--detector", type=click.Choice(DETECTORS), default=defaults.detector, show_default=True,
                     help=HELP["detector"]),
        click.option("--min-face", type=int, default=defaults.min_face, show_default=True, help=HELP["min_face"]),
        click.option("--detector-threshold", type=float, default=defaults.detector_threshold, show_default=True,
                     help=HELP["detector_threshold"]),
    ]  # fmt: skip

    def decorate(command):
        for flag in reversed(flags):
            command = flag(command)
        return command

    return decorate


def policy_from(params: dict) -> InferencePolicy:
    """The policy the flags in `params` give; click.UsageError naming every problem."""
    policy = InferencePolicy.of(params)
    problems = policy.problems()
    if problems:
        raise click.UsageError("; ".join(problems))
    return policy
