"""`madapt fit`: train an adaptor (a Matryoshka adaptor, SMEC, or PCA) on a store's corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from madapt_cli import console
from madapt_cli.errors import InputError
from madapt_cli.methods import METHODS


def register(app: typer.Typer) -> None:
    @app.command("fit")
    def fit(
        store_path: Path = typer.Argument(..., help="A store with a 'corpus' table."),
        out: Path = typer.Option(..., "--out", help="Adaptor directory to write."),
        method: str | None = typer.Option(
            None,
            "--method",
            help=", ".join(METHODS) + ". Default: smec with --mode supervised, matryoshka "
            "otherwise (--quantization-aware, --stage1-objective and --stage1-epochs are "
            "matryoshka's).",
        ),
        mode: str = typer.Option(
            "unsupervised",
            "--mode",
            help="unsupervised or supervised. Unsupervised distill gives the untrained start's "
            "prefix from half the full size up (config.json start_from_dim): never below the "
            "original there, but not nested with the adapted prefixes below it.",
        ),
        qrels: Path | None = typer.Option(
            None,
            "--qrels",
            help="Train qrels (query-id, corpus-id, score): supervised "
            "training data; for unsupervised, validation queries for early stopping.",
        ),
        objective: str = typer.Option(
            "auto",
            "--objective",
            help="Unsupervised objective: distill (learn each prefix's ranking from the "
            "full-size one of unlabelled queries, or of corpus rows without queries, where "
            "the untrained start is kept unless a label-free proxy says training beats it), paper "
            "(L_topk + L_pair + L_rec on the corpus, the paper's), or auto (distill).",
        ),
        queries_table: str | None = typer.Option(
            None,
            "--queries-table",
            help="Unsupervised distill: the table of unlabelled queries to learn from "
            "(default 'queries' when the store has it: ALL its queries are used, except "
            "those of --qrels/--dev-qrels, unless --query-ids says which). Never include the "
            "queries you will evaluate on.",
        ),
        query_ids: Path | None = typer.Option(
            None,
            "--query-ids",
            help="Unsupervised distill: learn only from these queries: a qrels file "
            "(judgements ignored, e.g. qrels/train.tsv) or one query id a line.",
        ),
        held_out_queries: str | None = typer.Option(
            None,
            "--held-out-queries",
            help="Unsupervised distill with unlabelled queries: none (default: every query "
            "trains, for --epochs epochs), choose (15% of them are held out, never trained "
            "on, and their distillation loss chooses the checkpoint, the untrained start "
            "included) or refit (choose's epoch count, then training again on every query).",
        ),
        dev_qrels: Path | None = typer.Option(
            None, "--dev-qrels", help="Validation qrels (default: 20% of the train queries)."
        ),
        train_dims: str | None = typer.Option(
            None,
            "--train-dims",
            help="Prefix sizes trained at once, e.g. 32,64,128,256 "
            "(default: powers of two from 16, plus the full size; unsupervised distill: "
            "from 32, below the size where the adaptor gives its start).",
        ),
        epochs: int | None = typer.Option(
            None,
            "--epochs",
            help="Epochs of the chosen mode (default 24 unsupervised distill, 10 "
            "--objective paper, 30 supervised).",
        ),
        stage1_epochs: int | None = typer.Option(
            None,
            "--stage1-epochs",
            help="Supervised: epochs of the unsupervised first stage (0 skips it; default 10).",
        ),
        batch_size: int | None = typer.Option(
            None,
            "--batch-size",
            help="Vectors per step: unlabelled anchors for distill (default 64), corpus "
            "vectors otherwise (default 128).",
        ),
        lr: float | None = typer.Option(None, "--lr", help="Learning rate of the chosen mode."),
        hidden: int | None = typer.Option(None, "--hidden", help="Hidden width (default 2 D)."),
        depth: int | None = typer.Option(None, "--depth", help="Linear layers in g (default 2)."),
        topk: int | None = typer.Option(None, "--topk", help="Neighbours per vector for L_topk."),
        alpha: float | None = typer.Option(
            None,
            "--alpha",
            help="Weight of L_pair (unsupervised, default 1) or L_topk (supervised, default "
            "0.3); smec: of L_unsup (supervised default 0.1, unsupervised 1).",
        ),
        beta: float | None = typer.Option(
            None,
            "--beta",
            help="Weight of L_rec (unsupervised, default 1) or L_pair (supervised, default 0.3).",
        ),
        gamma: float | None = typer.Option(
            None, "--gamma", help="Supervised: weight of L_rec (default 0.3)."
        ),
        tau: float | None = typer.Option(
            None, "--tau", help="Ranking loss temperature (default 0.05)."
        ),
        hard_negatives: int | None = typer.Option(
            None, "--hard-negatives", help="Hard negatives mined per training query (default 50)."
        ),
        patience: int | None = typer.Option(
            None, "--patience", help="Epochs without validation gain before stopping."
        ),
        rotation: bool = typer.Option(
            True,
            "--rotation/--no-rotation",
            help="matryoshka and smec: start f from the corpus' principal rotation (keeps "
            "full-size cosines) instead of the identity.",
        ),
        quantization_aware: str | None = typer.Option(
            None,
            "--quantization-aware",
            help="binary or int2: also train the prefixes' ranking as a database scores "
            "their codes (straight-through sign bits, or 2-bit Lloyd-Max levels at 128 "
            "dims). --method matryoshka.",
        ),
        # supervised: the distillation term and stage 1
        distill_weight: str | None = typer.Option(
            None,
            "--distill-weight",
            help="Supervised (matryoshka, smec): weight of L_distill beside L_rank, each "
            "prefix learning the full-size ranking of every training query's top 100 "
            "documents (matryoshka default 0, smec 1). smec also takes auto: one fit at 0 and "
            "one at 1, keeping the better on the held-out training queries (twice the time; "
            "for labels that disagree with the original ranking).",
        ),
        stage1_objective: str | None = typer.Option(
            None,
            "--stage1-objective",
            help="Supervised matryoshka: stage 1's objective, paper (default) or distill (the "
            "training queries as unlabelled anchors, --stage1-epochs epochs).",
        ),
        rank_loss: str | None = typer.Option(
            None,
            "--rank-loss",
            help="Supervised: the ranking loss, pairwise (sampled positives against lower-graded "
            "candidates) or softmax (one softmax over a query's candidates, the grades as "
            "target). Default: the method's (matryoshka pairwise, smec softmax).",
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        precision: str = typer.Option(
            "auto",
            "--precision",
            help="Training arithmetic of the MLP: auto (bf16 on a GPU, and for the distill "
            "objective and supervised SMEC on a CPU with native bf16; float32 otherwise), "
            "fp32 or bf16. The "
            "adaptor is float32 either way; the choice is in config.json's validation_curve.",
        ),
        seed: int = typer.Option(0, "--seed"),
        sample: int | None = typer.Option(
            None, "--sample", help="Train on a uniform random sample of N corpus rows (--seed)."
        ),
        name: str | None = typer.Option(
            None, "--name", help="Adaptor name (default: --out's name)."
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace an existing --out adaptor that madapt wrote."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
        # --- --method smec only (madapt_cli.methods.smec: SMEC.flags) ---
        to_dim: int | None = typer.Option(
            None,
            "--to-dim",
            help="smec: the last (smallest) stage size (default: the smallest --train-dims size).",
        ),
        resume: Path | None = typer.Option(
            None, "--resume", help="smec: continue this SMEC adaptor to a smaller --to-dim."
        ),
        sequential: bool = typer.Option(
            False,
            "--sequential/--no-sequential",
            help="smec: one stage per size (SMRL; off by default: docs/smec.md).",
        ),
        ads: bool = typer.Option(
            False,
            "--ads/--no-ads",
            help="smec: learn which dimensions to keep (ADS; off by default: docs/smec.md).",
        ),
        xbm: bool = typer.Option(
            True, "--xbm/--no-xbm", help="smec: neighbours from a cross-batch memory (S-XBM)."
        ),
        memory_size: int = typer.Option(
            5000, "--memory-size", help="smec: rows of the cross-batch memory."
        ),
    ) -> None:
        """Train an adaptor on STORE's corpus and write it to --out (safetensors + config.json)."""
        from madapt_cli.methods import default_method
        from madapt_cli.methods.base import get_method, method_options
        from madapt_cli.pipelines.fit import fit_store
        from madapt_cli.util.cpu import cpu_has_bf16
        from madapt_cli.util.device import resolve_device
        from madapt_cli.util.dims import split_sizes

        # a device this machine lacks, or bf16 it cannot do natively, is refused before any work
        if resolve_device(device).type == "cpu" and precision == "bf16" and not cpu_has_bf16():
            raise InputError(
                "--precision bf16 needs a GPU or a CPU with native bfloat16 (AVX-512 BF16 or "
                "AMX); this one has neither: use --precision fp32 or auto"
            )
        weight, choose_weight = _distill_weight(distill_weight)
        config = _train_config(
            mode,
            device=device,
            seed=seed,
            train_dims=split_sizes(train_dims, "--train-dims") if train_dims is not None else None,
            rotation=rotation,
            epochs=epochs,
            stage1_epochs=stage1_epochs,
            lr=lr,
            batch_size=batch_size,
            hidden=hidden,
            depth=depth,
            topk=topk,
            alpha=alpha,
            beta=beta,
            gamma=gamma,
            temperature=tau,
            hard_negatives=hard_negatives,
            patience=patience,
            objective=objective,
            quantization_aware=quantization_aware,
            precision=precision,
            distill_weight=weight,
            stage1_objective=stage1_objective,
            rank_loss=rank_loss,
        )
        if held_out_queries is not None:
            _held_out_queries(config, held_out_queries, mode, objective)
        defaulted = method is None
        method = method or default_method(mode)
        fitter = get_method(method, "--method")
        if (distill_weight is not None or stage1_objective is not None) and mode != "supervised":
            raise InputError("--distill-weight and --stage1-objective need --mode supervised")
        if rank_loss is not None and mode != "supervised":
            raise InputError("--rank-loss needs --mode supervised")
        for flag, value in (
            ("--stage1-objective", stage1_objective),
            ("--stage1-epochs", stage1_epochs),
            ("--quantization-aware", quantization_aware),
        ):
            if value is not None and method != "matryoshka":
                default = f" (--mode {mode} fits {method} by default)" if defaulted else ""
                raise InputError(f"{flag} needs --method matryoshka{default}")
        if choose_weight:
            if method != "smec":
                raise InputError("--distill-weight auto needs --method smec")
            config.smec_distill_choices = [0.0, 1.0]
        elif weight is not None:  # a weight given: SMEC trains with it
            config.smec_distill_choices = None
        if lr is not None and fitter.one_learning_rate:
            config.lr = lr  # every stage trains at TrainConfig.lr, in both modes
        flags = {
            "to_dim": to_dim,
            "resume": resume,
            "sequential": sequential,
            "ads": ads,
            "xbm": xbm,
            "memory_size": memory_size,
        }
        options = method_options(fitter, flags)
        with console.ProgressPrinter(quiet=as_json and not console.err.is_terminal) as printer:
            result = fit_store(
                store_path,
                out,
                method=method,
                mode=mode,
                qrels_path=qrels,
                dev_qrels_path=dev_qrels,
                config=config,
                name=name,
                progress=printer,
                options=options,
                resume=resume,
                overwrite=overwrite,
                queries_table=queries_table,
                query_ids_path=query_ids,
                sample=sample,
            )
        _print_summary(result.config, out, as_json)


def _distill_weight(value: str | None) -> tuple[float | None, bool]:
    """``--distill-weight``: (the weight, or None when not given or auto; whether auto)."""
    if value is None or value == "auto":
        return None, value == "auto"
    try:
        return float(value), False
    except ValueError:
        raise InputError(
            f"--distill-weight must be a finite number >= 0 or auto, not {value!r}"
        ) from None


def _held_out_queries(config: Any, value: str, mode: str, objective: str) -> None:
    """``--held-out-queries``: unsupervised distill only (TrainConfig.distill_held_out)."""
    from madapt_cli.training.config import HELD_OUT_CHOICES

    if value not in HELD_OUT_CHOICES:
        raise InputError(
            f"--held-out-queries must be one of {', '.join(HELD_OUT_CHOICES)}, not {value!r}"
        )
    if mode == "supervised" or objective == "paper":
        raise InputError("--held-out-queries needs --mode unsupervised with --objective distill")
    config.distill_held_out = value


def _train_config(mode: str, *, lr: float | None, **settings: Any) -> Any:
    """The TrainConfig of `madapt fit`'s options: in supervised mode ``--epochs`` and
    ``--lr`` set stage 2 and ``--stage1-epochs`` stage 1; options not given keep the
    defaults."""
    from madapt_cli.training.config import TrainConfig

    supervised = mode == "supervised"
    epochs, stage1_epochs = settings.pop("epochs"), settings.pop("stage1_epochs")
    config = TrainConfig(
        device=settings.pop("device"),
        seed=settings.pop("seed"),
        train_dims=settings.pop("train_dims"),
        rotation=settings.pop("rotation"),
        objective=settings.pop("objective"),
    )
    # unsupervised distill (--objective auto/distill): --epochs, --lr, --batch-size, --tau
    # set its own
    distill = not supervised and config.objective != "paper"
    settings["supervised_epochs" if supervised else "epochs"] = epochs
    if supervised:
        settings["epochs"] = stage1_epochs
    settings["supervised_lr" if supervised else "lr"] = lr
    if distill:
        settings["distill_epochs"] = settings.pop("epochs")
        settings["distill_lr"] = settings.pop("lr")
        settings["distill_batch_size"] = settings.pop("batch_size")
        settings["distill_temperature"] = settings.pop("temperature")
    for key, value in settings.items():
        if value is not None:
            setattr(config, key, value)
    # --epochs 0 keeps the untrained start (the principal rotation, or the identity)
    for key in ("epochs", "supervised_epochs", "distill_epochs"):
        if getattr(config, key) < 0:
            raise InputError("--epochs must not be negative")
    for key in ("batch_size", "distill_batch_size", "topk", "patience"):
        if getattr(config, key) < 1:
            flag = key.removeprefix("distill_").replace("_", "-")
            raise InputError(f"--{flag} must be positive")
    if config.hidden is not None and config.hidden < 1:
        raise InputError("--hidden must be positive")
    return config


def _print_summary(result: dict[str, Any], out: Path, as_json: bool) -> None:
    if as_json:
        console.print_json(
            {
                "out": str(out),
                "name": result["name"],
                "method": result["method"],
                "mode": result.get("mode"),
                "dimension": result["dimension"],
                "train_dims": result.get("train_dims"),
                "best_validation": result.get("best_validation"),
                "objective": result.get("objective"),
                "learned_from_queries": _learned(result),
                "held_out_queries": result.get("held_out_queries"),
                "epochs_run": len(result.get("validation_curve") or []),
                "training_data_sha256": result["training_data_sha256"],
                "start_from_dim": result.get("start_from_dim"),
            }
        )
        return
    best = result.get("best_validation")
    extra = ""
    if best and "overlap@10" in best:
        sizes = " ".join(f"{d}:{v:.3f}" for d, v in best["overlap@10"].items())
        kl = best.get("held-out kl")
        chosen = "distillation loss" if kl and best["score"] <= 0 else "overlap@10"
        losses = " ".join(f"{d}:{v:.3f}" for d, v in (kl or {}).items())
        extra = (
            f", checkpoint epoch {best['epoch']} chosen without labels by the {chosen} of "
            f"held-out anchors (overlap@10 {sizes}" + (f"; loss {losses})" if kl else ")")
        )
        if best.get("refit_epochs"):
            extra += f", then trained again on every query for {best['refit_epochs']} epochs"
    elif best:
        extra = f", best validation nDCG@10 {best['score']:.4f} (epoch {best['epoch']})"
    console.out.print(f"wrote {result['method']} adaptor '{result['name']}' to {out}{extra}")
    if result.get("objective") == "distill":
        learned = _learned(result)
        if learned is None:
            console.out.print(
                "objective distill on corpus rows (no queries table): no unlabelled queries used"
            )
        else:
            console.out.print(
                f"objective distill: learned from {learned['count']} unlabelled queries "
                f"({learned['selected_by']}); do not evaluate on them"
            )
            if result.get("held_out_queries") == "none":
                console.out.print(
                    "every one of them trained, for every epoch: no label-free checkpoint "
                    "choice (--held-out-queries choose or refit holds 15% out for one)"
                )
    if result.get("start_from_dim") is not None:
        console.out.print(
            f"from {result['start_from_dim']} dims up it gives the untrained start's prefix "
            "(the original's quality; not nested with the smaller adapted prefixes: write each "
            "size you store with `madapt apply --dims`)"
        )


def _learned(result: dict[str, Any]) -> dict[str, Any] | None:
    learned = result.get("learned_from_queries")
    if not isinstance(learned, dict):
        return None
    return {k: learned.get(k) for k in ("table", "selected_by", "count", "sha256")}
