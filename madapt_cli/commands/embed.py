"""`madapt embed`: texts -> vectors in a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from madapt_cli import console
from madapt_cli.errors import InputError
from madapt_cli.pipelines.embed import (
    EmbedEstimate,
    EmbedRun,
    SourceOptions,
    VectorOptions,
    estimate_embedding,
    run_embed,
)
from madapt_cli.pipelines.embed_plan import default_backend
from madapt_cli.providers.base import PROVIDERS, build_provider
from madapt_cli.store.base import FORMATS

#: "local, openai or vertex": every registered provider
_PROVIDER_NAMES = " or ".join(", ".join(PROVIDERS).rsplit(", ", 1))


def _print_dry_run(estimate: EmbedEstimate) -> None:
    for plan in estimate.plans:
        console.log(
            f"{plan.table}: {plan.rows} rows, {plan.to_embed} to embed "
            f"({plan.reused} already stored), ~{plan.estimated_tokens:,} tokens"
        )
    cost = estimate.estimated_cost_usd
    price = (
        f"~${cost:,.{2 if cost >= 1 else 6}f} at ${estimate.price_per_million_tokens}/1M tokens"
        if cost is not None
        else "no price for this model in the price table (see MADAPT_PRICING)"
    )
    console.log(
        f"dry run: {estimate.rows_to_embed} rows, ~{estimate.estimated_tokens:,} tokens, "
        f"{price}; nothing was sent or written"
    )


def _print_run(summary: EmbedRun) -> None:
    for entry in summary.tables:
        skipped = f", {entry.skipped_empty} empty skipped" if entry.skipped_empty else ""
        if entry.skipped_bad:
            skipped += f", {entry.skipped_bad} rejected by the API skipped"
        console.log(
            f"{entry.table}: {entry.rows} rows ({entry.embedded} embedded, "
            f"{entry.reused} reused{skipped}) in {entry.seconds:.1f}s"
        )
    _print_provider_stats(summary.provider_stats)
    console.log(f"store: {summary.store} ({summary.format})")


def _print_provider_stats(stats: dict[str, Any]) -> None:
    if not stats:
        return
    parts = [f"{stats.get('requests', 0)} requests", f"{stats.get('retries', 0)} retries"]
    if stats.get("truncated"):
        parts.append(f"{stats['truncated']} inputs truncated")
    console.log("api: " + ", ".join(parts))
    if stats.get("truncated"):
        console.warn(
            f"{stats['truncated']} input(s) over the model's token limit were truncated "
            "(--strict refuses them instead)"
        )
    if stats.get("skipped_bad"):
        ids = stats.get("skipped_bad_ids", [])
        shown = ", ".join(repr(i) for i in ids[:10]) + (" ..." if len(ids) > 10 else "")
        console.warn(
            f"{stats['skipped_bad']} input(s) rejected by the API were skipped (--skip-bad): "
            f"{shown}; they are not stored, a rerun retries them"
        )


def _adaptation(adaptor: Path | None, dims: str | None, no_raw: bool) -> dict[str, Any] | None:
    """The VectorOptions of ``--adaptor``/``--dims``/``--no-raw`` (None without an adaptor)."""
    if adaptor is None:
        if dims is not None or no_raw:
            raise InputError(f"{'--dims' if dims is not None else '--no-raw'} needs --adaptor")
        return None
    if dims is None:
        raise InputError("--adaptor needs --dims, the sizes to write (e.g. 64,128)")
    from madapt_cli.methods.adaptor import Adaptor
    from madapt_cli.util.dims import parse_dims

    loaded = Adaptor.load(adaptor)
    return {"adaptor": loaded, "dims": tuple(parse_dims(dims, loaded.dimension)), "raw": not no_raw}


def register(app: typer.Typer) -> None:
    @app.command("embed")
    def embed(
        source: Path = typer.Argument(..., help="A BEIR folder, or a .jsonl/.csv/.parquet file."),
        out: Path = typer.Option(..., "--out", "-o", help="The store directory to write."),
        provider_name: str | None = typer.Option(
            None, "--provider", help=f"{_PROVIDER_NAMES} [default: local, or the adaptor's]."
        ),
        model: str | None = typer.Option(
            None, "--model", "-m", help="Model name or path (default per provider)."
        ),
        table: str | None = typer.Option(
            None, "--table", help="Table for a single file [default: corpus]."
        ),
        role: str = typer.Option(
            "document", "--role", help="document or query (single file only)."
        ),
        store_format: str | None = typer.Option(
            None, "--format", help="parquet (default) or lance."
        ),
        dtype: str = typer.Option("float32", "--dtype", help="float32 or float16."),
        batch_size: int = typer.Option(64, "--batch-size", min=1, help="Texts per model batch."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (local models)."),
        backend: str | None = typer.Option(
            None,
            "--backend",
            help="torch, onnx or openvino (local models; onnx/openvino: madapt[fast]). "
            "Default: the store's, else torch.",
        ),
        precision: str | None = typer.Option(
            None,
            "--precision",
            help="fp32, or bf16 (torch/openvino on a CPU with native bf16, or a GPU). "
            "Default: the store's, else fp32.",
        ),
        normalize: bool = typer.Option(
            True, "--normalize/--no-normalize", help="L2-normalise the vectors."
        ),
        query_prompt: str | None = typer.Option(
            None, "--query-prompt", help="Prefix for queries (local models)."
        ),
        document_prompt: str | None = typer.Option(
            None, "--document-prompt", help="Prefix for documents (local models)."
        ),
        id_field: str = typer.Option("id", "--id-field"),
        text_field: str = typer.Option("text", "--text-field"),
        title_field: str = typer.Option("title", "--title-field"),
        no_title: bool = typer.Option(False, "--no-title", help="Ignore titles."),
        file_format: str | None = typer.Option(
            None, "--input-format", help="jsonl, csv or parquet (default: by name)."
        ),
        skip_empty: bool = typer.Option(
            False, "--skip-empty", help="Skip rows with empty text (counted)."
        ),
        store_text: bool = typer.Option(False, "--store-text", help="Keep the text column."),
        limit: int | None = typer.Option(
            None, "--limit", min=1, help="Embed only the first N rows of each input."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
        # API providers (openai, vertex)
        dimensions: int | None = typer.Option(
            None, "--dimensions", min=1, help="Output size the API should return."
        ),
        base_url: str | None = typer.Option(
            None, "--base-url", help="API server (openai: else OPENAI_BASE_URL)."
        ),
        project: str | None = typer.Option(
            None, "--project", help="Vertex: Google Cloud project (else GOOGLE_CLOUD_PROJECT)."
        ),
        location: str | None = typer.Option(
            None, "--location", help="Vertex: region (else GOOGLE_CLOUD_LOCATION, us-central1)."
        ),
        concurrency: int | None = typer.Option(
            None, "--concurrency", min=1, help="API requests in flight [default: 4]."
        ),
        rpm: float | None = typer.Option(
            None, "--rpm", min=0.001, help="Client-side limit: requests per minute."
        ),
        tpm: float | None = typer.Option(
            None, "--tpm", min=1, help="Client-side limit: tokens per minute."
        ),
        max_retries: int = typer.Option(
            10, "--max-retries", min=0, help="Retries of a failed API request (429, 5xx, timeouts)."
        ),
        timeout: float = typer.Option(
            60.0,
            "--timeout",
            min=0.001,
            help="Seconds before an API request is abandoned (and retried).",
        ),
        strict: bool = typer.Option(
            False, "--strict", help="Refuse over-long inputs instead of truncating them."
        ),
        skip_bad: bool = typer.Option(
            False, "--skip-bad", help="Skip (and count) inputs the API rejects instead of failing."
        ),
        dry_run: bool = typer.Option(
            False,
            "--dry-run",
            help="Count inputs, tokens and estimated cost; send and write nothing.",
        ),
        retry_base_delay: float | None = typer.Option(
            None, "--retry-base-delay", hidden=True, min=0.0
        ),
        adaptor: Path | None = typer.Option(
            None,
            "--adaptor",
            help="Also write vector_<d> columns through this adaptor, with its recorded "
            "provider, model and settings (needs --dims).",
        ),
        dims: str | None = typer.Option(
            None, "--dims", help="With --adaptor: the sizes to write, e.g. 64,128."
        ),
        no_raw: bool = typer.Option(
            False, "--no-raw", help="With --adaptor: do not keep the raw vector (no refits)."
        ),
        engine: str = typer.Option("local", "--engine", help="local, or ray (Ray Data)."),
        ray_address: str | None = typer.Option(
            None, "--ray-address", help="--engine ray: auto, HOST:PORT or ray://HOST:10001."
        ),
        workers: int = typer.Option(1, "--workers", help="--engine ray: actors in the pool."),
        gpus_per_worker: float = typer.Option(
            0.0, "--gpus-per-worker", help="--engine ray: GPUs each actor reserves."
        ),
    ) -> None:
        """Embed a corpus (and its queries) into a store; reruns resume and reuse."""
        if dtype not in ("float32", "float16"):
            raise InputError(f"--dtype must be float32 or float16, not {dtype!r}")
        if store_format is not None and store_format not in FORMATS:
            raise InputError(f"--format must be parquet or lance, not {store_format!r}")
        if role not in ("document", "query"):
            raise InputError(f"--role must be document or query, not {role!r}")
        from madapt_cli.pipelines.ray_engine import check_engine

        check_engine(engine)  # before --dry-run too: a bad engine is a bad command line
        # every provider option of the command line: the provider takes its own
        values = {
            "batch_size": batch_size,
            "device": device,
            "query_prompt": query_prompt,
            "document_prompt": document_prompt,
            "backend": backend,
            "precision": precision,
            "dimensions": dimensions,
            "base_url": base_url,
            "project": project,
            "location": location,
            "concurrency": concurrency,
            "rpm": rpm,
            "tpm": tpm,
            "max_retries": max_retries,
            "timeout": timeout,
            "strict": strict,
            "skip_bad": skip_bad,
            "retry_base_delay": retry_base_delay,
        }
        adaptation = _adaptation(adaptor, dims, no_raw)
        if adaptation is None and (provider_name or "local") == "local":
            held_backend, held_precision = default_backend(out, device)
            values["backend"] = backend or held_backend
            same = values["backend"] == held_backend  # the store's backend: its precision too
            values["precision"] = precision or (held_precision if same else "fp32")
        if adaptation is None:
            provider = build_provider(provider_name or "local", model, values)
        else:
            from madapt_cli.pipelines.encode import provider_for_adaptor

            provider = provider_for_adaptor(
                adaptation["adaptor"],
                provider=provider_name,
                model=model,
                options=values,
                on_warning=console.warn,
            )
        source_options = SourceOptions(
            table=table,
            role=role,  # type: ignore[arg-type]
            id_field=id_field,
            text_field=text_field,
            title_field=title_field,
            file_format=file_format,
            skip_empty=skip_empty,
            use_titles=not no_title,
        )
        if dry_run:
            try:
                estimate = estimate_embedding(
                    source,
                    out,
                    provider,
                    source_options,
                    store_format=store_format,
                    limit=limit,
                    adaptation=VectorOptions(**(adaptation or {})).adaptation,
                )
            finally:
                provider.close()
            if as_json:
                console.print_json(estimate.to_dict())
            else:
                _print_dry_run(estimate)
            return
        run = run_embed
        if engine == "ray":
            from functools import partial

            from madapt_cli.pipelines.ray_embed import ProviderSpec, run_embed_ray
            from madapt_cli.pipelines.ray_engine import RayOptions

            spec = ProviderSpec(provider.name, provider.model, values)
            ray_options = RayOptions(ray_address, workers, gpus_per_worker)
            run = partial(run_embed_ray, spec=spec, ray_options=ray_options)  # type: ignore[assignment]
        try:
            with console.ProgressPrinter(quiet=quiet or as_json) as progress:
                summary = run(
                    source,
                    out,
                    provider,
                    source_options,
                    store_format=store_format,
                    vectors=VectorOptions(normalize, dtype, store_text, **(adaptation or {})),
                    limit=limit,
                    progress=progress,
                )
        finally:
            provider.close()
        if as_json:
            console.print_json(summary.to_dict())
        else:
            _print_run(summary)
