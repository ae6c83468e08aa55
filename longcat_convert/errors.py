"""Error types, and the one mapping from how a command ended to its exit code:
0 ok, 1 a check ran and failed, 2 bad input or usage, 130 interrupted."""
from __future__ import annotations

import contextlib
import signal
import threading

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class BadInput(Exception):
    """Bad input or usage: a one-line message naming the file/key and what to do. Exit 2."""


class VerificationFailed(Exception):
    """A check ran and the result is wrong (verify mismatch, tolerance exceeded). Exit 1."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM; whatever was being written has been removed. Exit 130."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM unwinds like Ctrl-C (KeyboardInterrupt), so temporary output is removed
    and the command ends with 130 wherever it was."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _one_line(text: str) -> str:
    return " ".join(str(text).split("\n")) if "\n" in str(text) else str(text)


def invoke(group, argv: list[str] | None) -> int:
    """Run a click command group on ``argv`` -> exit code (errors as one line on stderr).

    The CLI's ``main`` and the gate (which runs every step as the real command,
    in-process) both come through here. An OSError nobody turned into BadInput (a
    file that cannot be read, a folder that cannot be written) is bad input too;
    any other exception is a bug and keeps its traceback."""
    import click
    from rich.console import Console
    from rich.text import Text
    err = Console(stderr=True, highlight=False)

    def say(label: str, message) -> None:
        # The message is data (file names, keys from the input): never rich markup.
        err.print(Text.assemble((label, "bold red"), " ", _one_line(message)), soft_wrap=True)

    try:
        with sigterm_as_interrupt():
            rv = group.main(args=argv, prog_name="longcat-convert", standalone_mode=False)
    except BadInput as e:
        say("error:", e)
        return EXIT_BAD_INPUT
    except VerificationFailed as e:
        say("failed:", e)
        return EXIT_FAILED
    except Interrupted as e:
        say("interrupted:", e)
        return EXIT_INTERRUPTED
    except (click.exceptions.Abort, KeyboardInterrupt):
        say("interrupted:", "aborted by Ctrl-C or SIGTERM")
        return EXIT_INTERRUPTED
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return EXIT_BAD_INPUT
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        say("error:", f"{where}{e.strerror or e}")
        return EXIT_BAD_INPUT
    # Commands return their exit code (0 ok, 1 check failed).
    return rv if isinstance(rv, int) else EXIT_OK
