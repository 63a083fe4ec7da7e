"""`madapt fit`: train a Matryoshka adaptor (or fit PCA) on a store's corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from madapt_cli import console
from madapt_cli.errors import InputError


def _parse_dims(spec: str | None) -> list[int] | None:
    if spec is None:
        return None
    try:
        return [int(d) for d in spec.split(",") if d.strip()]
    except ValueError:
        raise InputError(f"--train-dims {spec!r}: expected comma-separated integers") from None


def register(app: typer.Typer) -> None:
    @app.command("fit")
    def fit(
        store_path: Path = typer.Argument(..., help="A store with a 'corpus' table."),
        out: Path = typer.Option(..., "--out", help="Adaptor directory to write."),
        method: str = typer.Option("matryoshka", "--method", help="matryoshka, smec or pca."),
        mode: str = typer.Option("unsupervised", "--mode", help="unsupervised or supervised."),
        qrels: Path | None = typer.Option(
            None,
            "--qrels",
            help="Train qrels (query-id, corpus-id, score): supervised "
            "training data; for unsupervised, validation queries for early stopping.",
        ),
        dev_qrels: Path | None = typer.Option(
            None, "--dev-qrels", help="Validation qrels (default: 20% of the train queries)."
        ),
        train_dims: str | None = typer.Option(
            None,
            "--train-dims",
            help="Prefix sizes trained at once, e.g. 32,64,128,256 "
            "(default: powers of two from 16, plus the full size).",
        ),
        epochs: int | None = typer.Option(
            None,
            "--epochs",
            help="Epochs of the chosen mode (default 10 unsupervised, 30 supervised).",
        ),
        stage1_epochs: int | None = typer.Option(
            None,
            "--stage1-epochs",
            help="Supervised: epochs of the unsupervised first stage (0 skips it; default 10).",
        ),
        batch_size: int | None = typer.Option(
            None, "--batch-size", help="Corpus vectors per step."
        ),
        lr: float | None = typer.Option(None, "--lr", help="Learning rate of the chosen mode."),
        hidden: int | None = typer.Option(None, "--hidden", help="Hidden width (default 2 D)."),
        depth: int | None = typer.Option(None, "--depth", help="Linear layers in g (default 2)."),
        topk: int | None = typer.Option(None, "--topk", help="Neighbours per vector for L_topk."),
        alpha: float | None = typer.Option(
            None,
            "--alpha",
            help="Weight of L_pair (unsupervised, default 1) or L_topk (supervised, default 0.3).",
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
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        seed: int = typer.Option(0, "--seed"),
        name: str | None = typer.Option(
            None, "--name", help="Adaptor name (default: --out's name)."
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace an existing --out adaptor that madapt wrote."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
        # --- --method smec only (madapt_cli.smec) ---
        to_dim: int | None = typer.Option(
            None,
            "--to-dim",
            help="smec: the last (smallest) stage size (default: the smallest --train-dims size).",
        ),
        resume: Path | None = typer.Option(
            None, "--resume", help="smec: continue this SMEC adaptor to a smaller --to-dim."
        ),
        sequential: bool = typer.Option(
            True, "--sequential/--no-sequential", help="smec: one stage per size (SMRL)."
        ),
        ads: bool = typer.Option(
            True, "--ads/--no-ads", help="smec: learn which dimensions to keep (ADS)."
        ),
        xbm: bool = typer.Option(
            True, "--xbm/--no-xbm", help="smec: neighbours from a cross-batch memory (S-XBM)."
        ),
        memory_size: int = typer.Option(
            5000, "--memory-size", help="smec: rows of the cross-batch memory."
        ),
    ) -> None:
        """Train an adaptor on STORE's corpus and write it to --out (safetensors + config.json)."""
        from madapt_cli.pipelines.fit import fit_store
        from madapt_cli.training.config import TrainConfig

        if device not in ("auto", "cpu", "cuda"):
            raise InputError(f"--device {device!r}: use auto, cpu or cuda")
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise InputError("--device cuda: no CUDA device is available")
        config = TrainConfig(
            device=device, seed=seed, train_dims=_parse_dims(train_dims), rotation=rotation
        )
        supervised = mode == "supervised"
        settings: dict[str, Any] = {
            "supervised_epochs" if supervised else "epochs": epochs,
            "epochs": stage1_epochs if supervised else epochs,
            "supervised_lr" if supervised else "lr": lr,
            "batch_size": batch_size,
            "hidden": hidden,
            "depth": depth,
            "topk": topk,
            "alpha": alpha,
            "beta": beta,
            "gamma": gamma,
            "temperature": tau,
            "hard_negatives": hard_negatives,
            "patience": patience,
        }
        if not supervised:
            settings["epochs"] = epochs
        for key, value in settings.items():
            if value is not None:
                setattr(config, key, value)
        # --epochs 0 keeps the untrained start (the principal rotation, or the identity)
        for key in ("epochs", "supervised_epochs"):
            if getattr(config, key) < 0:
                raise InputError("--epochs must not be negative")
        for key in ("batch_size", "topk", "patience"):
            if getattr(config, key) < 1:
                raise InputError(f"--{key.replace('_', '-')} must be positive")
        if config.hidden is not None and config.hidden < 1:
            raise InputError("--hidden must be positive")
        from madapt_cli.methods.smec import cli_options

        smec = cli_options(method, config, lr, to_dim, resume, sequential, ads, xbm, memory_size)

        bar = console.progress(quiet=as_json and not console.err.is_terminal)
        with bar:
            task = bar.add_task("fit", total=None)

            def on_epoch(record: dict[str, Any]) -> None:
                scores = record.get("ndcg@10") or {}
                loss = record.get("loss")
                text = f"{record['stage']} epoch {record['epoch']}"
                if loss is not None:
                    text += f" loss {loss:.4f}"
                if scores:
                    text += " val " + " ".join(f"{d}:{v:.3f}" for d, v in scores.items())
                bar.update(task, description=text, advance=1)
                if not console.err.is_terminal and not as_json:
                    console.log(text)

            result = fit_store(
                store_path,
                out,
                method=method,
                mode=mode,
                qrels_path=qrels,
                dev_qrels_path=dev_qrels,
                config=config,
                name=name,
                on_epoch=on_epoch,
                smec=smec,
                resume=resume,
                overwrite=overwrite,
            )
        summary = {
            "out": str(out),
            "name": result["name"],
            "method": result["method"],
            "mode": result.get("mode"),
            "dimension": result["dimension"],
            "train_dims": result.get("train_dims"),
            "best_validation": result.get("best_validation"),
            "epochs_run": len(result.get("validation_curve") or []),
            "training_data_sha256": result["training_data_sha256"],
        }
        if as_json:
            console.print_json(summary)
        else:
            best = result.get("best_validation")
            extra = f", best validation nDCG@10 {best['score']:.4f}" if best else ""
            console.out.print(
                f"wrote {result['method']} adaptor '{result['name']}' to {out}{extra}"
            )
