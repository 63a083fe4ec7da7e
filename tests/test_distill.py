"""Unsupervised listwise distillation (--objective distill), its label-free proxy, the
unlabelled queries it learns from (--query-ids) and the leakage guard in `madapt eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_eval_cli import make_store, run_cli

from madapt_cli.errors import InputError
from madapt_cli.losses import ListwiseDistillationLoss
from madapt_cli.methods.matryoshka import new_adaptor_module, train_distill
from madapt_cli.training.anchors import anchor_record, learned_overlap, read_query_ids
from madapt_cli.training.config import TrainConfig
from madapt_cli.training.student_negatives import StudentNegativesObjective
from madapt_cli.training.validation import RankingProxy, topk_overlap


# --- the loss ---------------------------------------------------------------------------------
def _candidates(seed: int = 0, batch: int = 5, count: int = 12, dim: int = 16):
    generator = torch.Generator().manual_seed(seed)
    anchors = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    candidates = F.normalize(torch.randn(batch, count, dim, generator=generator), dim=-1)
    teacher = (anchors.unsqueeze(1) * candidates).sum(-1)
    return anchors, candidates, teacher


def test_loss_is_zero_when_the_student_is_the_teacher():
    anchors, candidates, teacher = _candidates()
    loss = ListwiseDistillationLoss([16], temperature=0.05)
    assert float(loss(anchors, candidates, teacher)) == pytest.approx(0.0, abs=1e-6)


def test_loss_is_positive_and_gradient_flows_when_prefixes_disagree():
    anchors, candidates, teacher = _candidates()
    adapted = anchors.clone().requires_grad_(True)
    loss = ListwiseDistillationLoss([4, 8, 16], temperature=0.05)
    value = loss(adapted, candidates, teacher)
    value.backward()
    assert float(value.detach()) > 0.01
    assert adapted.grad is not None and float(adapted.grad.abs().sum()) > 0
    per_size = loss.per_size(anchors, candidates, teacher)
    assert per_size.shape == (3,) and float(per_size[-1]) == pytest.approx(0.0, abs=1e-6)
    assert float(value.detach()) == pytest.approx(float(per_size.mean()), rel=1e-5)


def test_masked_candidates_do_not_count():
    anchors, candidates, teacher = _candidates()
    loss = ListwiseDistillationLoss([4, 16], temperature=0.1)
    junk = torch.randn(5, 3, 16)
    padded = torch.cat([candidates, junk], dim=1)
    valid = torch.cat([torch.ones(5, 12, dtype=torch.bool), torch.zeros(5, 3, dtype=torch.bool)], 1)
    padded_teacher = torch.cat([teacher, torch.full((5, 3), 0.9)], dim=1)
    assert float(loss(anchors, padded, padded_teacher, valid)) == pytest.approx(
        float(loss(anchors, candidates, teacher)), rel=1e-5
    )


# --- the proxy --------------------------------------------------------------------------------
def test_topk_overlap_on_known_rankings():
    reference = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    assert topk_overlap(reference, reference) == 1.0
    assert topk_overlap(reference, reference[:, ::-1]) == 1.0  # order inside the top-k is free
    assert topk_overlap(reference, np.array([[0, 1, 9, 9], [8, 8, 8, 8]])) == pytest.approx(0.25)
    padded = np.array([[0, 1, -1, -1]])  # a corpus of 2 rows: 2 wanted, both found
    assert topk_overlap(padded, np.array([[1, 0, -1, -1]])) == 1.0


def test_proxy_of_the_untouched_vectors_is_perfect_at_full_size():
    generator = torch.Generator().manual_seed(0)
    corpus = F.normalize(torch.randn(200, 16, generator=generator), dim=-1)
    anchors = F.normalize(torch.randn(20, 16, generator=generator), dim=-1)
    proxy = RankingProxy(corpus, anchors, [4, 16], [4])
    record = proxy(torch.nn.Identity())
    assert record["overlap@10"]["16"] == 1.0
    assert record["overlap@10"]["4"] < 1.0
    assert record["score"] == record["overlap@10"]["4"]


# --- training -----------------------------------------------------------------------------------
def _subspace_problem(seed: int = 0):
    """Isotropic corpus; queries live in a random 4-dim subspace: the corpus' principal
    rotation knows nothing of it, so its 4-dim prefix ranks poorly and f must learn it."""
    rng = np.random.default_rng(seed)
    corpus = rng.standard_normal((600, 32)).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((32, 4)))[0]
    queries = (rng.standard_normal((300, 4)) @ basis.T).astype(np.float32)
    queries += 0.05 * rng.standard_normal(queries.shape).astype(np.float32)
    return corpus, queries


def _config(**changes) -> TrainConfig:
    settings = dict(
        train_dims=[4, 8, 32],
        device="cpu",
        hidden=64,
        distill_topk=30,
        distill_random=16,
        distill_epochs=12,
        distill_lr=3e-3,
        distill_batch_size=64,
        patience=100,
        distill_held_out="choose",  # these tests are of the proxy's checkpoint choice
    )
    settings.update(changes)
    return TrainConfig(**settings)


def test_distill_beats_its_start_where_it_must():
    corpus, queries = _subspace_problem()
    result = train_distill(corpus, queries, _config())
    start, best = result.history[0], result.best
    assert best["epoch"] > 0
    assert best["held-out kl"]["4"] < 0.7 * start["held-out kl"]["4"]
    assert best["overlap@10"]["4"] > start["overlap@10"]["4"] + 0.03


def test_choice_never_ends_below_the_start():
    """Corpus-only anchors and a learning rate far too high: the proxy keeps the start."""
    corpus, _ = _subspace_problem()
    config = _config(distill_lr=0.3, distill_epochs=3)
    result = train_distill(corpus, None, config)
    assert result.best["score"] >= result.history[0]["score"]
    if result.best["epoch"] == 0:
        vectors = F.normalize(torch.from_numpy(corpus), dim=-1)
        start = new_adaptor_module(vectors, config).eval()
        with torch.no_grad():
            assert torch.allclose(result.module(vectors), start(vectors), atol=1e-6)


def test_student_negatives_join_the_candidates_once_and_skip_the_anchor():
    corpus, _ = _subspace_problem()
    vectors = F.normalize(torch.from_numpy(corpus), dim=-1)
    rows = torch.arange(20)
    objective = StudentNegativesObjective(
        vectors, vectors[rows], [4, 32], _config(), None, rows, mined_dims=[4, 8], count=15
    )
    generator = torch.Generator().manual_seed(0)
    batch = torch.arange(8)
    before = objective.candidates(batch, torch.Generator().manual_seed(0))
    objective.refresh(new_adaptor_module(vectors, _config()).eval())
    assert objective.mined is not None and objective.mined.shape == (20, 30)
    candidates, teacher, valid = objective.candidates(batch, generator)
    assert candidates.shape[1] == before[0].shape[1] + 30
    for i in range(len(batch)):
        kept = candidates[i][valid[i]].tolist()
        assert len(kept) == len(set(kept))  # no row twice
        assert int(rows[i]) not in kept  # never the anchor itself
        # the teacher scores a mined row by its full-size cosine
        j = int(valid[i].nonzero()[-1])
        expected = float(vectors[rows[i]] @ vectors[candidates[i, j]])
        assert float(teacher[i, j]) == pytest.approx(expected, abs=1e-5)
    # rows that the student ranks high at 4 dims but the teacher does not: some are new
    assert int(valid[:, before[0].shape[1] :].sum()) > 0


def test_student_negatives_train_and_size_weights_are_checked():
    corpus, queries = _subspace_problem()
    result = train_distill(corpus, queries, _config(distill_student_negatives=10))
    start, best = result.history[0], result.best
    assert best["held-out kl"]["4"] < 0.7 * start["held-out kl"]["4"]
    with pytest.raises(InputError, match="distill_size_weights has 2 weights for 3"):
        train_distill(corpus, queries, _config(distill_size_weights=[1.0, 2.0]))


# --- --query-ids --------------------------------------------------------------------------------
def test_read_query_ids_formats(tmp_path):
    beir = tmp_path / "train.tsv"
    beir.write_text("query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq1\td2\t0\r\nq2\td1\t1\r\n")
    assert read_query_ids(beir) == ["q1", "q2"]
    trec = tmp_path / "qrels.trec"
    trec.write_text("q3 0 d1 1\nq4 0 d2 1\n")
    assert read_query_ids(trec) == ["q3", "q4"]
    listed = tmp_path / "ids.txt"
    listed.write_text("\ufeffq5\n\nq6\nq5\n")
    assert read_query_ids(listed) == ["q5", "q6"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no query ids"),
        ("q1\td1\n", "ids.txt:1: 2 columns"),
        ("q1\td1\t1\nq2\n", "ids.txt:2: 1 columns, the first line has 3"),
        ("q1\n\xff\n", "ids.txt:2: not UTF-8"),
    ],
)
def test_read_query_ids_bad_input(tmp_path, content, message):
    path = tmp_path / "ids.txt"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(InputError, match=message):
        read_query_ids(path)


def test_missing_query_ids_file(tmp_path):
    with pytest.raises(InputError, match="no such query-ids file"):
        read_query_ids(tmp_path / "nope.txt")


def test_anchor_record_membership():
    record = anchor_record("queries", ["b", "a"], None)
    assert record["count"] == 2 and record["selected_by"] == "all of the 'queries' table"
    assert learned_overlap(record, ["a", "c"]) == 1
    assert learned_overlap(None, ["a"]) == 0


# --- through the command line -------------------------------------------------------------------
FIT = ("--train-dims", "4,8,16", "--epochs", "2", "--batch-size", "16", "--device", "cpu")


def test_fit_distill_with_query_ids_then_eval_warns_only_on_leaked_queries(tmp_path, capsys):
    store, qrels_path, _ = make_store(tmp_path)  # queries q0..q29, all judged
    train = tmp_path / "train.txt"
    train.write_text("".join(f"q{i}\n" for i in range(20)))
    code, out, err = run_cli(
        capsys, "fit", store, "--out", tmp_path / "ad", "--query-ids", train, *FIT
    )
    assert code == 0, err
    # all 20 count (the proxy's held-out ones shape the choice of checkpoint)
    assert "learned from 20 unlabelled queries (--query-ids" in " ".join(out.split())
    config = json.loads((tmp_path / "ad" / "config.json").read_text())
    assert config["objective"] == "distill"
    assert config["learned_from_queries"]["count"] == 20
    # --batch-size sets distill's own (anchors per step); the corpus batch keeps its default
    settings = config["hyperparameters"]
    assert settings["distill_batch_size"] == 16 and settings["batch_size"] == 128

    test = tmp_path / "test.tsv"
    test.write_text("".join(f"q{i}\td{i}\t1\n" for i in range(20, 30)))
    code, out, err = run_cli(
        capsys, "eval", store, "--qrels", test, "--adaptor", tmp_path / "ad", "--json"
    )
    assert code == 0, err
    assert "learned from" not in err + out

    code, out, err = run_cli(
        capsys, "eval", store, "--qrels", qrels_path, "--adaptor", tmp_path / "ad", "--json",
        "--report", tmp_path / "report",
    )  # fmt: skip
    assert code == 0, err
    assert "learned from 20 of the 30 evaluated queries" in " ".join(err.split())
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert any("learned from 20 of the 30 evaluated queries" in w for w in report["warnings"])
    assert "learned from 20 of the 30" in (tmp_path / "report" / "report.md").read_text()


def test_fit_query_ids_errors_are_one_line_exit_2(tmp_path, capsys):
    store, _, _ = make_store(tmp_path)
    code, _, err = run_cli(capsys, "fit", store, "--out", tmp_path / "ad", "--batch-size", "0")
    assert code == 2 and err.strip() == "error: --batch-size must be positive"
    bad = tmp_path / "bad.tsv"
    bad.write_text("q1\td1\t1\nq2\td1\n")
    code, _, err = run_cli(capsys, "fit", store, "--out", tmp_path / "ad", "--query-ids", bad)
    assert code == 2
    assert f"{bad}:2: 2 columns" in err and len(err.strip().splitlines()) == 1
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("nobody\n")
    code, _, err = run_cli(
        capsys, "fit", store, "--out", tmp_path / "ad", "--query-ids", unknown, *FIT
    )
    assert code == 2 and "is a query of table 'queries'" in err
    code, _, err = run_cli(
        capsys, "fit", store, "--out", tmp_path / "ad", "--objective", "paper", "--query-ids",
        unknown,
    )  # fmt: skip
    assert code == 2 and "--objective paper learns from the corpus only" in err
    assert not (tmp_path / "ad").exists()


def test_fit_without_query_ids_says_it_used_all_queries(tmp_path, capsys):
    store, _, _ = make_store(tmp_path)
    code, out, err = run_cli(capsys, "fit", store, "--out", tmp_path / "ad", *FIT)
    assert code == 0, err
    text = " ".join(out.split())
    assert "learned from 30 unlabelled queries (all of the 'queries' table)" in text
    assert "every one of them trained, for every epoch" in text
    assert "chosen without labels" not in text
    config = json.loads((tmp_path / "ad" / "config.json").read_text())
    assert config["held_out_queries"] == "none" and config["best_validation"] is None
    code, out, err = run_cli(
        capsys, "fit", store, "--out", tmp_path / "ad2", *FIT, "--held-out-queries", "choose"
    )
    assert code == 0, err
    text = " ".join(out.split())
    assert "chosen without labels by the distillation loss of held-out anchors" in text
    assert "every one of them trained" not in text


def test_distill_divergence_exits_2_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from madapt_cli.training import objectives

    def nan_loss(self, module, batch, generator):
        return module(self.anchors[batch]).sum() * float("nan")

    monkeypatch.setattr(objectives.DistillationObjective, "__call__", nan_loss)
    store, _, _ = make_store(tmp_path)
    code, _, err = run_cli(capsys, "fit", store, "--out", tmp_path / "ad", *FIT)
    assert code == 2 and "training diverged" in err and "stage 'distill'" in " ".join(err.split())
    assert not (tmp_path / "ad").exists()


def test_bad_distill_options_name_the_flag(tmp_path, capsys):
    store, _, _ = make_store(tmp_path)
    for flag, value in (("--lr", "0"), ("--tau", "nan"), ("--objective", "best")):
        code, _, err = run_cli(capsys, "fit", store, "--out", tmp_path / "ad", flag, value)
        assert code == 2 and flag.lstrip("-") in err, err
