"""golden-check command."""


def register(cli) -> None:
    pass  # filled in by the reference work (issue 3)
