"""`madapt export`: an adaptor as a sentence-transformers model folder or an ONNX file."""

from __future__ import annotations

from pathlib import Path

import typer

from madapt_cli import console


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        adaptor: Path = typer.Argument(..., help="An adaptor directory (madapt fit --out)."),
        to: str = typer.Option(..., "--to", help="sentence-transformers or onnx."),
        out: Path = typer.Option(
            ..., "--out", "-o", help="sentence-transformers: a folder; onnx: FILE.onnx."
        ),
        dim: int | None = typer.Option(
            None, "--dim", help="Output size (default: the adaptor's full dimension)."
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace an earlier export madapt wrote at --out."
        ),
    ) -> None:
        """Export an adaptor for tools that do not run madapt. sentence-transformers: the
        adaptor's local base model, then the adaptor, cut to --dim and re-normalised, as one
        model folder (load it with trust_remote_code=True). onnx: the adaptor alone, D floats
        in, --dim unit floats out, any batch size."""
        from madapt_cli.pipelines.export import (
            check_format,
            export_onnx,
            export_sentence_transformers,
        )

        check_format(to)
        if to == "onnx":
            result = export_onnx(adaptor, out, dim=dim, overwrite=overwrite)
        else:
            result = export_sentence_transformers(
                adaptor, out, dim=dim, overwrite=overwrite, on_progress=console.log
            )
        console.log(
            f"exported adaptor '{result.adaptor}' ({result.method}, {result.dimension}-d in, "
            f"{result.dim}-d out) to {result.out} as {result.format} in {result.seconds:.1f}s "
            f"(max difference from madapt {result.max_error:.1e})"
        )
