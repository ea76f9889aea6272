"""LightGCN (He et al., SIGIR 2020): linear propagation of ID embeddings on the user-item graph.

E^(l+1) = Â E^(l) with Â = D^-1/2 A D^-1/2 the normalised bipartite adjacency (no self-loops, no
weights, no non-linearity); the final embedding is the mean of E^(0..n_layers); x_ui = <e_u, e_i>.
Loss = BPR + l_w * 0.5 * ||(e_u^(0), e_i^(0), e_j^(0))||^2 / batch: the L2 term is on the *ego*
(layer-0) embeddings of the batch, as in the paper (`reg_form: norm`: MMRec's unsquared EmbLoss
instead). Xavier initialisation (as the paper states).

The propagated embeddings are computed once per training step and, for evaluation, once per
full-ranking pass (`on_evaluation_start`), then reused by every block of users; the cache is
dropped as soon as training resumes. The encoder is `base.LightGCNBase`, which SGL and SimGCL
extend too. Hyper-parameters: the card "LightGCN" in `mmlib.models.cards` (`LightGCNParams`).
"""

from __future__ import annotations

from mmlib.models.base import LightGCNBase


class LightGCN(LightGCNBase, card="LightGCN"):
    """LightGCN exactly as `LightGCNBase` computes it."""
