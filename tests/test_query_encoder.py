"""The ONNX query encoder: same vectors as the sentence-transformers model, and a safe fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rag.ingest.embedder import load_embedder, model_location
from rag.search.query_encoder import OnnxQueryEncoder, TorchQueryEncoder, _build

QUESTIONS = ["Who approves a hotfix on a Tuesday?", "报销需要在多少天内提交？", "a" * 3000]


def test_onnx_copy_gives_the_same_vectors(tmp_path: Path) -> None:
    embedder = load_embedder("", 64).model
    encoder = _build(embedder, model_location(""), tmp_path)
    assert isinstance(encoder, OnnxQueryEncoder)
    exported = list(tmp_path.glob("query-encoder-*/model.onnx"))
    assert len(exported) == 1
    for question in QUESTIONS:  # the last one is longer than the model reads: truncated alike
        assert float(np.dot(encoder(question), embedder.get_query_embedding(question))) > 0.9999
    together = encoder.many(QUESTIONS)  # padded to one batch: the same vectors as one at a time
    assert together.shape == (3, 384) and all(float(np.dot(together[k], encoder(q))) > 0.9999 for k, q in enumerate(QUESTIONS))
    mtime = exported[0].stat().st_mtime_ns
    assert isinstance(_build(embedder, model_location(""), tmp_path), OnnxQueryEncoder)
    assert exported[0].stat().st_mtime_ns == mtime  # exported once, then reused


def test_a_damaged_export_falls_back_to_pytorch(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    embedder = load_embedder("", 64).model
    _build(embedder, model_location(""), tmp_path)
    exported = next(tmp_path.glob("query-encoder-*/model.onnx"))
    exported.write_bytes(b"not an onnx model")
    encoder = _build(embedder, model_location(""), tmp_path)
    assert isinstance(encoder, TorchQueryEncoder)
    assert "stay on PyTorch" in caplog.text and str(tmp_path) in caplog.text
    assert len(encoder("still answers")) == 384
