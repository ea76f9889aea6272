"""The common contract every registered recommender passes (in the spirit of check_estimator)."""

import io

import pytest
import torch

import mmlib.models  # noqa: F401  (fills the registry)
from mmlib.errors import MmlibError
from mmlib.models.base import TrainData
from mmlib.registry import MODELS
from mmlib.train import TrainSpec, UniformSampler, fit, seed_everything
from tests.conftest import random_interactions


def tiny_data(with_features=True) -> TrainData:
    train = random_interactions(n_users=50, n_items=30, per_user=5)
    gen = torch.Generator().manual_seed(0)
    features = {"visual": torch.rand(30, 12, generator=gen), "textual": torch.rand(30, 7, generator=gen)} \
        if with_features else {}
    masks = {m: torch.ones(30, dtype=torch.bool) for m in features}
    return TrainData(n_users=50, n_items=30, train=train, features=features, masks=masks)


def build(name, data, seed=0):
    seed_everything(seed)
    cls = MODELS.get(name)
    return cls(cls.Params(), data)


@pytest.mark.parametrize("name", MODELS.names())
def test_scores_have_users_by_items_shape_and_are_finite(name):
    model = build(name, tiny_data())
    scores = model.score(torch.arange(7))
    assert scores.shape == (7, 30)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", [n for n in MODELS.names() if MODELS.get(n).sampling == "bpr"])
def test_training_loss_falls_and_stays_finite(name):
    data = tiny_data()
    model = build(name, data)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    sampler = UniformSampler(data.train, torch.Generator().manual_seed(0))
    losses = []
    for _ in range(20):
        total = 0.0
        for batch in sampler.epoch(64):
            loss = model.loss(batch)
            assert torch.isfinite(loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(total)
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("name", MODELS.names())
def test_same_seed_same_scores_and_save_load_round_trip(name):
    data = tiny_data()
    spec = TrainSpec(epochs=2, batch_size=64, eval_every=1, cutoffs=[20], seed=3)
    cls = MODELS.get(name)
    first = fit(cls, cls.Params(), spec, data, data.train)
    second = fit(cls, cls.Params(), spec, data, data.train)
    users = torch.arange(50)
    a, b = build(name, data), build(name, data)
    a.load_state_dict(first.state)
    b.load_state_dict(second.state)
    assert torch.equal(a.score(users), b.score(users))
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    c = build(name, data, seed=99)
    c.load_state_dict(torch.load(buffer))
    assert torch.equal(a.score(users), c.score(users))


@pytest.mark.parametrize("name", [n for n in MODELS.names() if MODELS.get(n).modalities_needed != "none"])
def test_missing_modality_is_a_clear_error(name):
    with pytest.raises(MmlibError, match=f"Model {name} needs item features"):
        build(name, tiny_data(with_features=False))
    cls = MODELS.get(name)
    with pytest.raises(MmlibError, match="audio"):
        cls(cls.Params(modalities=["audio"]), tiny_data())


def test_vbpr_uses_one_modality_or_both():
    data = tiny_data()
    cls = MODELS.get("VBPR")
    assert cls(cls.Params(modalities=["textual"]), data).content.shape == (30, 7)
    assert cls(cls.Params(), data).content.shape == (30, 19)


def test_mostpop_ranks_by_training_popularity():
    data = tiny_data()
    scores = build("MostPop", data).score(torch.tensor([0, 1]))
    popularity = torch.as_tensor(data.train.sum(axis=0).A1, dtype=torch.float32)
    assert torch.equal(scores[0], popularity) and torch.equal(scores[1], popularity)
