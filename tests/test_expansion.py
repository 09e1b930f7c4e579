"""Bilingual question expansion (rag.search.expansion) over the real CC-CEDICT, and the keyword
index's translated words (rag.search.keyword.QueryWord)."""

from __future__ import annotations

import numpy as np

from rag.search.bilingual import dictionary
from rag.search.expansion import MAX_FORMS, expand, other_language_text
from rag.search.keyword import KeywordIndex, QueryWord, tokenize


def anything(_: str) -> bool:
    return True


def forms(question: str, known=anything) -> dict[str, tuple[str, ...]]:  # type: ignore[no-untyped-def]
    return {w.forms[0]: w.forms[1:] for w in expand(tokenize(question), dictionary(), known)}


def test_a_chinese_question_gets_english_terms() -> None:
    found = forms("报销出租车费用需要发票吗？")
    assert "taxi" in found["出租车"]
    assert "invoic" in found["发票"] and "receipt" in found["发票"]
    assert "reimburs" in found["报销"]


def test_an_english_question_gets_chinese_terms() -> None:
    found = forms("How do I quantize a model with tensor parallel?")
    assert "量化" in found["quantiz"]
    assert "张量" in found["tensor"]
    assert "平行" in found["parallel"]


def test_words_missing_from_the_dictionary_stay_as_they_are() -> None:
    found = forms("lmdeploy 的 turbomind 怎么用")
    assert found["lmdeploy"] == () and found["turbomind"] == ()


def test_a_mixed_question_translates_each_word_by_its_own_language() -> None:
    found = forms("lmdeploy 如何开启 kv cache 量化")
    assert "quantiz" in found["量化"]  # Chinese -> English
    assert found["lmdeploy"] == ()
    assert all(not f[0].isascii() for f in found["cach"])  # English -> Chinese


def test_only_translations_the_collection_holds_are_kept_and_at_most_max_forms() -> None:
    held = {"部署", "布置"}
    found = forms("deploy", known=lambda w: w in held)
    assert set(found["deploy"]) == held
    assert all(len(f) <= MAX_FORMS for f in forms("run get set make").values())


def test_the_other_language_text_has_one_word_per_question_word() -> None:
    assert other_language_text(tokenize("报销发票"), dictionary(), lambda w: w in {"reimburs", "invoic"}) == "reimburs invoic"


def test_many_or_rare_translations_weigh_no_more_than_one_word() -> None:
    docs = [["invoic", "payment"], ["receipt"], ["bill", "bill"], ["uniform", "shop"], ["发票", "报销"], ["other"]] * 3
    index = KeywordIndex(docs)
    translated = QueryWord(("发票", "invoic", "receipt", "bill", "uniform"), (1.0,) * 5)
    scores = index.word_scores([translated])
    alone = index.scores(["uniform"])  # a rare gloss scored as a word of its own
    # A chunk holding one translation scores no more than the word would alone, and less than its rare gloss would:
    # the word's IDF is that of the chunks holding any form (15 of 18 here).
    assert scores.max() <= alone.max()
    assert np.count_nonzero(scores) == 15
    assert scores[0] == scores[4]  # either language's form counts the same
    # A word of one form scores exactly as BM25.
    assert np.array_equal(index.word_scores([QueryWord.plain("bill")]), index.scores(["bill"]))


def test_coverage_counts_a_word_held_in_either_language() -> None:
    index = KeywordIndex([["invoic", "payment"], ["发票", "报销"], ["other"]])
    word = QueryWord(("发票", "invoic"), (1.0, 1.0))
    assert index.coverage([word], [0, 1, 2]) == [1.0, 1.0, 0.0]
    assert index.coverage(["发票"], [0, 1, 2]) == [0.0, 1.0, 0.0]


def test_absent_share_is_the_weight_of_words_no_chunk_holds() -> None:
    index = KeywordIndex([["invoic", "payment"], ["other"]])
    assert index.absent_share(["invoic"]) == 0.0
    assert index.absent_share(["parental"]) == 1.0
    assert 0.4 < index.absent_share(["invoic", "parental"]) < 1.0
    assert index.absent_share([QueryWord(("发票", "invoic"), (1.0, 1.0))]) == 0.0
