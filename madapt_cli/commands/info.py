"""`madapt info`: what a store holds."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from madapt_cli import console
from madapt_cli.store.base import open_store


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info(
        store_path: Path = typer.Argument(..., help="A store directory."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
    ) -> None:
        """Show a store's tables: rows, vector columns (vector, or an applied store's
        vector_<d>, and its int8/binary code columns with their bytes per vector), model,
        adaptor and metadata."""
        described = open_store(store_path).describe()
        if as_json:
            console.print_json(described)
            return
        table = Table(title=f"{described['store']} ({described['format']})")
        adapted = any(entry["metadata"].get("adaptor") for entry in described["tables"])
        columns = ("table", "rows", "vectors", "provider", "model", "adaptor", "created")
        for column in columns if adapted else [c for c in columns if c != "adaptor"]:
            table.add_column(column)
        for entry in described["tables"]:
            meta = entry["metadata"]
            vectors = ", ".join(
                [f"{c}[{d}]" for c, d in entry["vector_columns"].items()]
                + [_code(c, column) for c, column in entry.get("code_columns", {}).items()]
            )
            table.add_row(
                entry["name"],
                f"{entry['rows']:,}",
                vectors,
                str(meta.get("provider", "")),
                str(meta.get("model", "")),
                *([str((meta.get("adaptor") or {}).get("name", ""))] if adapted else []),
                str(meta.get("created_at", "")),
            )
        console.print_table(console.out, table)


def _code(name: str, column: dict) -> str:
    """``vector_128_binary[128 binary, 16 B]``: a code column's size, precision and bytes."""
    return f"{name}[{column.get('dim')} {column.get('precision')}, {column.get('bytes')} B]"
