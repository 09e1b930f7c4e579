"""Hybrid retrieval over the indexed sample knowledge base (real Chroma, real embedder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.runtime import knowledge_runtime
from config.settings import Settings, with_values
from rag.search.retriever import NothingIndexed


@pytest.fixture
def retriever(indexed_settings: Settings):  # type: ignore[no-untyped-def]
    with knowledge_runtime(indexed_settings) as runtime:
        yield runtime.retriever


@pytest.fixture
def weight(indexed_settings: Settings) -> float:
    return indexed_settings.rag.weight


@pytest.mark.parametrize(
    ("question", "path", "heading"),
    [
        ("Who gets paged if the primary on-call does not acknowledge a page?", "oncall-guide.md", "Paging and escalation"),
        ("出差住宿每晚可以报销多少钱？", "expense-policy-zh.md", "住宿标准"),
        ("报销需要在多少天内提交？", "expense-policy-zh.md", "报销流程"),
        ("How many approvals does a pull request need?", "code-review.docx", "Approvals"),
        ("What do I do if my laptop is stolen?", "security-policy.pdf", ""),
        ("When does the release train leave?", "release-process.rst", "The release train"),
        ("Who is my onboarding buddy?", "onboarding.html", "Your onboarding buddy"),
    ],
)
def test_the_right_passage_comes_first(retriever, weight: float, question: str, path: str, heading: str) -> None:  # type: ignore[no-untyped-def]
    result = retriever.search(question, ["default"])
    assert result.passages, question
    best = result.passages[0]
    assert (best.path, best.heading) == (path, heading)
    assert 0 < best.score <= 1 and best.score == pytest.approx(weight * best.vector_score + (1 - weight) * best.keyword_score, abs=1e-3)
    assert {"embed", "vector", "keyword", "total"} <= result.timings_ms.keys()


def test_chinese_question_finds_the_chinese_document_through_its_words(retriever) -> None:  # type: ignore[no-untyped-def]
    best = retriever.search("餐补每天多少钱", ["default"]).passages[0]
    assert best.path == "expense-policy-zh.md" and best.heading == "餐补"
    assert best.keyword_score > 0.3


@pytest.mark.parametrize(
    ("question", "path"),
    [
        ("How much is the daily meal allowance on a business trip?", "expense-policy-zh.md"),
        ("How much can I claim per night for a hotel in Shanghai?", "expense-policy-zh.md"),
        ("代码冻结期从哪天开始？", "release-process.rst"),
        ("回滚一次部署大概需要多长时间？", "release-process.rst"),
    ],
)
def test_a_question_finds_the_page_written_in_the_other_language(indexed_settings: Settings, question: str, path: str) -> None:
    """With no translation, no shared word: only the vectors, with each language's mean taken out, can match them."""
    with knowledge_runtime(with_values(indexed_settings, {"rag.translate_query": "false"})) as runtime:
        passages = runtime.retriever.search(question, ["default"]).passages
    assert passages and passages[0].path == path and passages[0].keyword_score == 0


@pytest.mark.parametrize(
    ("question", "path", "heading"),
    [
        ("How much is the daily meal allowance on a business trip?", "expense-policy-zh.md", "餐补"),
        ("Within how many days do I have to submit an expense claim?", "expense-policy-zh.md", "报销流程"),
        ("代码冻结期从哪天开始？", "release-process.rst", "The release train > Code freeze"),
    ],
)
def test_the_translated_words_match_the_page_in_the_other_language(retriever, question: str, path: str, heading: str) -> None:  # type: ignore[no-untyped-def]
    """rag.translate_query (the default): the question's words reach the other language's page through CC-CEDICT."""
    best = retriever.search(question, ["default"]).passages[0]
    assert (best.path, best.heading) == (path, heading)
    assert best.keyword_score > 0.1 and best.features["cross"] == 1.0


@pytest.mark.parametrize(
    "question",
    ["What is the boiling point of tungsten?", "Who won the 1998 football world cup?", "量子色动力学是什么？", "明天北京会下雨吗？", "公司的年假有多少天？"],
)
def test_questions_about_nothing_in_the_base_find_nothing(retriever, question: str) -> None:  # type: ignore[no-untyped-def]
    assert retriever.search(question, ["default"]).passages == []


def test_top_k_limits_the_passages(retriever) -> None:  # type: ignore[no-untyped-def]
    assert len(retriever.search("on-call engineer pages and incidents", ["default"], top_k=2).passages) == 2


def test_never_indexed_collection_is_explained(retriever) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NothingIndexed, match="collection nowhere") as caught:
        retriever.search("anything", ["nowhere"])
    assert "teambot index" in caught.value.hint


def test_keyword_index_follows_changes_made_by_another_indexer(settings: Settings, knowledge: Path) -> None:
    # The writer stands for `teambot index` run in another process.
    with knowledge_runtime(settings) as reader, knowledge_runtime(settings) as writer:
        writer.indexer.run()
        assert reader.retriever.search("Where are the bicycles stored?", ["default"]).passages == []
        (knowledge / "bikes.md").write_text("# Bicycles\n\nBicycles are stored in the basement bicycle room, behind the blue door.\n")
        writer.indexer.run()
        best = reader.retriever.search("Where are the bicycles stored?", ["default"]).passages[0]
        assert best.path == "bikes.md"


def test_search_spans_several_collections(settings: Settings, tmp_path: Path) -> None:
    hr = tmp_path / "hr"
    hr.mkdir()
    (hr / "leave.md").write_text("# Parental leave\n\nParents get sixteen weeks of paid parental leave.\n")
    question = "How many weeks of parental leave do parents get?"
    with knowledge_runtime(settings) as runtime:
        runtime.indexer.run()
        runtime.indexer.run([hr], collection="hr")
        assert runtime.retriever.search(question, ["default"]).passages == []
        both = runtime.retriever.search(question, ["default", "hr"]).passages
    assert both[0].collection == "hr" and both[0].path == "leave.md"


def test_the_relevance_rule_of_the_settings_decides(indexed_settings: Settings) -> None:
    """rag.relevance, as `teambot eval --calibrate` prints it, is what search uses in place of rag.min_score."""
    question = "What is the on-call stipend amount in euros?"  # a near miss: its words are in the on-call guide
    strict = {"rag.relevance": "{ bias = 0.0, keyword = 1.0, absent = -1.0 }"}  # as a --set-value or a --variant gives it
    lenient = {"rag.relevance": "{ bias = 0.0, vector = 1.0 }"}
    with knowledge_runtime(with_values(indexed_settings, lenient)) as runtime:
        found = runtime.retriever.search(question, ["default"]).passages
    assert found and all(p.features["absent"] > 0 for p in found)  # "euros" is in no document
    with knowledge_runtime(with_values(indexed_settings, strict)) as runtime:
        assert runtime.retriever.search(question, ["default"]).passages == []
        assert runtime.retriever.search("How quickly do I have to acknowledge a page?", ["default"]).passages


def test_one_passage_a_file_lets_other_pages_in(indexed_settings: Settings) -> None:
    """rag.passages_per_file: the best chunk of each file first, so one long page does not fill the top k."""
    question = "Who gets paged if the primary on-call does not acknowledge a page?"  # several on-call chunks pass the bar
    with knowledge_runtime(with_values(indexed_settings, {"rag.passages_per_file": "0", "rag.min_score": "0.05"})) as runtime:
        unlimited = runtime.retriever.search(question, ["default"]).passages
    with knowledge_runtime(with_values(indexed_settings, {"rag.passages_per_file": "1", "rag.min_score": "0.05"})) as runtime:
        one_each = runtime.retriever.search(question, ["default"]).passages
    assert [p.path for p in unlimited].count("oncall-guide.md") >= 2
    assert len(one_each) == len(unlimited) == 4 and len({p.path for p in one_each}) == 4
    assert one_each[0] == unlimited[0]  # the best chunk stays first
    assert [p.score for p in one_each] == sorted((p.score for p in one_each), reverse=True)
    with knowledge_runtime(with_values(indexed_settings, {"rag.passages_per_file": "2", "rag.min_score": "0.05"})) as runtime:
        two_each = runtime.retriever.search(question, ["default"]).passages
    assert max([p.path for p in two_each].count(path) for path in {p.path for p in two_each}) == 2
