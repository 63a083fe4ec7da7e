"""`madapt fit --sample N`: a uniform, reproducible sample of the corpus, recorded."""

from __future__ import annotations

import numpy as np
import pytest
from test_apply import make_store
from test_bad_inputs import write_store
from typer.testing import CliRunner

from madapt_cli.cli import app
from madapt_cli.methods.adaptor import Adaptor
from madapt_cli.pipelines.sample import SampledStore, sample_ids
from madapt_cli.store.base import open_store


def test_the_sample_is_uniform_reproducible_and_independent_of_order():
    ids = [f"doc-{i}" for i in range(20_000)]
    first, total = sample_ids([ids[:7000], ids[7000:]], 1000, seed=3)
    shuffled = list(np.random.default_rng(0).permutation(ids))
    again, _ = sample_ids([shuffled[i : i + 999] for i in range(0, 20_000, 999)], 1000, seed=3)
    assert total == 20_000 and len(first) == 1000 == len(set(first))
    assert set(first) == set(again)  # the same rows, whatever the order or batching
    other, _ = sample_ids([ids], 1000, seed=4)
    assert len(set(first) & set(other)) < 200  # another seed, another sample (~50 expected)
    # uniform: each tenth of the ids holds about a tenth of the sample
    counts = np.bincount([int(i.split("-")[1]) // 2000 for i in first], minlength=10)
    assert counts.min() > 60 and counts.max() < 140, counts
    everything, _ = sample_ids([ids[:10]], 1000, seed=3)
    assert sorted(everything) == sorted(ids[:10])


def test_a_sampled_store_shows_only_the_sample(tmp_path):
    written = make_store(tmp_path / "s", {"corpus": 300, "queries": 7}, parts=3)
    store = open_store(tmp_path / "s")
    keep = set(written["corpus"][0][::3])
    view = SampledStore(store, keep)
    ids, vectors = view.read_vectors("corpus")
    assert set(ids) == keep and view.num_rows("corpus") == 100
    expected = written["corpus"][1][[int(i.split("-")[1]) for i in ids]]
    np.testing.assert_array_equal(vectors, expected)
    assert view.read_ids("queries") == written["queries"][0]  # other tables untouched
    assert view.metadata("corpus") == store.metadata("corpus")


def test_fit_sample_trains_on_the_sample_and_records_it(tmp_path):
    store = write_store(tmp_path / "store")
    qrels = tmp_path / "train.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq0\td5\t1\nq1\td7\t1\n")
    args = ["fit", str(tmp_path / "store"), "--method", "pca", "--sample", "20", "--seed", "1"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    config = Adaptor.load(tmp_path / "a").config
    assert config["training_rows"] == 20
    sample = config["sample"]
    assert (sample["rows"], sample["seed"], sample["judged_added"]) == (20, 1, 0)
    assert sample["corpus_rows"] == open_store(store).num_rows("corpus")
    again = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert again.exit_code == 0, again.output
    assert Adaptor.load(tmp_path / "b").config["sample"] == sample  # reproducible
    full = CliRunner().invoke(app, [*args[:-4], "--out", str(tmp_path / "c")])
    assert full.exit_code == 0 and "sample" not in Adaptor.load(tmp_path / "c").config
    assert Adaptor.load(tmp_path / "c").config["training_rows"] > 20


@pytest.mark.parametrize("rows", ["1", "0", "-5"])
def test_a_sample_under_two_rows_is_refused(tmp_path, rows):
    write_store(tmp_path / "store")
    args = ["fit", str(tmp_path / "store"), "--method", "pca", "--out", str(tmp_path / "a")]
    result = CliRunner().invoke(app, [*args, "--sample", rows])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: --sample {rows}: must be at least 2 rows"
    assert not (tmp_path / "a").exists()


def test_the_judged_documents_join_the_sample(tmp_path):
    from types import SimpleNamespace

    from madapt_cli.pipelines.sample import sample_corpus

    written = make_store(tmp_path / "s", {"corpus": 500})
    data = SimpleNamespace(
        store=open_store(tmp_path / "s"),
        qrels={"q0": {"corpus-1": 1, "corpus-2": 1, "not-in-corpus": 1}},
        dev_qrels={"q1": {"corpus-3": 1}},
    )
    record = sample_corpus(data, 10, seed=0)
    ids = set(data.store.read_ids("corpus"))
    assert {"corpus-1", "corpus-2", "corpus-3"} <= ids and ids <= set(written["corpus"][0])
    assert record["rows"] == 10 and len(ids) == 10 + record["judged_added"]
    assert record["judged_added"] == len(
        {"corpus-1", "corpus-2", "corpus-3"} - set(sample_ids([written["corpus"][0]], 10, 0)[0])
    )
