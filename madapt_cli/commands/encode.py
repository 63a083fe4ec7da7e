"""`madapt encode`: texts -> the adaptor's upstream model -> adapted vectors (query time)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer

from madapt_cli import console
from madapt_cli.errors import InputError

OUT_SUFFIXES = (".npy", ".parquet")


def read_texts(
    lines: Iterable[str], where: str, id_field: str, text_field: str
) -> tuple[list[str], list[str]]:
    """(ids, texts) from one text per line, or JSONL objects (when the first non-blank line
    starts with ``{``) with ``text_field`` and optionally ``id_field``. Blank lines are
    skipped; a plain line's id is its position among the texts."""
    ids: list[str] = []
    texts: list[str] = []
    jsonl: bool | None = None
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if jsonl is None:
            jsonl = line.lstrip().startswith("{")
        if not jsonl:
            ids.append(str(len(texts)))
            texts.append(line)
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise InputError(f"{where} line {number}: invalid JSON ({error})") from None
        if not isinstance(row, dict):
            raise InputError(f"{where} line {number}: expected a JSON object")
        text = row.get(text_field)
        if not isinstance(text, str) or not text.strip():
            raise InputError(
                f"{where} line {number}: no text in field {text_field!r} (--text-field)"
            )
        ids.append(str(row.get(id_field, len(texts))))
        texts.append(text)
    return ids, texts


def _check_out(out: Path | None, overwrite: bool) -> None:
    if out is None:
        return
    if out.suffix not in OUT_SUFFIXES:
        raise InputError(f"--out {out}: must end in .npy or .parquet")
    if out.is_dir():
        raise InputError(f"--out {out} is a folder")
    if out.exists() and not overwrite:
        raise InputError(f"--out {out} exists (pass --overwrite to replace it)")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: no such folder {out.parent}")


def _write(out: Path, ids: list[str], vectors) -> None:
    """``out`` written under a temporary name and renamed: never half a file."""
    import numpy as np

    handle, staging = tempfile.mkstemp(prefix=f".tmp-{out.name}-", dir=out.parent)
    os.close(handle)
    try:
        if out.suffix == ".npy":
            with open(staging, "wb") as stream:
                np.save(stream, vectors)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            from madapt_cli.store.precision import codes_to_arrow

            table = pa.table({"id": pa.array(ids, pa.string()), "vector": codes_to_arrow(vectors)})
            pq.write_table(table, staging)
        os.replace(staging, out)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def _query_calibrations(
    adaptor: Any, precision: str, dim: int, calibration_from: Path | None
) -> dict | None:
    """The int8 ranges (int2 levels) of ``calibration_from`` (needed for int8 and int2,
    checked for ``dim``); a bad precision or size fails here, before the model loads."""
    from madapt_cli.pipelines.encode import load_query_calibration
    from madapt_cli.store.precision import check_precision_sizes, parse_precisions

    check_precision_sizes(parse_precisions([precision]), [dim], "--precision")
    coded = precision in ("int8", "int2")
    if calibration_from is None:
        if coded:
            raise InputError(
                f"--precision {precision} needs --calibration-from: the applied store whose "
                "corpus calibration codes the queries"
            )
        return None
    kind = precision if precision == "int2" else "int8"
    calibrations = load_query_calibration(adaptor, calibration_from, precision=kind)
    if coded and dim not in calibrations:
        have = ", ".join(str(d) for d in sorted(calibrations))
        raise InputError(
            f"--calibration-from {calibration_from}: no {kind} calibration for size {dim} "
            f"(it has {have})"
        )
    return calibrations


def _input_texts(
    texts: list[str] | None, input_file: Path | None, id_field: str, text_field: str
) -> tuple[list[str], list[str]]:
    """(ids, texts) from the arguments, ``--input`` or stdin; none is an error."""
    if texts:
        return [str(i) for i in range(len(texts))], list(texts)
    where = str(input_file) if input_file is not None else "stdin"
    if input_file is not None:
        if not input_file.is_file():
            raise InputError(f"--input {input_file}: no such file")
        with input_file.open(encoding="utf-8") as handle:
            ids, items = read_texts(handle, where, id_field, text_field)
    elif sys.stdin is None or sys.stdin.isatty():
        ids, items = [], []
    else:
        ids, items = read_texts(sys.stdin, where, id_field, text_field)
    if not items:
        raise InputError(f"no texts to encode: give them as arguments or on {where}")
    return ids, items


def register(app: typer.Typer) -> None:
    @app.command("encode")
    def encode(
        texts: list[str] | None = typer.Argument(
            None, help="Texts to encode (default: one per line, or JSONL, on stdin)."
        ),
        adaptor: Path = typer.Option(..., "--adaptor", help="An adaptor directory."),
        dim: int | None = typer.Option(
            None, "--dim", help="Output size (default: the adaptor's full dimension)."
        ),
        role: str = typer.Option("query", "--role", help="query or document."),
        input_file: Path | None = typer.Option(
            None, "--input", help="Read the texts from this file instead of stdin."
        ),
        id_field: str = typer.Option("id", "--id-field", help="JSONL input: the id field."),
        text_field: str = typer.Option("text", "--text-field", help="JSONL input: the text."),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Write FILE.npy or FILE.parquet instead of JSONL on stdout."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
        model: str | None = typer.Option(
            None, "--model", help="Only to confirm: must be the adaptor's model."
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (local models)."),
        batch_size: int = typer.Option(64, "--batch-size", min=1, help="Texts per model batch."),
        base_url: str | None = typer.Option(None, "--base-url", help="API server (openai)."),
        project: str | None = typer.Option(None, "--project", help="Vertex: the project."),
        location: str | None = typer.Option(None, "--location", help="Vertex: the region."),
        timeout: float = typer.Option(60.0, "--timeout", min=0.001, help="API timeout (s)."),
        max_retries: int = typer.Option(10, "--max-retries", min=0, help="API retries."),
        precision: str = typer.Option(
            "float32",
            "--precision",
            help="float32 (default; also the query side of asymmetric search), float16, int8 "
            "or int2 (need --calibration-from; int2: 4 codes a byte) or binary (packed sign "
            "bits, --dim a multiple of 8): the codes `madapt apply --precision` stores.",
        ),
        calibration_from: Path | None = typer.Option(
            None,
            "--calibration-from",
            help="int8 / int2: the applied store (or JSON file) whose corpus calibration codes "
            "the queries.",
        ),
    ) -> None:
        """Encode texts exactly as the adaptor's corpus was: the recorded upstream model,
        prompt or task type and dimensions, then the adaptor, cut to --dim and
        re-normalised. JSONL {"id", "vector"} on stdout, or --out FILE.npy|.parquet;
        with --precision int8, int2 or binary the vector is the stored code: int8 values, or
        the packed int2 / sign bytes (0..255)."""
        from madapt_cli.methods.adaptor import Adaptor
        from madapt_cli.pipelines.encode import Encoder, check_role, provider_for_adaptor

        loaded = Adaptor.load(adaptor)
        dim = loaded.check_dim(dim)
        checked_role = check_role(role)
        calibrations = _query_calibrations(loaded, precision, dim, calibration_from)
        _check_out(out, overwrite)
        ids, items = _input_texts(texts, input_file, id_field, text_field)
        provider = provider_for_adaptor(
            loaded,
            model=model,
            options={
                "device": device,
                "batch_size": batch_size,
                "base_url": base_url,
                "project": project,
                "location": location,
                "timeout": timeout,
                "max_retries": max_retries,
            },
            on_warning=console.warn,
        )
        with Encoder(loaded, provider, calibrations) as encoder:
            vectors = encoder.encode(items, role=checked_role, dim=dim, precision=precision)
        if out is not None:
            _write(out, ids, vectors)
            console.log(f"wrote {len(ids):,} {dim}-d {precision} vectors to {out}")
            return
        write = sys.stdout.write
        for row_id, vector in zip(ids, vectors.tolist(), strict=True):
            write(json.dumps({"id": row_id, "vector": vector}) + "\n")
