"""Extra unlabelled anchors beside the queries (``train_distill(extra_anchors=...)``, e.g.
the documents' titles): their own L_distill term, never held out for the proxy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_distill import _config as distill_config

from madapt_cli.errors import InputError
from madapt_cli.methods.matryoshka import train_distill
from madapt_cli.training.anchors import extra_anchor_term
from madapt_cli.training.config import TrainConfig


def _problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Isotropic corpus; queries in a random 4-dim subspace the corpus' rotation cannot know:
    a few real queries, and many more vectors from the same subspace as extra anchors."""
    rng = np.random.default_rng(seed)
    corpus = rng.standard_normal((600, 32)).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((32, 4)))[0]

    def near(count: int) -> np.ndarray:
        vectors = rng.standard_normal((count, 4)) @ basis.T
        return (vectors + 0.05 * rng.standard_normal((count, 32))).astype(np.float32)

    return corpus, near(40), near(400)


def _config(**changes) -> TrainConfig:
    """test_distill's small distill settings, with this file's changes."""
    settings = {
        "distill_student_negatives": 0,
        "distill_epochs": 8,
        "distill_batch_size": 16,
        "proxy_fraction": 0.25,
    }
    return distill_config(**{**settings, **changes})


def test_extra_anchors_teach_what_few_queries_cannot():
    corpus, queries, extra = _problem()
    alone = train_distill(corpus, queries, _config())
    helped = train_distill(corpus, queries, _config(), extra_anchors=extra)
    # the proxy holds out the same 10 queries in both runs: only training differs
    assert alone.history[0]["held-out kl"] == helped.history[0]["held-out kl"]
    assert helped.best["held-out kl"]["4"] < 0.9 * alone.best["held-out kl"]["4"]


def test_weight_zero_is_the_run_without_extra_anchors():
    corpus, queries, extra = _problem()
    config = _config(distill_epochs=2)
    plain = train_distill(corpus, queries, config)
    zero = train_distill(
        corpus, queries, _config(distill_epochs=2, distill_extra_weight=0.0), extra_anchors=extra
    )
    probe = torch.from_numpy(corpus[:50])
    with torch.no_grad():
        assert torch.equal(plain.module(probe), zero.module(probe))


def test_extra_term_sizes_weight_and_shape():
    corpus, _, extra = _problem()
    vectors = F.normalize(torch.from_numpy(corpus), dim=-1)
    config = _config(distill_extra_dims=[4], distill_extra_weight=0.5)
    term = extra_anchor_term(vectors, extra, [4, 8, 32], config)
    assert term is not None and term.weight == 0.5
    assert list(term.objective.loss.dims) == [4]
    assert term.order.batch == 16
    assert extra_anchor_term(vectors, extra[:0], [4, 8, 32], config) is None
    assert extra_anchor_term(vectors, None, [4, 8, 32], config) is None
    with pytest.raises(InputError, match=r"extra anchors have shape \(400, 16\)"):
        extra_anchor_term(vectors, extra[:, :16], [4, 8, 32], config)
    with pytest.raises(InputError, match=r"outside 1\.\.32"):
        extra_anchor_term(vectors, extra, [4], _config(distill_extra_dims=[64]))


def test_extra_settings_are_validated():
    with pytest.raises(InputError, match="distill_extra_weight"):
        _config(distill_extra_weight=-1.0).validate("unsupervised")
    with pytest.raises(InputError, match="distill_extra_dims"):
        _config(distill_extra_dims=[0]).validate("unsupervised")
