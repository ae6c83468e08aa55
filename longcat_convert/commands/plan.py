"""longcat-convert plan SOURCE"""
from __future__ import annotations

import json

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..plan import describe


def _shape(s) -> str:
    return "[" + ", ".join(str(x) for x in s) + "]"


@click.command("plan")
@click.argument("source")
@click.option("--revision", default=None, help="Hub revision when SOURCE is a repo id.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="The tables only: no config warnings or notes.")
def command(source, revision, as_json, quiet):
    """Show how every tensor of SOURCE maps to FastVideo's layout; writes nothing."""
    plan = describe(source, revision=revision)
    if as_json:
        click.echo(json.dumps(plan, indent=2))
        return 0
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=180)
    n = plan["tensors"]
    size = f"{n['bytes'] / 1e9:.3f} GB" if n["bytes"] is not None else "size unknown"
    table = Table(title=f"{escape(plan['source']['spec'])}: {n['source']} source -> {n['native']} native tensors "
                        f"({size}), table {plan['table_hash']}")
    for col in ("source key", "shape", "dtype", "op", "native key", "shape"):
        table.add_column(col, overflow="fold")
    for row in plan["ops"]:
        s = row["sources"]
        table.add_row("\n".join(x["key"] for x in s), "\n".join(_shape(x["shape"]) for x in s),
                      "\n".join(x["dtype"] for x in s), row["op"],
                      "\n".join(t["key"] for t in row["targets"]),
                      "\n".join(_shape(t["shape"]) for t in row["targets"]))
    console.print(table)
    for lora in plan["loras"]:
        lt = Table(title=escape(f"LoRA {lora['source']} -> {lora['output']}"))
        for col in ("original module", "native target", "rank", "alpha_scale", "lora_alpha", "alpha folded into B"):
            lt.add_column(col)
        for d in lora["targets"]:
            lt.add_row(d["module"], d["target"], str(d["rank"]), f"{d['alpha_scale']:g}", f"{d['lora_alpha']:g}",
                       "yes" if d["alpha_folded_into_B"] else "no")
        console.print(lt)
    if quiet:
        return 0
    for w in plan["config"]["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True)
    for n in plan["config"]["notes"]:
        console.print(f"note: {escape(n)}", soft_wrap=True)
    return 0
