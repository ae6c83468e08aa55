"""Converter commands: plan, convert, export, verify."""


def register(cli) -> None:
    from . import convert, export, plan, verify
    for mod in (plan, convert, export, verify):
        cli.add_command(mod.command)
