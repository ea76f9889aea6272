"""`tfidf_svd`: a weight-free textual extractor (the embedded default's text features).

scikit-learn `TfidfVectorizer` (sublinear tf, l2-normalised tf-idf) followed by `TruncatedSVD`
(randomized, fixed `seed`), both fitted on the dataset's present item texts (unsupervised; no
interaction data is used); rows are then L2-normalised. Deterministic on a given machine.

The dimension is `dim`, or less when the texts cannot support it: at most min(#texts, #terms)
components exist; the reduced dimension is logged and recorded in the manifest
(`report.effective_dim`).

Blank texts are missing (as for every text extractor). A text none of whose words is in the
fitted vocabulary (only stop words, punctuation, one-letter words, or words rarer than `min_df`)
has no TF-IDF vector: it is a failed item (listed with that reason), never an all-zero row marked
present.
"""

from __future__ import annotations

import logging

import numpy as np

from mmlib.errors import MmlibError
from mmlib.extract.base import Extractor, _py, text_inputs

log = logging.getLogger("mmlib.extract")


class TfidfSVD(Extractor, card="tfidf_svd"):
    """TF-IDF (sublinear tf) + truncated SVD, rows L2-normalised."""

    version = 1  # options: mmlib.extract.cards.TfidfSvdOptions

    def __init__(self, options=None):
        super().__init__(options)
        self._vectorizer = None
        self._svd = None
        self._dim = None

    def spec(self) -> dict:
        return {
            **super().spec(),
            "preprocessing": {
                "vectorizer": "sklearn TfidfVectorizer(sublinear_tf=True, norm='l2', smooth_idf=True)",
                "reduction": "sklearn TruncatedSVD(algorithm='randomized')",
                "fitted_on": "the dataset's present item texts",
                "empty_texts": "treated as missing",
            },
            "normalisation": "L2 per row",
        }

    def provenance(self) -> dict:
        import sklearn

        return {**super().provenance(), "scikit-learn": sklearn.__version__}

    def prepare(self, dataset, modality: str) -> int:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        o = self.options
        _, texts, _ = text_inputs(dataset)  # decoded; undecodable texts are failed items
        if len(texts) < 2:
            raise MmlibError(f"tfidf_svd: dataset {dataset.name!r} has {len(texts)} non-empty item "
                             "texts; at least 2 are needed to fit TF-IDF + SVD.")
        vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=o.min_df, max_df=o.max_df,
                                     ngram_range=tuple(o.ngram_range), max_features=o.max_features,
                                     stop_words=o.stop_words, lowercase=o.lowercase, dtype=np.float64)
        try:
            x = vectorizer.fit_transform(texts)
        except ValueError as exc:  # empty vocabulary, min_df > max_df, ...
            raise MmlibError(f"tfidf_svd: cannot fit TF-IDF on dataset {dataset.name!r} ({exc}). "
                             "Lower min_df / raise max_df, or drop stop_words.") from exc
        k = min(o.dim, x.shape[0], x.shape[1])
        if x.shape[1] < 2:
            raise MmlibError(f"tfidf_svd: only {x.shape[1]} term(s) survive in dataset "
                             f"{dataset.name!r}; lower min_df or raise max_df.")
        if k < o.dim:
            log.warning("tfidf_svd: %d texts with %d terms support only %d of the requested %d "
                        "dimensions; using %d", x.shape[0], x.shape[1], k, o.dim, k)
        svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=o.n_iter, random_state=o.seed)
        svd.fit(x)
        self._vectorizer, self._svd, self._dim = vectorizer, svd, k
        self._fit_report = {"effective_dim": k, "requested_dim": o.dim, "n_texts": x.shape[0],
                            "n_terms": x.shape[1],
                            "explained_variance_ratio": float(svd.explained_variance_ratio_.sum())}
        return k

    def encode_texts(self, batch: list[str]) -> np.ndarray:
        z = self._svd.transform(self._vectorizer.transform(batch))
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        z = np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)
        return z.astype(np.float32)

    def extract(self, dataset, modality: str, out: np.ndarray) -> dict:
        report = super().extract(dataset, modality, out)
        report["extra"] = dict(self._fit_report)
        # a text without any vocabulary term encodes to zeros: not a feature, a failed item
        present = report["present"]
        empty = np.concatenate([s + np.flatnonzero(present[s:s + 65536] & ~out[s:s + 65536].any(axis=1))
                                for s in range(0, len(out), 65536)] or [np.zeros(0, np.int64)])
        if len(empty):
            ids = dataset.items["item_id"].tolist()
            present[empty] = False
            report["failed"] = sorted(
                report["failed"] + [{"item": int(i), "item_id": _py(ids[i]), "file": None,
                                     "reason": "no word of the text is in the TF-IDF vocabulary "
                                               "(only stop words, punctuation, one-letter or rare "
                                               "words); lower min_df or drop stop_words"}
                                    for i in empty], key=lambda f: f["item"])
            log.warning("tfidf_svd: %d text(s) have no vocabulary term; treated as failed items",
                        len(empty))
        return report
