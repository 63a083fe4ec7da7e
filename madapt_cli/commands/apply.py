"""`madapt apply`: write a store's vectors through an adaptor at chosen sizes."""

from __future__ import annotations

from pathlib import Path

import typer

from madapt_cli import console


def register(app: typer.Typer) -> None:
    @app.command("apply")
    def apply(
        adaptor: Path = typer.Argument(..., help="An adaptor directory from `madapt fit`."),
        store_path: Path = typer.Argument(..., help="The store whose tables to transform."),
        dims: str = typer.Option(..., "--dims", help="Sizes to write, e.g. 64,128."),
        out: Path = typer.Option(..., "--out", help="The new store to write."),
        format: str | None = typer.Option(
            None, "--format", help="parquet or lance (default: the input store's)."
        ),
        table: list[str] | None = typer.Option(
            None, "--table", help="Only this table (repeatable; default: all)."
        ),
        chunk_rows: int = typer.Option(65_536, "--chunk-rows", help="Rows per streamed chunk."),
        dtype: str = typer.Option(
            "float32", "--dtype", help="float32 or float16 (half the bytes; computed in float32)."
        ),
        precision: str = typer.Option(
            "float32",
            "--precision",
            help="What each size stores, comma-separated: float32 (vector_<d>), float16, "
            "int8, int2 or binary (vector_<d>_<precision>; binary: sizes a multiple of 8, "
            "int2: of 4).",
        ),
        calibration: str = typer.Option(
            "minmax",
            "--calibration",
            help="int8 ranges fitted on the corpus table: minmax or percentile:P (0<P<50).",
        ),
        calibration_from: Path | None = typer.Option(
            None,
            "--calibration-from",
            help="int8 / int2: reuse the calibration of this applied store (or JSON file).",
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace an existing --out store that madapt wrote."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
        engine: str = typer.Option("local", "--engine", help="local, or ray (Ray Data)."),
        ray_address: str | None = typer.Option(
            None, "--ray-address", help="--engine ray: auto, HOST:PORT or ray://HOST:10001."
        ),
        workers: int = typer.Option(1, "--workers", help="--engine ray: actors in the pool."),
    ) -> None:
        """Write each table of STORE with adapted, truncated, re-normalised vectors:
        one column vector_<d> per size, the same ids (and text, when STORE keeps it)."""
        from madapt_cli.pipelines.apply import apply_adaptor
        from madapt_cli.pipelines.ray_engine import check_engine

        check_engine(engine)
        if engine == "ray":
            from functools import partial

            from madapt_cli.pipelines.ray_apply import apply_adaptor_ray
            from madapt_cli.pipelines.ray_engine import RayOptions

            options = RayOptions(address=ray_address, workers=workers)
            apply_adaptor = partial(apply_adaptor_ray, ray_options=options)  # type: ignore[assignment]
        # a bar on a terminal only: in a log, a fast apply's lines would come before its
        # one-line error
        with console.ProgressPrinter(quiet=not console.err.is_terminal) as printer:
            summary = apply_adaptor(
                adaptor,
                store_path,
                dims,
                out,
                format=format,
                tables=table,
                chunk_rows=chunk_rows,
                overwrite=overwrite,
                progress=printer,
                dtype=dtype,
                precision=precision,
                calibration=calibration,
                calibration_from=calibration_from,
            )
        if as_json:
            console.print_json(summary.to_dict())
        else:
            rows = ", ".join(f"{t}: {n:,} rows" for t, n in summary.tables.items())
            sizes = f"at sizes {summary.dims}"
            if summary.precisions != ["float32"]:
                sizes += f" in {', '.join(summary.precisions)}"
            console.out.print(f"wrote {out} ({rows}) {sizes}")
