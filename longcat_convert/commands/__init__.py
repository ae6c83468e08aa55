"""Every click command of ``longcat-convert``, one module each: plan, convert, export,
verify, fixes (no torch: imported up front) and parity, golden-check, gate (which
import torch, registered only when asked for)."""


def register(cli) -> None:
    from . import convert, export, fixes, plan, verify
    for mod in (plan, convert, export, verify, fixes):
        cli.add_command(mod.command)


def register_parity(cli) -> None:
    from . import gate, parity
    cli.add_command(parity.parity_cmd)
    cli.add_command(parity.golden_check_cmd)
    cli.add_command(gate.gate_cmd)
    cli.add_command(__import__(f"{__name__}.features", fromlist=["features_cmd"]).features_cmd)
