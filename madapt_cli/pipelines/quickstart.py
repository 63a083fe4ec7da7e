"""The quickstart: embed the bundled SciFact example, fit PCA and two adaptors, evaluate.

Everything runs offline with the packaged all-MiniLM-L6-v2. Each step reuses what a previous
run left (embeddings are cached by content), so an interrupted quickstart resumes. A rerun
replaces the adaptors and the report it wrote under OUT, and nothing else: a directory there
that madapt did not write is refused before anything is embedded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from madapt_cli.errors import InputError
from madapt_cli.util.progress import Progress

QUICKSTART_DIMS = (32, 64, 128, 256)


#: the repository's bundled copy; present in a source checkout (pip install -e .)
BUNDLED_SCIFACT = Path(__file__).resolve().parents[2] / "examples" / "scifact"


@dataclass(frozen=True)
class QuickstartPaths:
    root: Path

    @property
    def store(self) -> Path:
        return self.root / "store"

    def adaptor(self, name: str) -> Path:
        return self.root / "adaptors" / name

    @property
    def report(self) -> Path:
        return self.root / "report"


def find_example(data: Path | None) -> Path:
    from madapt_cli.data import BeirDataset

    folder = data or BUNDLED_SCIFACT
    if not BeirDataset.is_beir(folder):
        raise InputError(
            f"{folder}: no BEIR dataset there; pass --data with a BEIR folder "
            "(corpus.jsonl, queries.jsonl, qrels/train.tsv and qrels/test.tsv)"
        )
    return folder


def run_quickstart(
    out: Path,
    data: Path | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
    progress: Progress | None = None,
    backend: str = "torch",
):  # -> EvaluationReport
    """Embed, fit (PCA, unsupervised, supervised), evaluate at 32-256 and full size, report.

    ``backend``: the local model's (``madapt embed --backend``). ``log`` gets a line as each
    step starts; ``progress`` the embedding's events."""
    from madapt_cli.data import BeirDataset
    from madapt_cli.pipelines.embed import run_embed
    from madapt_cli.pipelines.evaluate import EvalOptions, run_evaluation
    from madapt_cli.pipelines.fit import fit_store
    from madapt_cli.providers.local import LocalProvider
    from madapt_cli.reports import write_report
    from madapt_cli.training.config import TrainConfig
    from madapt_cli.util.files import check_output

    folder = find_example(data)
    provider = LocalProvider("all-MiniLM-L6-v2", device=device, backend=backend)  # checks it
    beir = BeirDataset(folder)
    train_qrels, test_qrels = beir.qrels_path("train"), beir.qrels_path("test")
    paths = QuickstartPaths(out)
    fits = [
        ("pca", dict(method="pca")),
        # learns from the unlabelled train-split queries only: never from the test queries
        ("unsupervised", dict(mode="unsupervised", query_ids_path=train_qrels)),
        ("supervised", dict(mode="supervised", qrels_path=train_qrels)),
    ]
    adaptors = [paths.adaptor(name) for name, _ in fits]
    fit_inputs = [paths.store, train_qrels, folder]
    report_inputs = [paths.store, test_qrels, folder, *adaptors]
    # every output first, before the embedding: a rerun replaces only what madapt wrote
    for path in adaptors:
        check_output(path, "adaptor", overwrite=True, inputs=fit_inputs, option="--out")
    check_output(paths.report, "report", overwrite=True, inputs=report_inputs, option="--out")

    log(f"1/4 embedding {folder} with all-MiniLM-L6-v2 ({backend}) into {paths.store}")
    summary = run_embed(folder, paths.store, provider, progress=progress)
    log(
        f"    {summary.rows_embedded} rows embedded, {summary.rows_reused} reused "
        f"in {summary.seconds:.0f}s"
    )

    for step, (name, options) in enumerate(fits, start=1):
        log(f"2/4 fitting {name} ({step}/{len(fits)}) -> {paths.adaptor(name)}")
        fit_store(
            paths.store,
            paths.adaptor(name),
            name=name,
            config=TrainConfig(device=device),
            overwrite=True,
            **options,
        )

    log(f"3/4 evaluating at {', '.join(map(str, QUICKSTART_DIMS))} and full size")
    options = EvalOptions(
        dims=list(QUICKSTART_DIMS),
        adaptors=adaptors,
        baselines=["truncate"],
        device=device,
        fingerprints=True,
    )
    report = run_evaluation(paths.store, test_qrels, options)
    write_report(report, paths.report, overwrite=True, inputs=report_inputs)
    log(f"4/4 report written to {paths.report}")
    return report
