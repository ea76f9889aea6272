"""The one training loop: uniform negative sampling, Adam, periodic validation, selection of epoch
and configuration on validation only, test read once at the very end.

Two named protocols fix what differs between the paper (Elliot) and most multimodal papers (MMRec).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from mmlib.errors import MmlibError
from mmlib.evaluate import Evaluation, full_ranking
from mmlib.models.base import Batch, Recommender, TrainData
from mmlib.progress import tqdm
from mmlib.protocol import (  # noqa: F401
    PROTOCOLS,
    TrainSpec,
    parse_metric,
    protocol_spec,
    split_config,
)
from mmlib.registry import MODELS
from mmlib.storage import torch_save_atomic

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MmlibError(f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'.")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class UniformSampler:
    """Each epoch: every training interaction once, in random order, with one negative drawn
    uniformly from the items the user has not interacted with (rejection, vectorised)."""

    def __init__(self, train: sp.csr_matrix, generator: torch.Generator):
        coo = train.tocoo()
        self.n_items = train.shape[1]
        self.users = torch.as_tensor(coo.row, dtype=torch.long)
        self.items = torch.as_tensor(coo.col, dtype=torch.long)
        self.known = torch.sort(self.users * self.n_items + self.items).values
        self.generator = generator

    def _is_known(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = users * self.n_items + items
        pos = torch.searchsorted(self.known, keys).clamp(max=len(self.known) - 1)
        return self.known[pos] == keys

    def negatives(self, users: torch.Tensor) -> torch.Tensor:
        neg = torch.randint(self.n_items, users.shape, generator=self.generator)
        for _ in range(100):  # a user who has seen every item would never finish: cap the retries
            redo = self._is_known(users, neg)
            if not redo.any():
                break
            neg[redo] = torch.randint(self.n_items, (int(redo.sum()),), generator=self.generator)
        return neg

    def epoch(self, batch_size: int, with_negatives: bool = True):
        order = torch.randperm(len(self.users), generator=self.generator)
        users, items = self.users[order], self.items[order]
        negs = self.negatives(users) if with_negatives else None
        for start in range(0, len(order), batch_size):
            sl = slice(start, start + batch_size)
            yield Batch(users[sl], items[sl], None if negs is None else negs[sl])


@dataclass
class FitResult:
    """One configuration trained: its validation curve and best epoch (by validation only)."""

    config: dict
    best_epoch: int = 0
    best_score: float = -math.inf
    curve: list[dict] = field(default_factory=list)  # per validation: epoch, loss, metrics
    seconds: float = 0.0
    status: str = "ok"  # "ok" or "diverged: <reason>"
    state: dict | None = field(default=None, repr=False)


def evaluate_model(model: Recommender, train: sp.csr_matrix, heldout: sp.csr_matrix,
                   spec: TrainSpec, metrics=None) -> Evaluation:
    model.eval()
    device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device

    def score(users: np.ndarray) -> torch.Tensor:
        return model.score(torch.as_tensor(users, device=device)).float().cpu()

    kwargs = {} if metrics is None else {"metrics": metrics}
    with torch.inference_mode():
        model.on_evaluation_start()
        result = full_ranking(score, train, heldout, cutoffs=spec.cutoffs, graded=spec.graded_ndcg,
                              chunk_size=spec.eval_chunk, **kwargs)
    return result


def run_epoch(model: Recommender, optimizer: torch.optim.Optimizer, sampler: UniformSampler,
              batch_size: int, epoch: int, device: torch.device) -> float:
    """One pass over the training interactions; returns the mean batch loss."""
    model.train()
    model.on_epoch_start(epoch)
    with_negatives = type(model).sampling == "bpr"
    total, batches = torch.zeros((), device=device), 0
    for batch in sampler.epoch(batch_size, with_negatives):
        batch = Batch(*(None if t is None else t.to(device) for t in (batch.users, batch.pos, batch.neg)))
        loss = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()  # no per-batch .item(): it would sync a GPU every step
        batches += 1
    return total.item() / max(1, batches)


@contextlib.contextmanager
def deterministic_algorithms():
    """Bit-reproducible training at any thread count. With two or more intra-op threads some CPU
    reductions (scatter / index_add in the graph models) otherwise sum in a run-dependent order:
    two seeded 3-epoch runs of GRCN and MMGCN at 2 threads differed by up to 0.13 in a parameter,
    and test Recall@20 by up to 0.011. Measured cost of the deterministic kernels: none visible
    (MMGCN, GRCN, LightGCN, DRAGON, 5 epochs each, side by side). Ops with no deterministic
    version (some on CUDA) warn instead of failing."""
    previous, warn_only = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


def fit(model_cls: type[Recommender], params, spec: TrainSpec, data: TrainData,
        val: sp.csr_matrix, label: str = "") -> FitResult:
    """Train one configuration; keep the state of the epoch with the best validation metric."""
    with deterministic_algorithms():
        return _fit(model_cls, params, spec, data, val, label)


def _fit(model_cls: type[Recommender], params, spec: TrainSpec, data: TrainData,
         val: sp.csr_matrix, label: str) -> FitResult:
    result = FitResult(config={**dataclasses.asdict(params), "lr": spec.lr})
    if spec.threads:
        torch.set_num_threads(spec.threads)
    generator = seed_everything(spec.seed)
    model = model_cls(params, data).to(data.device)
    metric_name, _ = parse_metric(spec.validation_metric)
    started = time.perf_counter()

    def validate(epoch: int, loss: float) -> bool:
        ev = evaluate_model(model, data.train, val, spec, metrics=[metric_name])
        score = ev.mean()[spec.validation_metric]
        result.curve.append({"epoch": epoch, "loss": loss, spec.validation_metric: score,
                             "users": ev.counts()[spec.validation_metric]})
        if score > result.best_score:
            result.best_score, result.best_epoch = score, epoch
            result.state = copy.deepcopy(model.state_dict())
            return True
        return False

    if model_cls.sampling == "none":
        validate(0, float("nan"))
        result.seconds = time.perf_counter() - started
        return result

    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    decay, every = spec.lr_scheduler
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: decay ** (e / every))
    sampler = UniformSampler(data.train, generator)
    stale = 0
    bar = tqdm(range(1, spec.epochs + 1), desc=label or model_cls.__name__, leave=False)
    for epoch in bar:
        mean_loss = run_epoch(model, optimizer, sampler, spec.batch_size, epoch, data.device)
        scheduler.step()
        if not math.isfinite(mean_loss):  # the best state so far is kept; this configuration stops
            result.status = (f"diverged: loss {mean_loss} at epoch {epoch} "
                             f"(lower the learning rate {spec.lr} or raise regularisation)")
            log.warning("%s %s", label, result.status)
            break
        if epoch % spec.eval_every == 0 or epoch == spec.epochs:
            improved = validate(epoch, mean_loss)
            bar.set_postfix(loss=f"{mean_loss:.4f}", best=f"{result.best_score:.4f}@{result.best_epoch}")
            stale = 0 if improved else stale + 1
            if spec.patience is not None and stale >= spec.patience:
                log.info("%s early stop at epoch %d (best %d)", label, epoch, result.best_epoch)
                break
    result.seconds = time.perf_counter() - started
    return result


@dataclass
class RunResult:
    """A model's grid search on one dataset and feature setting: trials, selection, test metrics."""

    model: str
    trials: list[FitResult]
    selected: int  # index into trials, chosen on validation
    test: Evaluation
    seconds: float

    @property
    def best(self) -> FitResult:
        return self.trials[self.selected]


class TrialCheckpoints:
    """Finished trials kept on disk, so that an interrupted grid search resumes at the first
    unfinished configuration, and a grid split over several processes can be assembled by one more
    run. A trial is keyed by everything that determines it: the model, its parsed hyper-parameters
    and training spec, and `inputs`, the caller's digest of the data and features it trains on.

    A checkpoint file holds its key, the sha256 of its payload and the payload (the FitResult,
    tensors only: loaded with `weights_only`, so a file can never run code). A truncated file, one
    written for another key (copied or forged) or one whose payload fails its digest or schema is
    retrained with a warning, never trusted."""

    KIND = "mmlib.trial"

    def __init__(self, directory: Path, inputs: str):
        self.directory, self.inputs = Path(directory), inputs

    def key(self, model_name: str, spec: TrainSpec, params) -> str:
        blob = json.dumps({"model": model_name, "params": dataclasses.asdict(params),
                           "spec": dataclasses.asdict(spec), "inputs": self.inputs},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def path(self, model_name: str, spec: TrainSpec, params) -> Path:
        return self.directory / f"{model_name}-{self.key(model_name, spec, params)[:16]}.pt"

    def load(self, path: Path, key: str) -> FitResult | None:
        if not path.is_file():
            return None
        try:
            envelope = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(envelope, dict) or envelope.get("kind") != self.KIND:
                raise ValueError("not an mmlib trial checkpoint")
            if envelope.get("key") != key:
                raise ValueError("written for another configuration or inputs")
            payload = envelope["payload"].numpy().tobytes()
            if hashlib.sha256(payload).hexdigest() != envelope.get("sha256"):
                raise ValueError("payload fails its checksum")
            saved = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
            return _fit_result(saved)
        except Exception as error:  # a truncated, foreign or forged file is retrained, not trusted
            log.warning("ignoring trial checkpoint %s (%s); retraining it", path, error)
            return None

    def save(self, path: Path, key: str, trial: FitResult) -> None:
        buffer = io.BytesIO()
        torch.save(dataclasses.asdict(trial), buffer)
        payload = buffer.getvalue()
        torch_save_atomic({"kind": self.KIND, "key": key, "sha256": hashlib.sha256(payload).hexdigest(),
                           "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, path)


def _fit_result(saved) -> FitResult:
    """A FitResult from its saved dict, checking the schema (exact fields, their types)."""
    names = {f.name for f in dataclasses.fields(FitResult)}
    if not isinstance(saved, dict) or set(saved) != names:
        raise ValueError(f"unexpected fields {sorted(saved) if isinstance(saved, dict) else type(saved)}")
    ok = (isinstance(saved["config"], dict) and isinstance(saved["best_epoch"], int)
          and isinstance(saved["best_score"], float) and isinstance(saved["curve"], list)
          and isinstance(saved["status"], str)
          and (saved["state"] is None or (isinstance(saved["state"], dict) and all(
              isinstance(v, torch.Tensor) for v in saved["state"].values()))))
    if not ok:
        raise ValueError("a field has the wrong type")
    return FitResult(**saved)


def train_point(model_name: str, point: dict, base: TrainSpec, data: TrainData, val: sp.csr_matrix,
                test: sp.csr_matrix, where: str = "models") -> tuple[FitResult, Evaluation | None]:
    """Train one grid point (epoch chosen on validation) and evaluate its best state on test.
    The test numbers are read only by a selection that chose this point on validation; a point
    that diverged before its first validation has no state and no test (None)."""
    model_cls = MODELS.get(model_name)
    spec, params = split_config(model_cls, point, base, f"{where}.{model_name}")
    trial = fit(model_cls, params, spec, data, val, label=model_name)
    trial.config = {**trial.config, **point}  # also the training keys the grid varied
    if trial.state is None:
        return trial, None
    model = model_cls(params, data).to(data.device)
    model.load_state_dict(trial.state)
    return trial, evaluate_model(model, data.train, test, spec)


def train_and_select(model_name: str, grid: list[dict], base: TrainSpec, data: TrainData,
                     val: sp.csr_matrix, test: sp.csr_matrix, where: str = "models",
                     checkpoints: TrialCheckpoints | None = None) -> RunResult:
    """Train every grid point, select configuration and epoch on validation, then evaluate the
    selected model once on test (train items masked, as in the paper). With `checkpoints`, a
    grid point trained before on the same inputs is read back instead of retrained."""
    model_cls = MODELS.get(model_name)
    started = time.perf_counter()
    trials = []
    parsed = [split_config(model_cls, point, base, f"{where}.{model_name}") for point in grid]
    for index, (spec, params) in enumerate(parsed):
        label = f"{model_name} [{index + 1}/{len(parsed)}]"
        trial = None
        if checkpoints:
            key = checkpoints.key(model_name, spec, params)
            path = checkpoints.path(model_name, spec, params)
            trial = checkpoints.load(path, key)
        if trial is not None:
            log.info("%s read back from %s", label, path)
        else:
            trial = fit(model_cls, params, spec, data, val, label=label)
            trial.config = {**trial.config, **grid[index]}  # also the training keys the grid varied
            if checkpoints:
                checkpoints.save(path, key, trial)
        log.info("%s %s -> val %s=%.4f at epoch %d (%s, %.1fs)", label, trial.config,
                 spec.validation_metric, trial.best_score, trial.best_epoch, trial.status, trial.seconds)
        trials.append(trial)
    usable = [i for i, t in enumerate(trials) if t.state is not None]
    if not usable:
        reasons = "; ".join(f"{t.config}: {t.status}" for t in trials)
        raise MmlibError(f"Every configuration of {model_name} failed: {reasons}")
    selected = max(usable, key=lambda i: (trials[i].best_score, -i))  # ties: the earlier grid point
    spec, params = parsed[selected]
    model = model_cls(params, data).to(data.device)
    model.load_state_dict(trials[selected].state)
    test_eval = evaluate_model(model, data.train, test, spec)
    return RunResult(model_name, trials, selected, test_eval, time.perf_counter() - started)
