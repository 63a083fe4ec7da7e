"""`madapt eval`: retrieval quality of truncation, PCA and adaptors at chosen sizes."""

from __future__ import annotations

from pathlib import Path

import typer

from madapt_cli import console
from madapt_cli.errors import RequirementFailed
from madapt_cli.retrieval.quantize import DEFAULT_INT8_CALIBRATION


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def evaluate(
        store_path: Path = typer.Argument(..., help="A store with 'corpus' and 'queries' tables."),
        qrels: Path = typer.Option(
            ...,
            "--qrels",
            help="Relevance judgments: BEIR TSV (query-id, corpus-id, score) or TREC qrels.",
        ),
        dims: str | None = typer.Option(
            None,
            "--dims",
            help="Sizes to evaluate, e.g. 64,128,256 (each <= D; default: "
            "those of 64,128,256 below D).",
        ),
        adaptor: list[Path] | None = typer.Option(
            None, "--adaptor", help="An adaptor directory from `madapt fit` (repeatable)."
        ),
        baseline: list[str] | None = typer.Option(
            None, "--baseline", help="truncate or pca (repeatable; default: both)."
        ),
        metrics: str = typer.Option(
            "ndcg@10,recall@100,mrr@10,map@100",
            "--metrics",
            help="Comma-separated name@k: ndcg, recall, mrr, map, precision.",
        ),
        ignore_identical_ids: bool = typer.Option(
            False,
            "--ignore-identical-ids",
            help="Never return a document whose id equals the query's (e.g. ArguAna).",
        ),
        vector_column: list[str] | None = typer.Option(
            None,
            "--vector-column",
            help="A stored column to evaluate as it is, e.g. vector_64 of an applied store "
            "(repeatable; default: 'vector', or every vector_<d> of an applied store).",
        ),
        precision: str | None = typer.Option(
            None,
            "--precision",
            help="Also score each size stored at these precisions: float32, float16, int8, "
            "int2, binary (comma-separated; float32 is always included).",
        ),
        scoring: str = typer.Option(
            "both",
            "--scoring",
            help="With --precision: symmetric (query encoded like the documents; binary by "
            "Hamming distance), asymmetric (float query against the decoded documents) or both.",
        ),
        rescore: int = typer.Option(
            0,
            "--rescore",
            help="With --precision: also fetch N x k candidates by the symmetric search and "
            "re-rank them with the float query (0: off).",
        ),
        int8_calibration: str = typer.Option(
            DEFAULT_INT8_CALIBRATION,
            "--int8-calibration",
            help="int8 ranges per dimension, fitted on the corpus: minmax or percentile:P "
            "(the P-th and (100-P)-th percentiles).",
        ),
        require: list[str] | None = typer.Option(
            None,
            "--require",
            help="A quality gate, e.g. 'sup@64:ndcg@10>=0.66' or '*@16B:ndcg@10>=0.60' (best "
            "cell within 16 bytes per vector); repeatable. Exit 5 when one fails.",
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        corpus_table: str = typer.Option("corpus", "--corpus-table", help="Documents table."),
        queries_table: str = typer.Option("queries", "--queries-table", help="Queries table."),
        as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
        report: Path | None = typer.Option(
            None, "--report", help="Also write report.json, report.md and plots to this directory."
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace an existing --report that madapt wrote."
        ),
    ) -> None:
        """Exact cosine search of the qrels' queries against the corpus for each method at
        each size (first m coordinates, re-normalised), scored with trec_eval's metrics.
        The full-size original vectors are always the reference row (truncate at D).
        With --precision, each size also stored as float16, int8 or binary codes."""
        from madapt_cli.pipelines.evaluate import EvalOptions, run_evaluation
        from madapt_cli.pipelines.requirements import check_requirements, parse_requirements
        from madapt_cli.reports import render_table, write_report
        from madapt_cli.util.files import check_output

        requirements = parse_requirements(require)  # a typo fails before the evaluation
        inputs = [store_path, qrels, *(adaptor or [])]
        if report is not None:  # before the evaluation, so a bad --report costs nothing
            check_output(report, "report", overwrite=overwrite, inputs=inputs, option="--report")
        options = EvalOptions(
            dims=dims,
            adaptors=adaptor or [],
            baselines=baseline or None,
            metrics=metrics,
            ignore_identical_ids=ignore_identical_ids,
            device=device,
            corpus_table=corpus_table,
            queries_table=queries_table,
            fingerprints=report is not None,
            vector_columns=vector_column or None,
            precisions=precision,
            scoring=scoring,
            rescore=rescore,
            int8_calibration=int8_calibration,
        )
        # a bar on a terminal only, as before: a log gets the warnings and the result
        with console.ProgressPrinter(quiet=not console.err.is_terminal) as progress:
            result = run_evaluation(
                store_path, qrels, options, progress=progress, on_warning=console.warn
            )
        verdicts = check_requirements(requirements, result)  # before writing: no cell is exit 2
        if report is not None:
            write_report(result, report, overwrite=overwrite, inputs=inputs)
            console.log(f"wrote report to {report}")
        summary = result.summary()
        if verdicts:
            summary["requirements"] = verdicts
            summary["failed"] = [v["requirement"] for v in verdicts if not v["passed"]]
        if as_json:
            console.print_json(summary)
        else:
            console.print_table(console.out, render_table(result))
            for verdict in verdicts:
                mark = "passed" if verdict["passed"] else "FAILED"
                console.out.print(
                    f"{mark}: {verdict['requirement']} ({verdict['cell']}, "
                    f"{verdict['bytes']:,} B: {verdict['value']:.4f})",
                    highlight=False,
                    markup=False,
                    soft_wrap=True,
                )
        failed = [v for v in verdicts if not v["passed"]]
        if failed:
            raise RequirementFailed(
                f"{len(failed)} of {len(verdicts)} --require failed: "
                + "; ".join(f"{v['requirement']} (measured {v['value']:.4f})" for v in failed)
            )
