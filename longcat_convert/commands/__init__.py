"""Converter commands: plan, convert, export, verify."""


def register(cli) -> None:
    pass  # filled in by the converter work (issue 2)
