"""`madapt import`: vectors you already have -> a store table."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import typer

from madapt_cli import console
from madapt_cli.errors import InputError
from madapt_cli.pipelines.import_vectors import ImportDeclaration, ImportSummary, import_vectors
from madapt_cli.store.base import FORMATS
from madapt_cli.vector_sources import VectorFields


def _print(summary: ImportSummary) -> None:
    merged = (
        f", {summary.kept} existing rows kept, {summary.superseded} superseded"
        if summary.kept or summary.superseded
        else ""
    )
    rescaled = f", {summary.rescaled} normalised" if summary.rescaled else ""
    keys = "with content keys" if summary.content_keys else "without content keys"
    console.log(
        f"{summary.table}: {summary.rows} rows x {summary.dimension} imported{rescaled}{merged}, "
        f"{keys}, in {summary.seconds:.1f}s"
    )
    console.log(f"store: {summary.store} ({summary.format})")


def _engine(engine: str, address: str | None, workers: int) -> Callable[..., ImportSummary]:
    """The import function of ``--engine`` (its options checked before anything is read)."""
    from madapt_cli.pipelines.ray_engine import check_engine

    check_engine(engine)
    if engine == "local":
        return import_vectors
    from madapt_cli.pipelines.ray_engine import RayOptions, import_ray
    from madapt_cli.pipelines.ray_import import import_vectors_ray

    options = RayOptions(address=address, workers=workers)
    options.check()
    import_ray()  # without Ray: say how to install it before reading anything
    return partial(import_vectors_ray, ray_options=options)


def register(app: typer.Typer) -> None:
    @app.command("import")
    def import_command(
        source: str = typer.Argument(
            ...,
            help="A .parquet file or folder, a .jsonl file, a .npy matrix (with --ids) or a "
            "LanceDB table as path/to/db::table.",
        ),
        out: Path = typer.Option(..., "--out", "-o", help="The store directory to write."),
        table: str = typer.Option("corpus", "--table", help="The table to fill."),
        role: str = typer.Option("document", "--role", help="document or query."),
        id_field: str = typer.Option("id", "--id-field", help="The id column."),
        vector_field: str = typer.Option("vector", "--vector-field", help="The vector column."),
        text_field: str | None = typer.Option(
            None, "--text-field", help="The text column: rows get content keys embed reuses."
        ),
        title_field: str | None = typer.Option(
            None, "--title-field", help="The title column (with --text-field)."
        ),
        ids: Path | None = typer.Option(
            None, "--ids", help="For a .npy SOURCE: a text file, one id a line, in row order."
        ),
        provider: str | None = typer.Option(
            None, "--provider", help="Who made the vectors: local, openai, vertex or a label."
        ),
        model: str | None = typer.Option(None, "--model", "-m", help="The model that made them."),
        dimensions: int | None = typer.Option(
            None, "--dimensions", min=1, help="The size asked of the API [default: inferred]."
        ),
        task_type: str | None = typer.Option(None, "--task-type", help="The task type used."),
        prompt: str | None = typer.Option(None, "--prompt", help="The prompt prefix used."),
        normalize: bool = typer.Option(
            True, "--normalize/--no-normalize", help="L2-normalise the vectors."
        ),
        replace: bool = typer.Option(
            False, "--replace", help="Replace an existing table instead of merging by id."
        ),
        store_format: str | None = typer.Option(
            None, "--format", help="parquet (default) or lance."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        engine: str = typer.Option("local", "--engine", help="local, or ray (Ray Data)."),
        ray_address: str | None = typer.Option(
            None, "--ray-address", help="--engine ray: auto, HOST:PORT or ray://HOST:10001."
        ),
        workers: int = typer.Option(1, "--workers", help="--engine ray: actors in the pool."),
    ) -> None:
        """Import existing vectors into a store, atomically and in bounded memory."""
        if store_format is not None and store_format not in FORMATS:
            raise InputError(f"--format must be parquet or lance, not {store_format!r}")
        if role not in ("document", "query"):
            raise InputError(f"--role must be document or query, not {role!r}")
        if title_field is not None and text_field is None:
            raise InputError("--title-field needs --text-field")
        fields = VectorFields(id_field, vector_field, text_field, title_field)
        declared = ImportDeclaration(
            provider=provider,
            model=model,
            dimensions=dimensions,
            task_type=task_type,
            prompt=prompt,
            normalize=normalize,
            role=role,  # type: ignore[arg-type]
        )
        run = _engine(engine, ray_address, workers)
        with console.ProgressPrinter(quiet=quiet or as_json) as progress:
            summary = run(
                source,
                out,
                fields,
                declared,
                table=table,
                ids_file=ids,
                store_format=store_format,
                replace=replace,
                progress=progress,
            )
        if as_json:
            console.print_json(summary.to_dict())
        else:
            _print(summary)
