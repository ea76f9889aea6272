"""UserKNN: collaborative user-based k-nearest-neighbours (Resnick et al., CSCW 1994, as Elliot's
UserKNN), not trained.

The similarity of users u and v is the cosine of their rows of the binary training matrix R,
s_uv = <r_u, r_v> / (|r_u| |r_v| + shrink). Every user u keeps its k most similar other users
N_k(u) (itself excluded, only positive similarities, ties to the lower index), and its score for
item i is x_ui = sum_{v in N_k(u)} s_uv r_vi, i.e. scores = W·R where row u of W holds the
neighbours of u. Where this departs from Elliot, and why: the card's `UserKNNParams` docstring.

The user-user graph is built block by block from sparse products (`graph.sparse_cosine_topk`, the
builder ItemKNN uses on the items): no dense users x users matrix beyond one block of rows. Scoring
a batch of users multiplies their sparse rows of W by R: nothing dense beyond (batch x items).
The matrices are scipy (no tensors): scores are computed on the CPU and returned on the device of
the users asked for. Hyper-parameters: the card "UserKNN" in `mmlib.models.cards` (`UserKNNParams`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from mmlib.models.base import Recommender, TrainData
from mmlib.models.graph import sparse_cosine_topk


class UserKNN(Recommender, card="UserKNN"):
    def __init__(self, params, data: TrainData):
        super().__init__(params, data)
        train = sp.csr_matrix(data.train, dtype=np.float32)
        train.data[:] = 1.0
        self.interactions = train  # not `self.train`: that is nn.Module.train()
        # Row u of `neighbours` holds the k neighbours of user u with their similarities: W.
        self.neighbours = sparse_cosine_topk(train, params.k, params.shrink, params.block_size)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        weights = self.neighbours[users.cpu().numpy()]
        return torch.from_numpy((weights @ self.interactions).toarray()).to(users.device)
