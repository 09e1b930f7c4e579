"""Changing rag.embed_model: the next index run embeds every document again, safely (real Chroma,
the real MiniLM and multilingual-e5-small models)."""

from __future__ import annotations

import shutil
from pathlib import Path

from bot.runtime import knowledge_runtime
from config.settings import Settings
from rag.ingest.embedder import E5_MODEL_ID, SHIPPED_MODEL_ID
from rag.store.chroma import RETIRED, STAGING
from tests.conftest import make_settings
from tests.test_indexer import assert_consistent

QUESTION = "Who gets paged if the primary on-call does not acknowledge?"


def minilm(settings: Settings) -> Settings:
    """The same data with the other embedder (the shipped MiniLM; the default is multilingual-e5-small)."""
    return make_settings(settings.data_dir, settings.rag.knowledge_dir, rag={"embed_model": ""})


def copy_of(indexed: Settings, tmp_path: Path) -> Settings:
    data = Path(shutil.copytree(indexed.data_dir, tmp_path / "data"))
    (data / "answers.sqlite").unlink(missing_ok=True)
    return make_settings(data, indexed.rag.knowledge_dir)


def test_a_model_change_embeds_every_document_again(indexed_settings: Settings, tmp_path: Path) -> None:
    settings = copy_of(indexed_settings, tmp_path)
    with knowledge_runtime(settings) as runtime:
        before = runtime.manifest.generation("default")
        assert runtime.store.model_of("default") == E5_MODEL_ID
    with knowledge_runtime(minilm(settings)) as runtime:
        # Until the index runs, questions are still answered, with the model the collection was made with.
        assert runtime.retriever.search(QUESTION, ["default"]).passages[0].path == "oncall-guide.md"
        report = runtime.indexer.run()
        assert report.reembedded == 7 and report.unchanged == 7 and report.added == 0 and not report.failed
        assert runtime.store.model_of("default") == SHIPPED_MODEL_ID and runtime.manifest.generation("default") > before
        assert runtime.store.collections() == ["default"]  # no staging or retired collection left
        assert_consistent(runtime)
        assert runtime.retriever.search(QUESTION, ["default"]).passages[0].path == "oncall-guide.md"
        again = runtime.indexer.run()
        assert again.reembedded == 0 and again.chunks == 0  # once is enough


def test_a_swap_cut_short_is_finished_or_undone(indexed_settings: Settings, tmp_path: Path) -> None:
    settings = copy_of(indexed_settings, tmp_path)
    with knowledge_runtime(minilm(settings)) as runtime:
        store = runtime.store
        # A crash after the live collection was set aside, before the staging one (incomplete) took its place: undone.
        store.start_staging("default")
        store._rename("default", "default" + RETIRED)
        assert store.collection("default") is None
        store.recover("default")
        assert store.model_of("default") == E5_MODEL_ID and store.collection("default" + RETIRED) is None
        # The next run re-embeds from scratch and ends with one live collection of the new model.
        assert runtime.indexer.run().reembedded == 7
        assert store.model_of("default") == SHIPPED_MODEL_ID and store.collection("default" + STAGING) is None
        assert_consistent(runtime)
