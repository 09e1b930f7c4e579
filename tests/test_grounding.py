"""Evidence, the grounding guard, the extractive answer and follow-up detection, on English,
Chinese and mixed text: pure functions, plus the evidence picker with the real query encoder."""

from __future__ import annotations

import pytest

from bot.conversation import is_follow_up
from bot.evidence import Evidence, answer_quotes, extractive_answer, pick_evidence, sentences
from bot.guard import check_answer
from bot.prompt import Turn, language_of
from config.settings import Settings
from rag.search.retriever import Passage

ONCALL = """## Paging and escalation

Alerts page the primary on-call engineer through PagerDuty. Acknowledge a page within
5 minutes, even if you cannot start work on it yet.

If the primary does not acknowledge a page within 15 minutes, PagerDuty escalates it to the
secondary on-call engineer. If neither acknowledges within 30 minutes, it escalates to the
engineering manager."""
HOTEL = """出差住宿按城市分级报销：一线城市（北京、上海、广州、深圳）住宿标准为每晚不超过 600 元，
其他城市每晚不超过 400 元。超出标准的部分需要部门负责人书面批准，否则由员工自行承担。"""
PAY = "On-call engineers receive a stipend for each week on call and may take a day off after a night with more than two pages."


def passage(text: str, title: str, path: str, score: float = 0.6) -> Passage:
    return Passage("default", path, title, "", "", text, score, score, score, f"{path}:0")


PASSAGES = [passage(ONCALL, "On-call guide", "oncall-guide.md"), passage(HOTEL, "差旅与报销政策", "expense-policy-zh.md", 0.4), passage(PAY, "On-call guide", "oncall-guide.md", 0.3)]


def test_sentences_follow_chinese_and_latin_punctuation_lists_and_wrapped_lines() -> None:
    parts = sentences(ONCALL)
    assert "Acknowledge a page within 5 minutes, even if you cannot start work on it yet." in parts  # a wrapped line is joined
    assert parts[0] == "Alerts page the primary on-call engineer through PagerDuty."  # a heading is no quote
    assert sentences(HOTEL) == [
        "出差住宿按城市分级报销：一线城市（北京、上海、广州、深圳）住宿标准为每晚不超过 600 元，其他城市每晚不超过 400 元。",
        "超出标准的部分需要部门负责人书面批准，否则由员工自行承担。",
    ]
    assert sentences("- **SEV1**: customers cannot use the product.\n- SEV2: degraded. Post updates every hour.\n1. 提交申请。2. 经理审批。") == [
        "SEV1: customers cannot use the product.", "SEV2: degraded.", "Post updates every hour.", "提交申请。", "2. 经理审批。",
    ]  # fmt: skip
    assert sentences("Use e.g. the VPN. Version 1.2 works.") == ["Use e.g. the VPN.", "Version 1.2 works."]


def test_evidence_picks_the_sentence_that_answers_by_words() -> None:
    evidence = pick_evidence("Who gets paged if the primary on-call does not acknowledge?", PASSAGES, similarity=None)
    assert evidence[0].n == 1 and evidence[0].quote.startswith("If the primary does not acknowledge a page within 15 minutes")
    assert {e.n for e in evidence} == {1, 2, 3}  # one quote for every source
    chinese = pick_evidence("出差住宿每晚可以报销多少钱？", PASSAGES, similarity=None)
    assert chinese[0].n == 2 and "600 元" in chinese[0].quote and "400 元" in chinese[0].quote


def test_evidence_for_a_follow_up_prefers_what_was_not_said_yet() -> None:
    chain = [passage("Unanswered pages escalate to the secondary engineer.\n\nPages still unanswered escalate to the engineering manager.", "Escalation", "e.md")]
    previous, said = "Where do unanswered pages escalate?", "They escalate to the secondary engineer [1]."
    assert "secondary" in pick_evidence("Where do unanswered pages escalate?", chain, None)[0].quote
    evidence = pick_evidence("And if still unanswered?", chain, similarity=None, previous=previous, already_said=said)
    assert "engineering manager" in evidence[0].quote


def test_evidence_by_meaning_across_languages_with_the_default_embedder(indexed_settings: Settings) -> None:
    from bot.runtime import knowledge_runtime

    with knowledge_runtime(indexed_settings) as runtime:
        evidence = pick_evidence("How much can I claim per night for a hotel in Shanghai?", PASSAGES, runtime.retriever.similarity)
    assert evidence[0].n == 2 and "600 元" in evidence[0].quote  # not a word in common: the multilingual embedder's meaning


def test_the_quote_takes_the_sentence_after_the_match_where_answers_often_are() -> None:
    """The sentence that matches the question often only names the topic; the answer follows it
    (lmdeploy's docs, 21 of 47 direct questions quoted the right page without the fact)."""
    state = passage(
        "For models with GatedDeltaNet layers, TurboMind keeps the recurrent state in the activation dtype by default. "
        "Pass --linear-state-dtype float32 to change it. Other settings are described below.",
        "TurboMind config", "turbomind.md",
    )  # fmt: skip
    (quote,) = pick_evidence("How do I make TurboMind keep the recurrent state of GatedDeltaNet layers in FP32?", [state], None)
    assert quote.quote.startswith("For models with GatedDeltaNet layers") and "--linear-state-dtype float32" in quote.quote
    assert "Other settings" not in quote.quote  # the sentence or two, not the passage
    chinese = passage("对于包含 GatedDeltaNet 层的模型，TurboMind 默认使用激活值的数据类型保存循环状态。可以用 --linear-state-dtype float32 改为 FP32。", "TurboMind 配置", "turbomind-zh.md")
    (zh,) = pick_evidence("怎么让 TurboMind 用 FP32 保存 GatedDeltaNet 的循环状态？", [chinese], None)
    assert "保存循环状态。可以用 --linear-state-dtype" in zh.quote  # Chinese sentences are joined without a space
    long_first = passage("TurboMind keeps the recurrent state " + "in a long explanation " * 17 + "here. The next sentence.", "Long", "long.md")
    (capped,) = pick_evidence("Where does TurboMind keep the recurrent state?", [long_first], None)
    assert "The next sentence" not in capped.quote  # both would pass the 400-character quote limit


def test_a_quote_that_announces_a_list_goes_on_with_its_items() -> None:
    """lmdeploy's docs: "Supported names are:" ended the quote, and the names were left out."""
    parsers = passage(
        "Please use --tool-call-parser to specify which parser to use when launching the api_server. Supported names are:\n"
        "- internlm\n- qwen\n- qwen3\n- llama3\n\nThe parser is chosen per model family.",
        "Tools Calling", "tools.md",
    )  # fmt: skip
    (quote,) = pick_evidence("Which --tool-call-parser names are supported when launching api_server?", [parsers], None)
    assert "Supported names are: internlm qwen qwen3 llama3" in quote.quote
    long_list = passage("The options are:\n" + "\n".join(f"- option number {i} with a long description of what it does" for i in range(20)), "Options", "o.md")
    (capped,) = pick_evidence("What are the options?", [long_list], None)
    assert "option number 0" in capped.quote and len(capped.quote) <= 400  # items while they fit


def test_the_extractive_answer_also_quotes_the_passage_retrieval_ranked_first() -> None:
    """The sentence picker's best may come from a lower passage; retrieval's first is quoted too."""
    lower, other = Evidence(3, "a sentence that matches the question's words", 0.8), Evidence(2, "another", 0.5)
    first = Evidence(1, "the first passage's best sentence", 0.4)
    assert [e.n for e in answer_quotes([lower, other, first])] == [3, 1]
    assert [e.n for e in answer_quotes([Evidence(1, "best", 0.8), Evidence(3, "far behind", 0.5)])] == [1]  # already there: nothing added
    assert [e.n for e in answer_quotes([lower, Evidence(2, "close", 0.75), first])] == [3, 2, 1]


def test_the_extractive_answer_quotes_with_sources_in_the_questions_language() -> None:
    evidence = pick_evidence("Who gets paged if the primary on-call does not acknowledge?", PASSAGES, similarity=None)
    answer = extractive_answer("Who gets paged if the primary on-call does not acknowledge?", evidence, PASSAGES)
    assert answer.startswith("Here is what the documents say:")
    assert "On-call guide [1]: “If the primary does not acknowledge a page within 15 minutes" in answer
    chinese = extractive_answer("出差住宿每晚可以报销多少钱？", pick_evidence("出差住宿每晚可以报销多少钱？", PASSAGES, None), PASSAGES)
    assert chinese.startswith("知识库文档中的相关内容：") and "差旅与报销政策 [2]：“" in chinese and language_of(chinese) == "zh"
    english_about_chinese = extractive_answer("How much is a hotel night in Beijing?", [pick_evidence("出差住宿", PASSAGES, None)[0]], PASSAGES)
    assert language_of(english_about_chinese) == "en" and "600" in english_about_chinese  # the frame is English, the quote stays as written


# --- the guard ------------------------------------------------------------------------------


def test_the_guard_accepts_an_answer_its_cited_passage_says() -> None:
    answer = "If the primary does not acknowledge within 15 minutes, PagerDuty escalates the page to the secondary on-call engineer [1]."
    verdict = check_answer(answer, "Who gets paged if the primary on-call does not acknowledge?", PASSAGES)
    assert verdict.ok, verdict.problems
    chinese = check_answer("一线城市住宿每晚不超过 600 元，其他城市每晚不超过 400 元 [2]。", "出差住宿每晚可以报销多少钱？", PASSAGES)
    assert chinese.ok, chinese.problems


def test_the_guard_rejects_the_readmes_contradicting_answer() -> None:
    answer = (
        "The primary on-call engineer is not the one who does not acknowledge, but rather the primary on-call engineer. "
        "The secondary on-call engineer receives a stipend for the week."
    )
    verdict = check_answer(answer, "Who gets paged if the primary on-call does not acknowledge?", PASSAGES[:1])
    assert not verdict.ok and "it cites no source" in verdict.problems
    cited = check_answer(answer.replace("week.", "week [1]."), "Who gets paged if the primary on-call does not acknowledge?", PASSAGES[:1])
    assert not cited.ok and any("receives a stipend" in p and "not in the cited passages" in p for p in cited.problems)


def test_the_guard_rejects_numbers_names_citations_and_language_the_sources_lack() -> None:
    question = "Who gets paged if the primary on-call does not acknowledge?"
    number = check_answer("PagerDuty escalates the page to the secondary on-call engineer after 45 minutes [1].", question, PASSAGES)
    assert not number.ok and any("45" in p for p in number.problems)
    name = check_answer("PagerDuty escalates the page to Alice, the secondary on-call engineer [1].", question, PASSAGES)
    assert not name.ok and any("Alice" in p for p in name.problems)
    out_of_range = check_answer("PagerDuty escalates it to the secondary on-call engineer [7].", question, PASSAGES)
    assert not out_of_range.ok and any("[7]" in p for p in out_of_range.problems)
    wrong_language = check_answer("Hotels cost at most 600 per night in Beijing [2].", "出差住宿每晚可以报销多少钱？", PASSAGES)
    assert not wrong_language.ok and "it is not in the language of the question" in wrong_language.problems
    # A Chinese number the Chinese passage lacks, in a Chinese answer.
    assert not check_answer("一线城市每晚不超过 800 元 [2]。", "出差住宿每晚可以报销多少钱？", PASSAGES).ok


# --- follow-ups -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "previous", "follows"),
    [
        ("And if they don't answer either?", "Who gets paged if the primary does not acknowledge?", True),
        ("What about weekends?", "When is the standup?", True),
        ("那其他城市呢？", "北京出差住宿每晚可以报销多少钱？", True),
        ("出差住宿每晚可以报销多少钱？", "Who gets paged if the primary on-call does not acknowledge?", False),  # another language: a new topic
        ("How many approvals does a pull request need?", "Who gets paged if the primary does not acknowledge?", False),
        ("What will the weather be like in Paris tomorrow?", "How many approvals does a pull request need?", False),
    ],
)
def test_follow_ups_and_topic_switches(question: str, previous: str, follows: bool) -> None:
    assert is_follow_up(question, [Turn(previous, "an answer [1].")]) is follows
    assert is_follow_up(question, []) is False
