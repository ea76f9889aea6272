"""The trainer: sampling, divergence handling, selection on validation only, determinism."""

import numpy as np
import pytest
import torch

from mmlib import train as trainer
from mmlib.errors import MmlibError
from mmlib.models.base import TrainData
from mmlib.models.bprmf import BPRMF
from mmlib.registry import MODELS
from mmlib.train import TrainSpec, UniformSampler, fit, train_and_select
from tests.conftest import random_interactions


def test_sampler_covers_each_interaction_once_and_never_samples_a_positive(tiny_matrix):
    sampler = UniformSampler(tiny_matrix, torch.Generator().manual_seed(0))
    batches = list(sampler.epoch(batch_size=7))
    users = np.array(torch.cat([b.users for b in batches]).tolist())
    pos = np.array(torch.cat([b.pos for b in batches]).tolist())
    neg = np.array(torch.cat([b.neg for b in batches]).tolist())
    seen = sorted(zip(users.tolist(), pos.tolist()))
    coo = tiny_matrix.tocoo()
    assert seen == sorted(zip(coo.row.tolist(), coo.col.tolist()))
    assert tiny_matrix[users, pos].A1.all()
    assert not tiny_matrix[users, neg].A1.any()  # every negative is an unseen item


def _data(seed=0):
    train = random_interactions(seed=seed)
    val = random_interactions(seed=seed + 1) - train.multiply(random_interactions(seed=seed + 1))
    val.eliminate_zeros()
    return TrainData(n_users=train.shape[0], n_items=train.shape[1], train=train), val


def test_same_seed_gives_identical_scores():
    data, val = _data()
    spec = TrainSpec(epochs=3, batch_size=64, eval_every=1, seed=7, cutoffs=[20])
    runs = [fit(BPRMF, BPRMF.Params(factors=8), spec, data, val) for _ in range(2)]
    for key in runs[0].state:
        assert torch.equal(runs[0].state[key], runs[1].state[key])
    assert [c["Recall@20"] for c in runs[0].curve] == [c["Recall@20"] for c in runs[1].curve]


@pytest.mark.parametrize("name", ["GRCN", "MMGCN"])
def test_two_threads_train_bit_identically(name, monkeypatch):
    """With 2 intra-op threads these graphs' scatter reductions are large enough to be split
    across threads; training must still be bit-reproducible (trainer.deterministic_algorithms)."""
    train = random_interactions(n_users=1500, n_items=600, per_user=12, seed=5)
    gen = torch.Generator().manual_seed(0)
    features = {"visual": torch.rand(600, 64, generator=gen), "textual": torch.rand(600, 32, generator=gen)}
    data = TrainData(n_users=1500, n_items=600, train=train, features=features,
                     masks={m: torch.ones(600, dtype=torch.bool) for m in features})
    spec = TrainSpec(epochs=1, batch_size=2048, eval_every=1, cutoffs=[20], threads=2)
    cls = MODELS.get(name)
    try:
        runs = [fit(cls, cls.Params(), spec, data, train) for _ in range(2)]
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest)
    for key in runs[0].state:
        assert torch.equal(runs[0].state[key], runs[1].state[key]), key


class ExplodingBPRMF(BPRMF):
    """Diverges (NaN loss) when l_w is 0.5."""

    def loss(self, batch):
        value = super().loss(batch)
        return value * float("nan") if self.params.l_w == 0.5 else value


def test_diverged_configuration_is_recorded_and_grid_continues(monkeypatch):
    monkeypatch.setitem(MODELS._entries, "ExplodingBPRMF", ExplodingBPRMF)
    data, val = _data()
    spec = TrainSpec(epochs=2, batch_size=64, eval_every=1, cutoffs=[20])
    grid = [{"l_w": 0.5, "factors": 8}, {"l_w": 1e-5, "factors": 8}]
    run = train_and_select("ExplodingBPRMF", grid, spec, data, val, val)
    assert run.trials[0].status.startswith("diverged: loss nan at epoch 1")
    assert run.trials[1].status == "ok"
    assert run.selected == 1
    with pytest.raises(MmlibError, match="Every configuration of ExplodingBPRMF failed"):
        train_and_select("ExplodingBPRMF", grid[:1], spec, data, val, val)


def test_selection_reads_validation_only_and_test_once(monkeypatch):
    data, val = _data()
    _, test = _data(seed=5)
    calls = []
    real = trainer.full_ranking

    def recording(score_fn, train, heldout, **kw):
        calls.append("test" if heldout is test else "val")
        return real(score_fn, train, heldout, **kw)

    monkeypatch.setattr(trainer, "full_ranking", recording)
    spec = TrainSpec(epochs=4, batch_size=64, eval_every=2, cutoffs=[20])
    grid = [{"lr": lr, "factors": 8} for lr in (1e-4, 1e-2, 5e-2)]
    run = train_and_select("BPRMF", grid, spec, data, val, test)
    assert calls.count("test") == 1 and calls[-1] == "test"
    scores = [t.best_score for t in run.trials]
    assert run.selected == int(np.argmax(scores))
    assert run.best.best_epoch in (2, 4)


def test_early_stopping_stops_after_patience_validations():
    data, val = _data()
    spec = TrainSpec(epochs=200, batch_size=64, eval_every=1, patience=3, lr=0.0, cutoffs=[20])
    result = fit(BPRMF, BPRMF.Params(factors=8), spec, data, val)  # lr 0: nothing ever improves
    assert [c["epoch"] for c in result.curve] == [1, 2, 3, 4]
    assert result.best_epoch == 1


def test_unknown_grid_key_names_model_and_key():
    data, val = _data()
    with pytest.raises(MmlibError, match=r"models\.BPRMF: unknown key 'factor'\. Did you mean 'factors'"):
        train_and_select("BPRMF", [{"factor": 16}], TrainSpec(), data, val, val)


def test_checkpointed_grid_resumes_without_retraining_finished_trials(tmp_path, monkeypatch):
    data, val = _data()
    _, test = _data(seed=5)
    spec = TrainSpec(epochs=4, batch_size=64, eval_every=2, cutoffs=[20])
    grid = [{"lr": lr, "factors": 8} for lr in (1e-3, 1e-2)]
    store = trainer.TrialCheckpoints(tmp_path, inputs="data-v1")
    # an interrupted search: only the second point finished before
    first = train_and_select("BPRMF", grid[1:], spec, data, val, test, checkpoints=store)
    trained = []
    real_fit = trainer.fit
    monkeypatch.setattr(trainer, "fit", lambda *a, **kw: trained.append(a[2].lr) or real_fit(*a, **kw))
    resumed = train_and_select("BPRMF", grid, spec, data, val, test, checkpoints=store)
    assert trained == [1e-3]  # only the missing point
    again = resumed.trials[1]
    assert again.config == first.trials[0].config and again.curve == first.trials[0].curve
    assert all(torch.equal(again.state[k], first.trials[0].state[k]) for k in again.state)
    fresh = train_and_select("BPRMF", grid, spec, data, val, test)
    assert [t.best_score for t in resumed.trials] == [t.best_score for t in fresh.trials]
    assert resumed.test.mean() == fresh.test.mean()
    # other inputs are another key; a corrupt file is retrained, not trusted
    assert len(list(tmp_path.glob("BPRMF-*.pt"))) == 2
    other = trainer.TrialCheckpoints(tmp_path, inputs="data-v2")
    assert other.path("BPRMF", *trainer.split_config(BPRMF, grid[0], spec, "t")) not in set(tmp_path.glob("*.pt"))
    victim = store.path("BPRMF", *trainer.split_config(BPRMF, grid[0], spec, "t"))
    victim.write_bytes(b"not a checkpoint")
    trained.clear()
    train_and_select("BPRMF", grid, spec, data, val, test, checkpoints=store)
    assert trained == [1e-3]
