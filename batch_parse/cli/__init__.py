"""The `batch-parse` command's entry point: pyproject's console script and `python -m batch_parse.cli`.

Standard library only, on purpose: it runs before the command's own imports (click, pyarrow, numpy,
every verb's module: about 0.3 s idle, seconds on a busy machine), so that one Ctrl-C at any moment
of start-up ends the command as it does while the command runs: `Error: interrupted`, exit 130.
The verbs themselves live in batch_parse.cli.main.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C
INTERRUPTED = "Error: interrupted"


def main() -> None:
    """Run the `batch-parse` command (what the console script and `python -m batch_parse.cli` call)."""
    # A SIGINT the process was started with ignored (`cmd &` in a script, nohup) stays ignored, as
    # every Unix command leaves it: a Ctrl-C meant for the script's foreground must not stop a batch
    # run in its background (SIGTERM stops it; what it committed is kept).
    try:
        # Imported here, not at the top: a SIGINT during these imports raises KeyboardInterrupt
        # before click runs, which would otherwise end the process with a traceback and -SIGINT.
        from batch_parse.cli.main import cli

        cli(prog_name="batch-parse")
    except KeyboardInterrupt:
        # Only reached outside click's own handling (the imports above, click's prelude before it
        # parses); _Group.main turns an interrupt while a verb runs into the same line and code.
        exit_interrupted()


def exit_interrupted() -> None:
    """The one way batch-parse ends on Ctrl-C: one line on stderr, exit 130."""
    try:
        print(INTERRUPTED, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed or gone (a closed pipe): the exit code still says it
        pass
    sys.exit(EXIT_INTERRUPTED)
