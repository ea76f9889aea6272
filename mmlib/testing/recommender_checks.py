"""The common checks every registered recommender must pass (as `sklearn.utils.estimator_checks`).

    from mmlib.testing import check_recommender
    for check_name, check in check_recommender("FREEDOM"):
        check()  # raises AssertionError (or unittest.SkipTest) naming what is wrong

`check_recommender(name)` yields `(check_name, check)` pairs chosen by the model's declared traits
(`sampling` in {"bpr", "positive", "none"}, `modalities_needed` in {"none", "any"}). Every model is
built with its paper defaults (`cls.Params()`) on `tiny_train_data()` (50 users, 30 items, a 12-d
visual and a 7-d textual feature matrix), on CPU, one thread. tests/test_common_checks.py runs
every check on every registered model, so a new model is checked by registering it.

The checks (all models unless a trait is named):
- check_scores_shape_and_finite: (users, n_items) finite floating-point scores.
- check_subset_scores_equal_full_rows: scoring without the evaluation cache gives exactly the
  cached full scoring; scoring a subset of users (unsorted, one repeated), or all users in blocks,
  gives the same rows as one full scoring within SUBSET_RTOL (1e-5) of the largest score: the last
  step of most models is one (users x d) @ (d x items) product, whose CPU BLAS kernel (hence
  summation order) depends on the number of rows, so bits may differ, never more (measured: at
  most 6.2e-7 relative, GRCN; exactly 0 for MostPop, ItemKNN, ItemKNN-CBF). The trainer scores in
  blocks of `eval_chunk` users: a user's scores must not depend on who is scored with it.
- check_training_items_not_masked_by_the_model: masking training items is the evaluator's job;
  the model's scores at training positions are finite and not one sentinel value.
- check_to_device_moves_everything: after `model.to(torch.device("meta"))` every parameter and
  buffer is on `meta`, and no tensor is held as a plain (unregistered) attribute anywhere in the
  module tree (every submodule's `vars()`, including lists, dicts and plain objects in them,
  e.g. the evaluation cache). Lazily built state (a training step, an epoch hook, an evaluation
  pass) is created before the move, so that it is scanned too.
- check_cuda_scores_and_loss_match_cpu: skipped without CUDA; else `.to("cuda")` scores equal the
  CPU scores within 1e-4 and come back on CUDA, and a training loss on CUDA is finite with
  every gradient on CUDA.
- check_seeded_fits_are_bit_identical: two `mmlib.train.fit` runs with the same seed (2 epochs,
  validation every epoch, 1 thread) give identical state dicts and validation curves.
- check_state_dict_round_trip: state_dict -> torch.save (BytesIO) -> torch.load(weights_only)
  -> a fresh model built with another seed -> identical scores.
- check_every_parameter_gets_a_gradient (sampling != "none"): one loss on a tiny batch is a finite
  scalar and gives every trainable parameter a finite, not all-zero gradient.
- check_training_loss_falls (sampling == "bpr"): 20 epochs of Adam (lr 0.01, batch 64) on the
  tiny data: every loss finite, the last epoch's total below 0.8 x the first's.
- check_missing_modality_is_a_clear_error (modalities_needed == "any"): without features, or
  asking for an absent modality, construction raises an MmlibError naming the model / modality.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import unittest
from collections.abc import Callable, Iterator

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from mmlib.errors import MmlibError
from mmlib.registry import MODELS
from mmlib.testing.builders import tiny_train_data

# unsorted, with a repeated user: a subset is any index vector, not a slice
SUBSET = torch.tensor([41, 3, 17, 3, 0, 49, 22])
BLOCK = 16  # users per block when scoring everyone in blocks (50 users: 16 + 16 + 16 + 2)
# |subset or block scores - full scores| <= SUBSET_RTOL * max(1, max |score|): about 80 float32 ulps
# of the largest score. Measured on the tiny data: 0 for MostPop, ItemKNN, ItemKNN-CBF (no float
# product across users), at most 6.2e-7 of the largest score for the others (GRCN).
SUBSET_RTOL = 1e-5


# -- helpers ---------------------------------------------------------------------------------------


def build(name: str, data, seed: int = 0, **params):
    """`name` with its default hyper-parameters (or `params`) on `data`, seeded."""
    from mmlib.train import seed_everything

    seed_everything(seed)
    cls = MODELS.get(name)
    return cls(cls.Params(**params), data)


def trainable(cls) -> bool:
    return cls.sampling != "none"


def a_batch(data, cls, size: int = 64, seed: int = 0):
    """The first batch of a seeded epoch, with negatives only for `sampling == "bpr"` models."""
    from mmlib.train import UniformSampler

    sampler = UniformSampler(data.train, torch.Generator().manual_seed(seed))
    return next(sampler.epoch(size, with_negatives=cls.sampling == "bpr"))


def training_step(model, data, epoch: int = 1, seed: int = 0) -> torch.Tensor:
    """The per-epoch hook, one loss on a tiny batch, backward and one Adam step (lr 0.01); the loss."""
    model.train()
    model.on_epoch_start(epoch)
    loss = model.loss(a_batch(data, type(model), seed=seed))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


def prepared(name: str, data, seed: int = 0):
    """A model after one training step (when it trains), in eval mode: its state is not its init."""
    model = build(name, data, seed)
    if trainable(type(model)):
        training_step(model, data)
    return model.eval()


def full_scores(model, n_users: int) -> torch.Tensor:
    """Every user's scores in one call, through the evaluation cache as the trainer scores."""
    model.eval()
    with torch.inference_mode():
        model.on_evaluation_start()
        return model.score(torch.arange(n_users, device=model_device(model))).clone()


def model_device(model: nn.Module) -> torch.device:
    """Where the trainer puts the users it scores: the device of the first parameter or buffer."""
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    return torch.device("cpu") if tensor is None else tensor.device


class _Found:
    def __init__(self):
        self.tensors: list[str] = []  # "path (what, device)" of every plain tensor
        self.modules: list[tuple[str, nn.Module]] = []  # unregistered modules held in plain attributes


_SKIP_KEYS = {"_parameters", "_buffers", "_modules"}  # registered: moved by Module.to


def plain_tensors(model: nn.Module) -> tuple[list[str], list[tuple[str, nn.Module]]]:
    """Tensors held as plain attributes anywhere in the module tree (in every submodule's `vars()`,
    looking inside lists, tuples, sets, dicts and plain objects), and modules held that way
    (not registered: `Module.to` does not reach them unless their owner moves them itself)."""
    found, seen = _Found(), set()

    def visit(obj, path: str, depth: int) -> None:
        if isinstance(obj, torch.Tensor):
            found.tensors.append(f"{path} ({type(obj).__name__} {tuple(obj.shape)} on {obj.device})")
            return
        if id(obj) in seen or depth > 6 or isinstance(obj, (str, bytes, int, float, bool, type(None))):
            return
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            found.modules.append((path, obj))
            scan(obj, path)
        elif isinstance(obj, dict):
            for key, value in obj.items():
                visit(value, f"{path}[{key!r}]", depth + 1)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            for index, value in enumerate(obj):
                visit(value, f"{path}[{index}]", depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type) and not callable(obj) \
                and type(obj).__module__.split(".")[0] not in ("scipy", "numpy"):
            for key, value in vars(obj).items():
                visit(value, f"{path}.{key}", depth + 1)

    def scan(module: nn.Module, prefix: str) -> None:
        for sub_name, sub in module.named_modules():
            seen.add(id(sub))
            where = f"{prefix}.{sub_name}" if sub_name else prefix
            for key, value in vars(sub).items():
                if key not in _SKIP_KEYS:
                    visit(value, f"{where}.{key}", 0)

    seen.update(id(sub) for sub in model.modules())  # registered: not "held as a plain attribute"
    scan(model, type(model).__name__)
    return found.tensors, found.modules


def _fmt(items: list[str]) -> str:
    return "\n  ".join(items)


# -- the checks ------------------------------------------------------------------------------------


def check_scores_shape_and_finite(name: str) -> None:
    data = tiny_train_data()
    model = build(name, data).eval()
    with torch.inference_mode():
        model.on_evaluation_start()
        scores = model.score(torch.arange(7))
    assert scores.shape == (7, data.n_items), f"{name}: score(7 users) has shape {tuple(scores.shape)}"
    assert scores.is_floating_point(), f"{name}: scores have dtype {scores.dtype}, expected floating point"
    assert torch.isfinite(scores).all(), f"{name}: scores hold {int((~torch.isfinite(scores)).sum())} non-finite values"


def check_subset_scores_equal_full_rows(name: str) -> None:
    data = tiny_train_data()
    model = prepared(name, data)
    everyone = torch.arange(data.n_users)
    with torch.inference_mode():
        model.on_evaluation_start()
        full = model.score(everyone).clone()
        subset = model.score(SUBSET)
        blocks = torch.cat([model.score(everyone[s:s + BLOCK]) for s in range(0, data.n_users, BLOCK)])
    model.eval()  # drops the evaluation cache: scores recomputed from the parameters
    with torch.inference_mode():
        fresh = model.score(everyone)
    assert torch.equal(fresh, full), \
        f"{name}: scores without the evaluation cache (on_evaluation_start) differ from the cached ones " \
        f"(max |diff| {(fresh - full).abs().max().item():.3g})"
    # Same math, not always the same bits: the last step of most models is one (users x d) @ (d x items)
    # product, and CPU BLAS picks its kernel, hence its summation order, by the number of rows.
    tolerance = SUBSET_RTOL * max(1.0, full.abs().max().item())
    for what, got, want in ((f"users {SUBSET.tolist()}", subset, full[SUBSET]),
                            (f"all users in blocks of {BLOCK}", blocks, full)):
        assert got.shape == want.shape, f"{name}: scores of {what} have shape {tuple(got.shape)}"
        gap = (got - want).abs().max().item()
        assert gap <= tolerance, \
            f"{name}: scores of {what} differ from the same rows of one full scoring by up to {gap:.3g} " \
            f"(allowed {tolerance:.3g}: float32 summation order); a user's scores must not depend on " \
            "which other users are scored with it"


def check_training_items_not_masked_by_the_model(name: str) -> None:
    data = tiny_train_data()
    model = prepared(name, data)
    scores = full_scores(model, data.n_users)
    train = sp.csr_matrix(data.train)
    rows, cols = train.nonzero()
    at_train = scores[torch.as_tensor(rows), torch.as_tensor(cols)]
    assert torch.isfinite(at_train).all(), \
        f"{name}: {int((~torch.isfinite(at_train)).sum())} of {len(at_train)} scores at training " \
        f"positions are not finite (values {at_train[~torch.isfinite(at_train)].unique().tolist()}): " \
        "masking training items is the evaluator's job (mmlib.evaluate.full_ranking), not the model's"
    values = at_train.unique()
    assert len(values) > 1, \
        f"{name}: every score at a training position is {values.tolist()}: a sentinel. Masking " \
        "training items is the evaluator's job (mmlib.evaluate.full_ranking), not the model's"


def check_to_device_moves_everything(name: str) -> None:
    data = tiny_train_data()
    model = prepared(name, data)
    full_scores(model, data.n_users)  # creates the evaluation cache, if the model has one
    meta = torch.device("meta")
    problems = []
    try:
        model.to(meta)
    except Exception as error:  # noqa: BLE001  (reported with what else is wrong)
        problems.append(f"model.to(meta) raised {type(error).__name__}: {str(error)[:200]}")
    stayed = [f"{n} ({'parameter' if isinstance(t, nn.Parameter) else 'buffer'} on {t.device})"
              for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device != meta]
    tensors, modules = plain_tensors(model)
    for path, module in modules:
        stayed += [f"{path}.{n} (on {t.device}; the module is held as a plain attribute)"
                   for n, t in [*module.named_parameters(), *module.named_buffers()] if t.device != meta]
    if stayed:
        problems.append(f"not moved by model.to(meta):\n  {_fmt(stayed)}")
    if tensors:
        problems.append("tensors held as plain attributes (register them as buffers, non-persistent if "
                        f"they are derived from the data, or drop caches in `_apply`):\n  {_fmt(tensors)}")
    assert not problems, f"{name}: " + "\n".join(problems)


def scores_and_loss_on_device_match_cpu(name: str, device: torch.device | str) -> None:
    """Build on CPU, train one step, `.to(device)`: scores equal the CPU ones within 1e-4 and come
    back on `device`; a training loss there is finite and every gradient lands on `device`."""
    device = torch.device(device)
    data = tiny_train_data()
    model = prepared(name, data)
    cpu = full_scores(model, data.n_users)
    model.to(device)
    holds_tensors = any(True for _ in [*model.parameters(), *model.buffers()])
    scores = full_scores(model, data.n_users)
    if holds_tensors:  # a model without tensors (ItemKNN: scipy matrices) scores where it was built
        assert scores.device.type == device.type, f"{name}: after .to({device}) scores come back on {scores.device}"
    torch.testing.assert_close(scores.cpu(), cpu, atol=1e-4, rtol=1e-4,
                               msg=lambda m: f"{name}: scores on {device} differ from CPU scores: {m}")
    if trainable(type(model)):
        model.train()
        model.on_epoch_start(2)
        batch = a_batch(data, type(model), seed=1)
        batch = type(batch)(*(None if t is None else t.to(device) for t in (batch.users, batch.pos, batch.neg)))
        loss = model.loss(batch)
        assert torch.isfinite(loss), f"{name}: loss on {device} is {loss.item()}"
        loss.backward()
        elsewhere = [n for n, p in model.named_parameters()
                     if p.grad is not None and p.grad.device.type != device.type]
        assert not elsewhere, f"{name}: gradients not on {device}: {elsewhere}"


def check_cuda_scores_and_loss_match_cpu(name: str) -> None:
    if not torch.cuda.is_available():
        raise unittest.SkipTest("no CUDA device here")
    scores_and_loss_on_device_match_cpu(name, "cuda")


def _same(a, b) -> bool:
    """Equality that holds for NaN (the loss of a model that does not train) and nested values."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def tiny_validation(data, seed: int = 1) -> sp.csr_matrix:
    """One held-out item per user, never one of its training items (seeded)."""
    rng = np.random.default_rng(seed)
    train = sp.csr_matrix(data.train)
    items = []
    for u in range(data.n_users):
        unseen = np.setdiff1d(np.arange(data.n_items), train.indices[train.indptr[u]:train.indptr[u + 1]])
        items.append(rng.choice(unseen))
    return sp.csr_matrix((np.ones(data.n_users, np.float32), (np.arange(data.n_users), items)),
                         shape=(data.n_users, data.n_items))


def check_seeded_fits_are_bit_identical(name: str) -> None:
    from mmlib.train import TrainSpec, fit

    data = tiny_train_data()
    val = tiny_validation(data)
    cls = MODELS.get(name)
    spec = TrainSpec(epochs=2, batch_size=64, eval_every=1, cutoffs=[20], seed=3, threads=1)
    threads = torch.get_num_threads()
    try:
        first = fit(cls, cls.Params(), spec, data, val)
        second = fit(cls, cls.Params(), spec, data, val)
    finally:
        torch.set_num_threads(threads)
    assert first.status == second.status == "ok", f"{name}: fits ended {first.status!r} / {second.status!r}"
    assert _same(first.curve, second.curve), \
        f"{name}: two seeded fits give different validation curves:\n  {first.curve}\n  {second.curve}"
    assert first.best_epoch == second.best_epoch and _same(first.best_score, second.best_score), \
        f"{name}: selected epoch {first.best_epoch} vs {second.best_epoch}"
    assert first.state is not None and second.state is not None, f"{name}: a fit kept no state"
    assert first.state.keys() == second.state.keys(), f"{name}: state dicts with different keys"
    differ = [k for k in first.state if not (first.state[k].dtype == second.state[k].dtype
                                             and torch.equal(first.state[k], second.state[k]))]
    assert not differ, f"{name}: two seeded fits differ in {differ}"


def check_state_dict_round_trip(name: str) -> None:
    data = tiny_train_data()
    model = prepared(name, data)
    before = full_scores(model, data.n_users)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = build(name, data, seed=99).eval()
    if any(True for _ in fresh.parameters()):  # else the check below would hold trivially
        assert not torch.equal(full_scores(fresh, data.n_users), before), \
            f"{name}: a model built with another seed scores exactly as the trained one"
    state = torch.load(buffer, weights_only=True)
    fresh.load_state_dict(state)
    after = full_scores(fresh, data.n_users)
    assert torch.equal(after, before), \
        f"{name}: scores after state_dict -> torch.save -> torch.load -> load_state_dict into a fresh " \
        f"model differ (max |diff| {(after - before).abs().max().item():.3g}): some state that scoring " \
        "reads is not in the state dict"


def check_every_parameter_gets_a_gradient(name: str) -> None:
    data = tiny_train_data()
    model = build(name, data)
    model.train()
    model.on_epoch_start(1)
    loss = model.loss(a_batch(data, type(model)))
    assert loss.dim() == 0, f"{name}: loss has shape {tuple(loss.shape)}, expected a scalar"
    assert torch.isfinite(loss), f"{name}: loss {loss.item()} on a tiny batch"
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert not (missing or bad or zero), \
        f"{name}: after one loss on a batch of 64: no gradient for {missing}, non-finite gradient for " \
        f"{bad}, all-zero gradient for {zero}"


def check_training_loss_falls(name: str) -> None:
    from mmlib.train import UniformSampler

    data = tiny_train_data()
    model = build(name, data)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    sampler = UniformSampler(data.train, torch.Generator().manual_seed(0))
    losses = []
    for epoch in range(1, 21):
        model.train()
        model.on_epoch_start(epoch)
        total = 0.0
        for batch in sampler.epoch(64):
            loss = model.loss(batch)
            assert torch.isfinite(loss), f"{name}: loss {loss.item()} at epoch {epoch}"
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(total)
    assert losses[-1] < 0.8 * losses[0], f"{name}: epoch losses {[round(x, 4) for x in losses]}"


def check_missing_modality_is_a_clear_error(name: str) -> None:
    cls = MODELS.get(name)
    try:
        build(name, tiny_train_data(with_features=False))
    except MmlibError as error:
        assert f"Model {name} needs item features" in str(error), f"{name}: unclear error {error}"
    else:
        raise AssertionError(f"{name}: built without any features (modalities_needed = 'any')")
    if "modalities" in {f.name for f in dataclasses.fields(cls.Params)}:
        try:
            cls(cls.Params(modalities=["audio"]), tiny_train_data())
        except MmlibError as error:
            assert "audio" in str(error), f"{name}: error does not name the absent modality: {error}"
        else:
            raise AssertionError(f"{name}: built with modalities=['audio'] that the features lack")


# (name, check, applies to the model class)
CHECKS: list[tuple[str, Callable[[str], None], Callable[[type], bool]]] = [
    ("check_scores_shape_and_finite", check_scores_shape_and_finite, lambda cls: True),
    ("check_subset_scores_equal_full_rows", check_subset_scores_equal_full_rows, lambda cls: True),
    ("check_training_items_not_masked_by_the_model", check_training_items_not_masked_by_the_model,
     lambda cls: True),
    ("check_to_device_moves_everything", check_to_device_moves_everything, lambda cls: True),
    ("check_cuda_scores_and_loss_match_cpu", check_cuda_scores_and_loss_match_cpu, lambda cls: True),
    ("check_seeded_fits_are_bit_identical", check_seeded_fits_are_bit_identical, lambda cls: True),
    ("check_state_dict_round_trip", check_state_dict_round_trip, lambda cls: True),
    ("check_every_parameter_gets_a_gradient", check_every_parameter_gets_a_gradient, trainable),
    ("check_training_loss_falls", check_training_loss_falls, lambda cls: cls.sampling == "bpr"),
    ("check_missing_modality_is_a_clear_error", check_missing_modality_is_a_clear_error,
     lambda cls: cls.modalities_needed == "any"),
]


def check_recommender(name: str) -> Iterator[tuple[str, Callable[[], None]]]:
    """The checks that apply to the registered recommender `name`, as (check name, callable)."""
    cls = MODELS.get(name)
    traits = (cls.sampling, cls.modalities_needed)
    if cls.sampling not in ("bpr", "positive", "none") or cls.modalities_needed not in ("none", "any"):
        raise MmlibError(f"Model {name}: unknown traits sampling={traits[0]!r}, modalities_needed="
                         f"{traits[1]!r}; expected sampling in bpr/positive/none and modalities_needed "
                         "in none/any.")
    for check_name, check, applies in CHECKS:
        if applies(cls):
            yield check_name, functools.partial(check, name)
