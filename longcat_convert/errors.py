"""Error types, and the one mapping from how a command ended to its exit code:
0 ok, 1 a check ran and failed, 2 bad input or usage, 130 interrupted."""


class BadInput(Exception):
    """Bad input or usage: a one-line message naming the file/key and what to do. Exit 2."""


class VerificationFailed(Exception):
    """A check ran and the result is wrong (verify mismatch, tolerance exceeded). Exit 1."""


def invoke(group, argv: list[str] | None) -> int:
    """Run a click command group on ``argv`` -> exit code (errors as one line on stderr).

    The CLI's ``main`` and the gate (which runs every step as the real command,
    in-process) both come through here."""
    import click
    from rich.console import Console
    err = Console(stderr=True, highlight=False)
    try:
        rv = group.main(args=argv, prog_name="longcat-convert", standalone_mode=False)
    except BadInput as e:
        err.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        return 2
    except VerificationFailed as e:
        err.print(f"[bold red]failed:[/] {e}", soft_wrap=True)
        return 1
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return 2
    except click.exceptions.Abort:
        err.print("[bold red]aborted[/]")
        return 130
    # Commands return their exit code (0 ok, 1 check failed).
    return rv if isinstance(rv, int) else 0
