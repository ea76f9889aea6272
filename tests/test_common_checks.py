"""The common check suite (mmlib.testing) over every registered recommender and extractor.

Parametrised over `MODELS.names()` x `check_recommender(name)` and `EXTRACTORS.names()` x
`check_extractor(name)`: registering a model or an extractor adds its checks here, and one that
does not pass them fails the suite. Ids read "<name>-<check>", e.g. "FREEDOM-check_to_device_moves_everything".
"""

from __future__ import annotations

import pytest
import torch

from mmlib.registry import EXTRACTORS, MODELS
from mmlib.testing import ExtractorWorkspace, check_extractor, check_recommender


def _cases(names, checks):
    return [pytest.param(name, check_name, id=f"{name}-{check_name}")
            for name in names for check_name, _ in checks(name)]


RECOMMENDER_CASES = _cases(MODELS.names(), check_recommender)
EXTRACTOR_CASES = _cases(EXTRACTORS.names(), check_extractor)


@pytest.mark.parametrize("name, check_name", RECOMMENDER_CASES)
def test_recommender(name, check_name):
    dict(check_recommender(name))[check_name]()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> ExtractorWorkspace:
    return ExtractorWorkspace(tmp_path_factory.mktemp("extractor-checks"))


@pytest.mark.parametrize("name, check_name", EXTRACTOR_CASES)
def test_extractor(name, check_name, workspace, tmp_path):
    dict(check_extractor(name, workspace))[check_name](tmp_path)


def test_every_registered_model_and_extractor_is_checked():
    models = {p.values[0] for p in RECOMMENDER_CASES}
    extractors = {p.values[0] for p in EXTRACTOR_CASES}
    assert models == set(MODELS.names()) and extractors == set(EXTRACTORS.names())
    # ... and the registries are filled (an empty registry would make this suite vacuous)
    assert {"MostPop", "ItemKNN", "BPRMF", "LightGCN", "VBPR", "FREEDOM", "BM3"} <= models
    # the checks the issue names run on every model that they apply to
    for name in MODELS.names():
        checks = {check_name for check_name, _ in check_recommender(name)}
        assert {"check_subset_scores_equal_full_rows", "check_training_items_not_masked_by_the_model",
                "check_to_device_moves_everything", "check_seeded_fits_are_bit_identical",
                "check_state_dict_round_trip"} <= checks, name
        trains = MODELS.get(name).sampling != "none"
        assert ("check_every_parameter_gets_a_gradient" in checks) == trains, name
    # the paper's extractors run on tiny checkpoints; the embedded default's and MiniLM on their defaults
    tiny = {p.values[0] for p in EXTRACTOR_CASES if p.values[1] == "check_contract_on_tiny_checkpoint"}
    defaults = {p.values[0] for p in EXTRACTOR_CASES if p.values[1] == "check_contract_with_default_options"}
    assert {"resnet50", "vision_backbone", "clip_like", "clip", "align", "altclip", "hf_text",
            "sentence_transformers"} <= tiny
    assert {"color_histogram", "tfidf_svd", "sentence_transformers", "hf_text"} <= defaults


def test_the_checks_catch_a_model_that_breaks_the_contract(monkeypatch):
    """A model with a graph tensor held by hand and scores that mask training items fails the
    device and masking checks: the suite is not vacuous."""
    import scipy.sparse as sp

    from mmlib.models.bprmf import BPRMF

    class Masking(BPRMF):
        def __init__(self, params, data):
            super().__init__(params, data)
            self.graph = torch.as_tensor(sp.csr_matrix(data.train).toarray())  # by hand: not a buffer
            self.seen = self.graph.bool()

        def score(self, users):
            return super().score(users).masked_fill(self.seen[users], float("-inf"))

    monkeypatch.setitem(MODELS._entries, "Masking", Masking)
    checks = dict(check_recommender("Masking"))
    with pytest.raises(AssertionError, match=r"plain attributes[\s\S]*Masking\.graph"):
        checks["check_to_device_moves_everything"]()
    with pytest.raises(AssertionError, match="not finite"):
        checks["check_training_items_not_masked_by_the_model"]()


def test_an_extractor_without_a_tiny_case_fails_naming_what_to_add(monkeypatch, workspace, tmp_path):
    import dataclasses

    from mmlib.extract.base import Extractor
    from mmlib.extract.clip_like import Clip
    from mmlib.testing.extractor_checks import TINY_CASES, tiny_case

    @dataclasses.dataclass
    class Options:
        checkpoint: str = "someone/some-model"

    class Unknown(Extractor):
        modalities = ("textual",)

    Unknown.Options = Options
    monkeypatch.setitem(EXTRACTORS._entries, "unknown_hf", Unknown)
    checks = dict(check_extractor("unknown_hf", workspace))
    assert set(checks) == {"check_contract_on_tiny_checkpoint"}
    with pytest.raises(AssertionError, match=r"'unknown_hf'.*TINY_CASES"):
        checks["check_contract_on_tiny_checkpoint"](tmp_path)
    # a subclass of a registered extractor inherits its case (e.g. another CLIP-like checkpoint family)
    assert tiny_case(type("SigLIP", (Clip,), {})) == TINY_CASES["clip"]


@pytest.mark.parametrize("name", ["BPRMF", "LightGCN", "FREEDOM", "ItemKNN"])
def test_the_cuda_check_runs_here_on_the_cpu(name):
    """The body of check_cuda_scores_and_loss_match_cpu, pointed at the CPU, so that it is
    exercised on machines without CUDA too."""
    from mmlib.testing.recommender_checks import scores_and_loss_on_device_match_cpu

    scores_and_loss_on_device_match_cpu(name, "cpu")
