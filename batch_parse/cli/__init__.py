"""The `batch-parse` command's entry point: pyproject's console script and `python -m batch_parse.cli`.

Standard library only, on purpose: it runs before the command's own imports (click, pyarrow, numpy,
every verb's module: about 0.3 s idle, seconds on a busy machine), so that one Ctrl-C at any moment
of start-up ends the command as it does while the command runs: `Error: interrupted`, exit 130.
The verbs themselves live in batch_parse.cli.main.
"""

from __future__ import annotations

import signal
import sys

EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C
INTERRUPTED = "Error: interrupted"


def main() -> None:
    """Run the `batch-parse` command (what the console script and `python -m batch_parse.cli` call)."""
    _hear_sigint()
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


def _hear_sigint() -> None:
    """Take SIGINT back when this process was started with it ignored.

    A command started by `cmd &` in a script (bash without job control ignores SIGINT and SIGQUIT
    for it), by a launcher that does the same, or by anything those started (a CI runner, pytest and
    its subprocesses) inherits SIGINT as SIG_IGN; Python then installs no KeyboardInterrupt handler
    and the kernel drops every SIGINT. One Ctrl-C or `kill -INT` did nothing: `run` waiting on its
    input never ended (tests/test_hostile_inputs.py::test_ctrl_c_exits_130 timed out after 60 s in
    CI), and only SIGKILL, with no line and no clean-up, stopped it. batch-parse is a batch command
    whose contract is that SIGINT stops it with exit 130, so it does not keep that inherited
    ignore. A handler, unlike SIG_IGN, is reset at exec: the processes it starts get the default
    back (Ray's daemons block SIGINT themselves). Interactive shells with job control put a
    background job in its own process group, so a terminal's Ctrl-C still does not reach it.
    """
    try:
        if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread (main() called from a thread): signals are not ours to set
        pass
