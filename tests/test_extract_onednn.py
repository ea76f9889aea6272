"""The oneDNN linear rewrite (`mmlib.extract.onednn`) computes what the plain model computes.

Each tiny architecture is loaded twice; one copy is rewritten and both run the same inputs. The
rewrite must touch what it claims (every linear packed, the MLP activations fused) and stay within
1e-5 of the plain forward; the extractor option `onednn: false` must keep the model's own layers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlib.extract import extract_features
from mmlib.extract.onednn import onednn_available, optimise_linears
from mmlib.testing.tiny import build_tiny_checkpoints
from test_extract_contract import make_tiny_dataset
from test_extract_hf import FIXTURES

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN (mkldnn)")


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    return build_tiny_checkpoints(tmp_path_factory.mktemp("tiny-ckpts"), tokenizers_dir=FIXTURES)


def _twins(folder):
    from transformers import AutoModel

    plain = AutoModel.from_pretrained(str(folder)).eval()
    fast = AutoModel.from_pretrained(str(folder)).eval()
    return plain, fast, optimise_linears(fast)


def _n_linears(model) -> int:
    return sum(type(m) is torch.nn.Linear for m in model.modules())


# architecture -> activations the rewrite must fuse (one per transformer layer's MLP)
FUSED = {"clip": 4, "altclip": 4, "bert": 2}  # CLIP: 2 vision + 2 text layers (quick_gelu)


@pytest.mark.parametrize("arch", ["clip", "altclip", "align"])
def test_image_and_text_towers_match_the_plain_model(arch, ck):
    plain, fast, summary = _twins(ck[arch])
    assert _n_linears(fast) == 0 and summary["packed_linears"] == _n_linears(plain)  # one for one
    if arch in FUSED:
        assert summary["fused_activations"] == FUSED[arch]
    torch.manual_seed(0)
    pixels = torch.randn(5, 3, 32, 32)
    ids = torch.randint(3, 50, (5, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.inference_mode():
        pairs = [(plain.get_image_features(pixel_values=pixels), fast.get_image_features(pixel_values=pixels)),
                 (plain.get_text_features(input_ids=ids, attention_mask=mask),
                  fast.get_text_features(input_ids=ids, attention_mask=mask))]
    for a, b in pairs:
        a, b = getattr(a, "pooler_output", a), getattr(b, "pooler_output", b)
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5, rtol=0)


def test_bert_encoder_matches_and_fuses_its_gelu(ck):
    plain, fast, summary = _twins(ck["bert"])
    assert summary["fused_activations"] == FUSED["bert"] and _n_linears(fast) == 0
    ids = torch.randint(5, 50, (4, 10))
    with torch.inference_mode():
        a = plain(input_ids=ids).last_hidden_state
        b = fast(input_ids=ids).last_hidden_state
    np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5, rtol=0)


def test_quick_gelu_folding_is_exact_on_a_real_size_mlp():
    """ViT-B width: fc1 768->3072 with x*sigmoid(1.702x) folded into oneDNN's swish post-op."""
    from transformers.activations import QuickGELUActivation

    torch.manual_seed(0)

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.activation_fn, self.fc2 = (torch.nn.Linear(768, 3072), QuickGELUActivation(),
                                                      torch.nn.Linear(3072, 768))

        def forward(self, x):
            return self.fc2(self.activation_fn(self.fc1(x)))

    plain = MLP().eval()
    fast = MLP().eval()
    fast.load_state_dict(plain.state_dict())
    assert optimise_linears(fast) == {"packed_linears": 2, "fused_activations": 1}
    x = torch.randn(2, 197, 768)
    with torch.inference_mode():
        a, b = plain(x), fast(x)
    assert float((a - b).abs().max()) < 2e-5 * float(a.abs().max())


def test_extractor_option_switches_the_rewrite_and_records_it(ck, tmp_path):
    ds = make_tiny_dataset(tmp_path / "ds")
    out = {}
    for flag in (True, False):
        setting = {"visual": {"extractor": "clip", "checkpoint": str(ck["clip"]), "onednn": flag}}
        out[flag] = extract_features(ds, f"onednn-{flag}", setting, tmp_path / "f")
        assert out[flag].manifest["modalities"]["visual"]["report"]["onednn"] is flag
    np.testing.assert_allclose(out[True]["visual"], out[False]["visual"], atol=1e-5, rtol=0)
    assert out[True].hash() != out[False].hash()  # an option of the setting: its own cache entry
