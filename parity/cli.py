"""parity and gate commands."""


def register(cli) -> None:
    pass  # filled in by the parity work (issue 4)
