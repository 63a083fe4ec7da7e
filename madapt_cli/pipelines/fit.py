"""`madapt fit`: read a store's training data, train a method, write the adaptor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from madapt_cli.errors import InputError
from madapt_cli.methods.matryoshka import train_supervised, train_unsupervised
from madapt_cli.training.config import EpochCallback, TrainConfig, config_record
from madapt_cli.training.validation import validation_set
from madapt_cli.util.dims import check_train_dims, default_train_dims
from madapt_cli.util.files import check_output, staged_output
from madapt_cli.util.hashing import training_fingerprint


# --- from a store to an artifact -----------------------------------------------------------------
def fit_store(
    store_path: str | Path,
    out: str | Path,
    *,
    method: str = "matryoshka",
    mode: str = "unsupervised",
    qrels_path: str | Path | None = None,
    dev_qrels_path: str | Path | None = None,
    config: TrainConfig | None = None,
    name: str | None = None,
    on_epoch: EpochCallback | None = None,
    smec: Any = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fit an adaptor on the ``corpus`` (and ``queries``) tables of a store and write the
    artifact directory ``out`` (atomically: a failed fit leaves no partial artifact).
    ``out`` is checked before anything is read: it may not be, hold or lie inside an input,
    and only an adaptor madapt wrote is replaced, with ``overwrite``.
    Returns the artifact's config. ``smec`` (:class:`madapt_cli.smec.SMECOptions`) and
    ``resume`` (an SMEC adaptor directory) only apply to ``method="smec"``."""
    from madapt_cli.data import read_qrels
    from madapt_cli.methods.adaptor import METHODS, Adaptor
    from madapt_cli.methods.pca import fit_pca
    from madapt_cli.store.base import check_tables_agree, open_store

    config = config or TrainConfig()
    if method not in METHODS:
        raise InputError(f"unknown --method {method!r}: use {', '.join(METHODS)}")
    if mode not in ("unsupervised", "supervised"):
        raise InputError(f"unknown --mode {mode!r}: use unsupervised or supervised")
    out = Path(out)
    inputs = (store_path, qrels_path, dev_qrels_path, resume)  # OUT may not touch any of them
    check_output(out, "adaptor", overwrite=overwrite, inputs=inputs)
    store = open_store(store_path)
    store.require_table("corpus")
    metadata = store.metadata("corpus")
    dimension = store.schema("corpus").field("vector").type.list_size
    dims = check_train_dims(config.train_dims or default_train_dims(dimension), dimension)
    config.train_dims = dims
    if config.validation_dims:
        check_train_dims(config.validation_dims, dimension)
    config.validate(mode, method)  # every hyper-parameter, before any training work
    if method == "smec":
        from madapt_cli.methods.smec import SMECOptions

        (smec or SMECOptions()).validate()
    if mode == "supervised" and method != "pca" and qrels_path is None:
        raise InputError("--mode supervised needs --qrels TRAIN.tsv (query-id, corpus-id, score)")
    qrels = read_qrels(qrels_path) if qrels_path is not None else None
    dev_qrels = read_qrels(dev_qrels_path) if dev_qrels_path is not None else None

    record: dict[str, Any] = {
        "name": name or out.resolve().name,
        "method": method,
        "dimension": dimension,
        "base_provider": metadata.get("provider"),
        "base_model": metadata.get("model"),
        "base_normalized": metadata.get("normalized"),
        "source_store": str(Path(store_path).resolve()),
    }
    if method == "pca":
        digest_ids: list[str] = []
        batches = []
        for ids, vectors in store.iter_vectors("corpus"):
            batches.append(vectors)
            digest_ids.extend(ids)
        if not digest_ids:
            raise InputError(f"table 'corpus' of {store_path} is empty")
        module = fit_pca(batches, dimension)
        record.update(
            architecture={"type": "pca", "centered": True},
            mode="unsupervised",
            train_dims=None,
            training_rows=len(digest_ids),
            training_data_sha256=training_fingerprint(digest_ids, *batches),
        )
        history, best = [], None
    else:
        corpus_ids, corpus = store.read_vectors("corpus")
        if len(corpus_ids) < 2:
            raise InputError(f"table 'corpus' of {store_path} has {len(corpus_ids)} rows; need 2+")
        query_ids: list[str] = []
        queries = np.zeros((0, dimension), np.float32)
        if qrels is not None or dev_qrels is not None:
            store.require_table("queries")
            check_tables_agree(store, "queries", "corpus")
            query_ids, queries = store.read_vectors("queries")
        if method == "smec":  # SMEC's staged trainer: madapt_cli.smec (issue 7)
            from madapt_cli.methods.smec import train_for_store

            result, smec_record = train_for_store(
                corpus,
                corpus_ids,
                queries,
                query_ids,
                qrels,
                dev_qrels,
                mode,
                config,
                smec,
                resume,
                metadata,
                on_epoch,
            )
            labelled = (query_ids, queries, qrels) if mode == "supervised" else ()
            fingerprint = training_fingerprint(corpus_ids, corpus, *labelled)
        elif mode == "supervised":
            result = train_supervised(
                corpus,
                corpus_ids,
                queries,
                query_ids,
                qrels,
                config,
                dev_qrels,
                on_epoch,
                two_stage=config.epochs > 0,
            )
            fingerprint = training_fingerprint(corpus_ids, corpus, query_ids, queries, qrels)
        else:
            validation_data = None
            judged = dev_qrels if dev_qrels is not None else qrels
            if judged is not None:
                validation_data = validation_set(corpus_ids, queries, query_ids, judged)
                if validation_data is None:
                    raise InputError("no query of the qrels has a vector in the 'queries' table")
            result = train_unsupervised(corpus, config, validation_data, on_epoch)
            fingerprint = training_fingerprint(corpus_ids, corpus)
        module, history, best = result.module, result.history, result.best
        record.update(
            architecture={
                "type": "residual_mlp",
                "hidden": config.hidden or 2 * dimension,
                "depth": config.depth,
                "activation": config.activation,
                "rotation": config.rotation,
            },
            mode=mode,
            train_dims=dims,
            training_rows=len(corpus_ids),
            training_data_sha256=fingerprint,
            topk_mining_seconds=round(result.topk_mining_seconds, 3),
        )
        if method == "smec":
            record.update(smec_record)
    from madapt_cli import __version__

    record.update(
        seed=config.seed,
        hyperparameters=config_record(config),
        madapt_version=__version__,
        validation_curve=history,
        best_validation=best,
    )
    adaptor = Adaptor(module.cpu(), record)
    with staged_output(out, "adaptor", overwrite=overwrite, inputs=inputs) as staging:
        adaptor.save(staging)
    return adaptor.config
