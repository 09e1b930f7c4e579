"""Vectors of short texts (passage sentences, answer sentences), kept so that each is embedded
once: the evidence embeds a passage's sentences to compare them with the question, and the
grounding guard compares an answer's sentences with the same ones.

``centred`` gives them as the guard compares them across languages: each text's language mean
taken out (rag.search.language_means; the means of passages, since these are embedded as
passages), then made unit length again, so that a Chinese sentence and the English one it
translates come out close, and two unrelated sentences of one language do not.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from rag.search.keyword import mostly_chinese, tokenize
from rag.search.language_means import CENTERING, means_for

KEPT = 20_000  # texts whose vectors are kept (384 floats each: about 30 MB)


class SentenceVectors:
    def __init__(self, embed: Callable[[Sequence[str]], np.ndarray], model_id: str) -> None:
        self._embed = embed
        self._model_id = model_id
        self._kept: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def rows(self, texts: Sequence[str]) -> np.ndarray:
        """The texts' vectors as the embedder gives them (rows), embedding only those not kept."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._kept))
        if missing:
            fresh = self._embed(missing)
            with self._lock:
                for text, vector in zip(missing, fresh, strict=True):
                    self._kept[text] = vector
                    self._kept.move_to_end(text)
                while len(self._kept) > KEPT:
                    self._kept.popitem(last=False)
        with self._lock:
            found = {t: self._kept[t] for t in texts if t in self._kept}
        return np.stack([found[t] if t in found else self._embed([t])[0] for t in texts]) if texts else np.zeros((0, 0), dtype=np.float32)

    def centred(self, texts: Sequence[str]) -> np.ndarray:
        """The texts' vectors with CENTERING of their language's mean taken out, unit length (plain where the model has no means)."""
        vectors = self.rows(texts).astype(np.float32)
        means = means_for(self._model_id)
        if means is None or not len(vectors):
            return vectors
        chinese = np.array([mostly_chinese(tokenize(t)) for t in texts])
        vectors = vectors - CENTERING * np.where(chinese[:, None], means.passage[1], means.passage[0])
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)
