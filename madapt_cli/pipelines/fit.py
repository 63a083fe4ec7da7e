"""`madapt fit`: read a store's training data, train a method, write the adaptor."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from madapt_cli import __version__
from madapt_cli.data import read_qrels
from madapt_cli.errors import InputError
from madapt_cli.methods import default_method
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.methods.base import Method, TrainingData, get_method
from madapt_cli.pipelines.sample import sample_corpus  # --sample N (issue 15)
from madapt_cli.store.base import open_store, require_raw_vectors
from madapt_cli.training.anchors import read_query_ids
from madapt_cli.training.config import EpochCallback, TrainConfig
from madapt_cli.training.distill import distill_train_dims, start_from_dim
from madapt_cli.training.progress import EpochProgress
from madapt_cli.util.dims import check_train_dims
from madapt_cli.util.files import check_output, staged_output
from madapt_cli.util.progress import Progress

MODES = ("unsupervised", "supervised")


def fit_store(  # noqa: PLR0913 - the keyword API behind `madapt fit`, one per option group
    store_path: str | Path,
    out: str | Path,
    *,
    method: str | None = None,
    mode: str = "unsupervised",
    qrels_path: str | Path | None = None,
    dev_qrels_path: str | Path | None = None,
    config: TrainConfig | None = None,
    name: str | None = None,
    on_epoch: EpochCallback | None = None,
    progress: Progress | None = None,
    options: Any = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
    queries_table: str | None = None,
    query_ids_path: str | Path | None = None,
    sample: int | None = None,  # --sample N (issue 15): see madapt_cli.pipelines.sample
) -> Adaptor:
    """Fit an adaptor on the ``corpus`` (and ``queries``) tables of a store and write the
    artifact directory ``out`` (atomically: a failed fit leaves no partial artifact).

    ``out`` is checked before anything is read: it may not be, hold or lie inside an input,
    and only an adaptor madapt wrote is replaced, with ``overwrite``. ``options``: the
    method's own (e.g. :class:`madapt_cli.methods.smec.SMECOptions`; None: its defaults);
    ``resume``: an adaptor to continue (SMEC). ``method`` None: :func:`default_method`
    (smec supervised, matryoshka unsupervised). ``on_epoch`` gets each epoch record,
    ``progress`` a ProgressEvent(task="fit", unit="epochs") per epoch.

    Unsupervised with a method that learns from queries (matryoshka): ``config.objective``
    "auto" (default) and "distill" learn the full-size ranking from the unlabelled queries
    of ``queries_table`` (None: the ``queries`` table when the store has one), all of them
    but the --qrels/--dev-qrels ones, or those listed in ``query_ids_path`` (a qrels file,
    judgements ignored, or one id a line); without queries from the corpus rows. "paper":
    the paper's losses, as before. Returns the written :class:`Adaptor` (its ``config`` is
    config.json)."""
    config = config or TrainConfig()
    method = method or default_method(mode)
    fitter = get_method(method, "--method")
    if mode not in MODES:
        raise InputError(f"unknown --mode {mode!r}: use unsupervised or supervised")
    out = Path(out)
    # OUT may not touch any of them
    inputs = (store_path, qrels_path, dev_qrels_path, resume, query_ids_path)
    check_output(out, "adaptor", overwrite=overwrite, inputs=inputs)
    default_sizes = config.train_dims is None
    data, options = _training_data(
        store_path, fitter, mode, config, options, qrels_path, dev_qrels_path
    )
    sampled = sample_corpus(data, sample, config.seed)  # --sample N (issue 15)
    _choose_objective(data, fitter, config, queries_table, query_ids_path)
    if default_sizes and data.objective == "distill":
        config.train_dims = distill_train_dims(
            data.dimension, start_from_dim(config, data.dimension)
        )
    epochs = EpochProgress(on_epoch, progress)
    fitted = fitter.fit(data, config, options, epochs, resume)
    epochs.finish()
    record: dict[str, Any] = {
        "name": name or out.resolve().name,
        "method": method,
        "dimension": data.dimension,
        "base_provider": data.metadata.get("provider"),
        "base_model": data.metadata.get("model"),
        "base_normalized": data.metadata.get("normalized"),
        "base_settings": base_settings(data.store),
        "source_store": str(Path(store_path).resolve()),
        **fitted.record,
        "seed": config.seed,
        "hyperparameters": asdict(config),
        "madapt_version": __version__,
        "validation_curve": fitted.history,
        "best_validation": fitted.best,
        **({"sample": sampled} if sampled else {}),  # --sample N (issue 15)
    }
    adaptor = Adaptor(fitted.module.cpu(), record)
    with staged_output(out, "adaptor", overwrite=overwrite, inputs=inputs) as staging:
        adaptor.save(staging)
    return adaptor


def _choose_objective(
    data: TrainingData,
    method: Method,
    config: TrainConfig,
    queries_table: str | None,
    query_ids_path: str | Path | None,
) -> None:
    """Set ``data``'s objective and unlabelled queries from the options (see fit_store)."""
    learns = not data.supervised and method.learns_from_queries
    asked = config.objective != "auto" or queries_table is not None or query_ids_path is not None
    if not learns:
        if asked:
            raise InputError(
                "--objective, --queries-table and --query-ids apply to --mode unsupervised "
                f"with --method matryoshka, not --mode {data.mode} --method {method.name}"
            )
        return
    data.objective = "paper" if config.objective == "paper" else "distill"
    if data.objective == "paper":
        if queries_table is not None or query_ids_path is not None:
            raise InputError(
                "--objective paper learns from the corpus only: drop --queries-table/--query-ids"
            )
        return
    table = queries_table or "queries"
    if queries_table is None and query_ids_path is None and not data.store.has_table(table):
        return  # corpus only: distill on corpus rows, the start kept unless it is beaten
    data.store.require_table(table)
    data.queries_table = table
    if query_ids_path is not None:
        data.anchor_ids = read_query_ids(query_ids_path)
        data.anchor_source = f"--query-ids {query_ids_path}"
    elif data.qrels is not None or data.dev_qrels is not None:
        data.anchor_source = f"all of the '{table}' table but the --qrels/--dev-qrels queries"


def _training_data(
    store_path: str | Path,
    method: Method,
    mode: str,
    config: TrainConfig,
    options: Any,
    qrels_path: str | Path | None,
    dev_qrels_path: str | Path | None,
) -> tuple[TrainingData, Any]:
    """The store's training data and the method's checked options, once every input and
    hyper-parameter is checked (``config.train_dims`` set to the sizes trained)."""
    store = open_store(store_path)
    store.require_table("corpus")
    require_raw_vectors(store, "corpus", "`madapt fit`")
    metadata = store.metadata("corpus")
    dimension = store.schema("corpus").field("vector").type.list_size
    config.train_dims = check_train_dims(
        config.train_dims or method.default_train_dims(dimension), dimension
    )
    if config.validation_dims:
        check_train_dims(config.validation_dims, dimension)
    config.validate(mode, method.one_learning_rate)  # every hyper-parameter, before any work
    options = method.check_options(options)
    if mode == "supervised" and method.supervised_needs_qrels and qrels_path is None:
        raise InputError("--mode supervised needs --qrels TRAIN.tsv (query-id, corpus-id, score)")
    qrels = read_qrels(qrels_path) if qrels_path is not None else None
    dev_qrels = read_qrels(dev_qrels_path) if dev_qrels_path is not None else None
    data = TrainingData(store, store_path, metadata, dimension, mode, qrels, dev_qrels)
    return data, options


#: store metadata fields that are not the provider's settings (see EmbeddingProvider.metadata)
_NOT_SETTINGS = frozenset(
    {"provider", "model", "dimension", "normalized", "role", "dtype", "created_at"}
    | {"madapt_version"}
)


def base_settings(store: Any) -> dict[str, dict[str, Any]]:
    """role -> the provider settings (prompt, task type, dimensions...) the store's corpus
    (document) and queries (query) were embedded with, so that `madapt encode` makes the
    same upstream call for new texts."""
    settings: dict[str, dict[str, Any]] = {}
    for table, role in (("corpus", "document"), ("queries", "query")):
        if store.has_table(table):
            metadata = store.metadata(table)
            settings[role] = {k: v for k, v in metadata.items() if k not in _NOT_SETTINGS}
    return settings
