"""`teambot eval`: the metrics on hand-made results whose right numbers are known, the fitted
relevance bar on scores with a known best bar, the question-set file's errors, feedback export
from a real answer log, and the command on the sample knowledge base with CI floors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from bot.answer_log import AnswerLog
from bot.core import AnswerDone
from bot.evaluation.calibrate import Found, Searched, fit, fits, score_rule
from bot.evaluation.report import calibration_lines
from bot.evaluation.questions import EvalItem, QuestionSetError, load_question_set
from bot.evaluation.replay import numbered, pieces
from bot.evaluation.scoring import ItemResult, contains, has_facts, refusals, says_it_does_not_know, summarize
from bot.evaluation.variants import _kv_cache_mib, parse_variant
from config.errors import ConfigError
from config.settings import Settings, load_settings
from inference.client import Endpoint
from rag.search.relevance import RelevanceRule
from tests.conftest import REPO
from tests.test_cli import external, run, teambot_env

KNOWLEDGE_SET = REPO / "examples" / "eval" / "knowledge.yaml"
# Retrieval on the sample knowledge base as measured (docs/benchmarks.md): a change that makes
# retrieval or refusals worse fails CI. Before evidence, the guard and multilingual-e5-small
# (2026-11-25, first measurement) they were hit@4 0.61, MRR 0.61, refusal F1 0.48; before each
# language's mean was taken out of e5's cosines (2026-11-26) 0.64, 0.64 and 0.54; before the
# question's words were translated (issue 24, 2026-12-04) 0.74, 0.74 and 0.62 (now 0.86, 0.85, 0.68).
RETRIEVAL_FLOORS = {"--min-hit-at-k": "0.82", "--min-mrr": "0.80", "--min-refusal-f1": "0.64"}
# Whole answers with the shipped model, `auto` mode: the code before evidence and the guard
# measured facts 0.18, refusal F1 0.48, hit@4 0.61, and before the language means facts 0.56,
# refusal F1 0.54, hit@4 0.64 (docs/benchmarks.md), so both fail these.
ANSWER_FLOORS = {"--min-fact-accuracy": "0.58", "--min-hit-at-k": "0.70", "--min-refusal-f1": "0.58", "--min-language-match": "0.95"}


def item(id: str, **fields) -> EvalItem:  # type: ignore[no-untyped-def]
    return EvalItem(id=id, question=fields.pop("question", f"question {id}?"), **fields)


# --- the metrics ----------------------------------------------------------------------------


def test_retrieval_and_refusal_metrics_on_a_known_set() -> None:
    results = [
        ItemResult(item("a", expect_sources=("a.md",)), paths=["a.md", "b.md"]),  # rank 1
        ItemResult(item("b", expect_sources=("b.md",)), paths=["a.md", "x.md", "b.md"]),  # rank 3
        ItemResult(item("c", expect_sources=("c.md", "c2.md")), paths=["x.md", "c2.md"]),  # rank 2 (any expected file)
        ItemResult(item("d", expect_sources=("d.md",)), refused=True),  # refused: a miss, and a false refusal
        ItemResult(item("e", refuse=True), refused=True),  # true refusal
        ItemResult(item("f", refuse=True), paths=["a.md"]),  # answered: a missed refusal
        ItemResult(item("g", refuse=True), refused=True),  # true refusal
    ]
    summary = summarize(results, k=2)
    assert summary.with_sources == 4
    assert summary.hit_at_1 == pytest.approx(1 / 4)
    assert summary.hit_at_k == pytest.approx(2 / 4)  # ranks 1 and 2 are within k = 2; rank 3 is not
    assert summary.mrr == pytest.approx((1 + 1 / 3 + 1 / 2 + 0) / 4)
    assert (summary.refusal.true_positive, summary.refusal.false_positive, summary.refusal.false_negative) == (2, 1, 1)
    assert summary.refusal.precision == pytest.approx(2 / 3) and summary.refusal.recall == pytest.approx(2 / 3)
    assert summary.refusal.f1 == pytest.approx(2 / 3)
    assert summary.fact_accuracy is None and summary.citation_precision is None  # retrieval only: no answers


def test_fact_accuracy_and_citation_precision_on_known_answers() -> None:
    facts = {"expect_sources": ("oncall.md",), "expect_facts": ("15 minutes", "secondary")}
    passages = ["After 15 minutes the secondary on-call engineer is paged.", "Stipends are paid weekly."]
    results = [
        # both facts, cites the passage with them: right, 1 of 1 citations good
        ItemResult(item("a", **facts), paths=["oncall.md", "pay.md"], texts=passages, answer="The secondary, after 15 Minutes [1].", cited=[1]),
        # one fact missing (all are needed); cites both passages: 1 of 2 citations good
        ItemResult(item("b", **facts), paths=["oncall.md", "pay.md"], texts=passages, answer="The secondary one [1][2].", cited=[1, 2]),
        # any one of the facts is enough; full-width digits and extra spaces still match; cites nothing
        ItemResult(item("c", **facts, facts="any"), paths=["oncall.md"], texts=passages[:1], answer="１５  minutes.", cited=[]),
        # refused: wrong, whatever it says
        ItemResult(item("d", **facts), refused=True, answer="I don't know: nothing matches."),
        # a question to refuse: no fact to check
        ItemResult(item("e", refuse=True), refused=True, answer="I don't know."),
    ]
    summary = summarize(results, k=4)
    assert [r.fact_ok for r in results] == [True, False, True, False, None]
    assert summary.fact_accuracy == pytest.approx(2 / 4)
    assert summary.citation_precision == pytest.approx((1 + 1) / (1 + 2))
    assert summary.cited_share == pytest.approx(2 / 3)  # of the three answered, two cite a passage
    assert summary.language_match == 1.0


def test_fact_matching_rules() -> None:
    assert contains("每晚不超过 600 元", "600元") and contains("Acknowledge within 5\nminutes", "5 minutes")
    assert not contains("see [2] above", "2")  # a citation mark is not a fact
    assert has_facts("SEV1 and SEV2", ["sev1", "sev2"], "all") and not has_facts("SEV1 only", ["SEV1", "SEV2"], "all")
    assert has_facts("SEV2", ["SEV1", "SEV2"], "any")
    assert says_it_does_not_know("I don't know: nothing in the knowledge base matches this question.")
    assert says_it_does_not_know("我不知道：知识库里没有与这个问题相关的内容。")
    assert not says_it_does_not_know("PagerDuty escalates it to the secondary on-call engineer [1].")


def test_refusal_f1_is_undefined_without_refusals() -> None:
    counts = refusals([ItemResult(item("a", expect_sources=("a.md",)), paths=["a.md"])])
    assert counts.precision is None and counts.recall is None and counts.f1 is None


# --- calibration ----------------------------------------------------------------------------


def found(path: str, score: float, **features: float) -> Found:
    """A passage whose hybrid score is ``score`` (its features: vector = keyword = score unless given)."""
    return Found(path, score, {"vector": score, "keyword": score, **features})


BAR_03 = RelevanceRule.bar(0.3, 0.7)


def test_calibration_finds_the_bar_that_separates_the_questions() -> None:
    answerable = [Searched(item(f"a{k}", expect_sources=("a.md",)), [found("a.md", s)]) for k, s in enumerate((0.62, 0.58, 0.55))]
    offtopic = [Searched(item(f"o{k}", refuse=True), [found("a.md", s)]) for k, s in enumerate((0.41, 0.44, 0.47))]
    searched = answerable + offtopic
    before = score_rule(searched, BAR_03)
    assert before.refusal.f1 == 0.0 and before.hit_at_k == 1.0  # nothing is refused at 0.3
    fitted = fit(searched, BAR_03, vector_weight=0.7)
    assert fitted.bar is not None
    assert 0.47 < -fitted.bar.rule.bias < 0.55  # anywhere between the highest off-topic and the lowest answerable score
    assert fitted.bar.refusal.f1 == 1.0 and fitted.bar.hit_at_k == 1.0
    assert fitted.after.refusal.f1 == 1.0 and fitted.after.hit_at_k == 1.0  # the rule separates them as well
    assert fitted.before.rule == BAR_03


def test_calibration_keeps_the_right_passages_where_the_f1_ties() -> None:
    # Any bar between 0.45 and 0.5 refuses the off-topic question; above 0.5 the answerable one loses its passage.
    answerable = Searched(item("a", expect_sources=("a.md",)), [found("b.md", 0.62), found("a.md", 0.5)])
    offtopic = Searched(item("o", refuse=True), [found("b.md", 0.45)])
    fitted = fit([answerable, offtopic], BAR_03, vector_weight=0.7)
    assert fitted.bar is not None
    assert 0.45 < -fitted.bar.rule.bias <= 0.5 and fitted.bar.refusal.f1 == 1.0 and fitted.bar.hit_at_k == 1.0


def test_calibration_finds_a_rule_no_single_bar_finds() -> None:
    # Known best rule: relevant when keyword coverage >= 0.5, whatever the cosine. The cosines of the
    # questions to refuse are as high as the answerable ones' (near misses), so no bar on the hybrid
    # score separates them; a rule weighing the keyword coverage does.
    answerable, refused = [], []
    for k in range(12):
        vector = 0.3 + 0.03 * k
        answerable.append(Searched(item(f"a{k}", expect_sources=("a.md",)), [found("a.md", 0.7 * vector + 0.3 * 0.8, vector=vector, keyword=0.6 + 0.02 * k)]))
        refused.append(Searched(item(f"o{k}", refuse=True), [found("a.md", 0.7 * (vector + 0.1) + 0.3 * 0.2, vector=vector + 0.1, keyword=0.1 + 0.02 * k)]))
    searched = answerable + refused
    fitted = fit(searched, BAR_03, vector_weight=0.7)
    assert fitted.bar is not None and fitted.bar.refusal.f1 is not None and fitted.bar.refusal.f1 < 0.9
    assert fitted.after.refusal.f1 == 1.0 and fitted.after.hit_at_k == 1.0
    rule = fitted.after.rule
    assert rule.weights["keyword"] > abs(rule.weights["vector"])  # the rule reads the keyword coverage first
    # The fitted rule, as rag.relevance, is what the settings accept.
    settings = Settings.model_validate({"rag": {"relevance": rule.to_setting()}})
    assert RelevanceRule.from_setting(settings.rag.relevance).passes({"vector": 0.3, "keyword": 0.7})


def test_the_printed_rule_is_a_line_for_the_settings_file(tmp_path: Path) -> None:
    """`teambot eval --calibrate` prints each fitted rule as a `[rag]` line a team pastes into teambot.toml."""
    answerable = [Searched(item(f"a{k}", expect_sources=("a.md",)), [found("a.md", 0.5, keyword=0.8, absent=0.0)]) for k in range(4)]
    refused = [Searched(item(f"o{k}", refuse=True), [found("a.md", 0.5, keyword=0.1, absent=0.5)]) for k in range(4)]
    fitted = fits(answerable + refused, BAR_03, vector_weight=0.7)
    line = next(x for x in calibration_lines(fitted) if x.strip().startswith("all: [rag] relevance = "))
    config = tmp_path / "teambot.toml"
    config.write_text("[rag]\n" + line.split("[rag] ", 1)[1] + "\n", encoding="utf-8")
    settings = load_settings(config)
    assert settings.rag.relevance == fitted[0].after.rule.to_setting() and settings.rag.min_score is None
    rule = RelevanceRule.from_setting(settings.rag.relevance)
    assert all(rule.passes(s.found[0].features) for s in answerable) and not any(rule.passes(s.found[0].features) for s in refused)


def test_a_rule_and_a_single_bar_together_are_refused_with_both_names() -> None:
    with pytest.raises(ValueError, match=r"rag\.min_score.*rag\.relevance"):
        Settings.model_validate({"rag": {"relevance": {"bias": -0.3, "vector": 1.0}, "min_score": 0.3}})
    with pytest.raises(ValueError, match="unknown feature cosine"):
        Settings.model_validate({"rag": {"relevance": {"bias": -0.3, "cosine": 1.0}}})


# --- the question-set file ------------------------------------------------------------------


def test_the_shipped_sets_load() -> None:
    knowledge = load_question_set(KNOWLEDGE_SET)
    assert len(knowledge.items) >= 40 and not knowledge.skipped
    kinds = {i.kind for i in knowledge.items}
    assert {"direct", "paraphrase", "cross-lingual", "off-topic", "follow-up", "topic-switch"} <= kinds
    for language in ("en", "zh"):
        assert sum(i.refuse and i.language == language for i in knowledge.items) >= 10
    docs = load_question_set(REPO / "examples" / "eval" / "lmdeploy-docs.yaml")
    assert len(docs.items) >= 60


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("items:\n  - {question: 'a?', expect_source: [a.md]}\n", "unknown key(s) expect_source"),
        ("items:\n  - {expect_sources: [a.md]}\n", "item 1 has no question"),
        ("items:\n  - {id: x, question: 'a?', refuse: true, expect_facts: [b]}\n", "item 'x' expects a refusal and also sources or facts"),
        ("items:\n  - {id: x, question: 'a?', facts: some, expect_facts: [b]}\n", "facts = 'some'"),
        ("items:\n  - {id: x, question: 'a?', refuse: true}\n  - {id: x, question: 'b?', refuse: true}\n", "repeats the id 'x'"),
        ("items: [{question: 'a?', history: [{question: q}]}]\n", "every history turn needs a question and an answer"),
        ("items: [oops\n", "is not valid YAML"),
        ("name: x\n", "has no list of items"),
    ],
)
def test_a_malformed_question_set_is_refused_clearly(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "set.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(QuestionSetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_question_set(path)


def laughing_set(levels: int = 6, fanout: int = 9) -> str:
    """A question set whose last id is an alias of aliases: fanout ** levels strings once printed
    (9 ** 6: about 4 MB here; 9 levels of 9 are gigabytes from under 600 bytes)."""
    lines = ["name: laughs", "items:", "  - {id: l0, question: 'Who is paged?', refuse: true, notes: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]}"]
    for level in range(1, levels):
        refs = ", ".join([f"*l{level - 1}"] * fanout)
        lines.append(f"  - {{id: l{level}, question: 'Question {level}?', refuse: true, notes: &l{level} [{refs}]}}")
    lines.append(f"  - {{id: *l{levels - 1}, question: 'The last?', refuse: true}}")
    return "\n".join(lines) + "\n"


def test_a_question_set_with_yaml_aliases_is_refused_before_they_expand(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(laughing_set(), encoding="utf-8")
    with pytest.raises(QuestionSetError) as caught:
        load_question_set(path)
    assert caught.value.message == f"{path}, line 4: the YAML alias *l0 is refused in a question set"
    assert caught.value.hint == "write out in full what &l0 names wherever it is used"
    refused = run(["eval", str(path)], teambot_env(settings))
    assert refused.returncode == 1 and "the YAML alias *l0 is refused" in refused.stderr and "Traceback" not in refused.stderr


def test_a_question_set_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    limit = 5 * 1024 * 1024  # MAX_SET_MB
    path = tmp_path / "big.jsonl"
    item = json.dumps({"id": "a", "question": "Who is paged?", "refuse": True})
    path.write_text(item + "\n" + " " * limit, encoding="utf-8")  # valid, and over the limit
    with pytest.raises(QuestionSetError) as caught:
        load_question_set(path)
    assert caught.value.message == f"{path} is 5.0 MB, over the limit of 5 MB for a question set"
    assert caught.value.hint == "split it into several sets and run `teambot eval` on each"
    path.write_text(item + "\n" + " " * (limit - len(item) - 1), encoding="utf-8")  # at the limit: read
    assert [i.id for i in load_question_set(path).items] == ["a"]


def test_jsonl_sets_and_items_with_nothing_to_check(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    lines = [
        {"id": "a", "question": "Who is paged?", "expect_sources": ["oncall-guide.md"], "history": [{"question": "q", "answer": "a"}]},
        {"id": "todo", "question": "An exported question nobody completed"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    loaded = load_question_set(path)
    assert [i.id for i in loaded.items] == ["a"] and loaded.skipped == ["todo"]
    assert loaded.items[0].history[0].question == "q" and loaded.items[0].language == "en"


def test_variant_specs() -> None:
    variant = parse_variant("int4:inference.lmdeploy.quant_policy=4, inference.lmdeploy.model_path=/models/x")
    assert variant.name == "int4" and variant.values == {"inference.lmdeploy.quant_policy": "4", "inference.lmdeploy.model_path": "/models/x"}
    with pytest.raises(ConfigError, match="is not NAME:key=value"):
        parse_variant("just-a-name")


def test_the_kv_cache_size_is_read_once_from_the_server_log() -> None:
    start = (
        "llama_kv_cache:        CPU KV buffer size =    47.81 MiB\n"
        "llama_kv_cache: size =   47.81 MiB (  4096 cells,  30 layers,  1/1 seqs), K (q8_0):   23.91 MiB, V (q8_0):   23.91 MiB\n"
    )
    assert _kv_cache_mib(start) == 47.81  # the total, not the total plus its buffer
    assert _kv_cache_mib("llama_kv_cache: CUDA0 KV buffer size = 10.00 MiB\nllama_kv_cache: CPU KV buffer size = 2.50 MiB\n") == 12.5
    assert _kv_cache_mib("no such line") is None


# --- the command ----------------------------------------------------------------------------


def test_eval_retrieval_only_on_the_sample_set_meets_the_ci_floors(indexed_settings: Settings) -> None:
    env = teambot_env(indexed_settings)  # eval only reads the index
    floors = [arg for pair in RETRIEVAL_FLOORS.items() for arg in pair]
    result = run(["eval", str(KNOWLEDGE_SET), "--retrieval-only", "--json", *floors], env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    summary = report["summary"]
    assert summary["questions"] == len(load_question_set(KNOWLEDGE_SET).items) and summary["errors"] == 0
    assert report["missed_floors"] == [] and summary["fact_accuracy"] is None
    assert set(report["by_language"]) == {"en", "zh"} and "off-topic" in report["by_kind"]
    assert {"id", "rank", "refused", "sources", "timings_ms"} <= report["items"][0].keys()

    strict = run(["eval", str(KNOWLEDGE_SET), "--retrieval-only", "--min-hit-at-k", "0.999"], env)
    assert strict.returncode == 1 and "floor missed: hit_at_k =" in strict.stderr
    assert "hit@k" in strict.stdout and "lang zh" in strict.stdout  # the text report


def test_eval_answers_with_the_real_model(indexed_settings: Settings, tmp_path: Path, llamacpp_endpoint: Endpoint) -> None:
    questions = tmp_path / "three.yaml"
    questions.write_text(
        yaml.safe_dump({"name": "three", "items": [
            {"id": "page", "question": "Who gets paged if the primary on-call does not acknowledge?", "expect_sources": ["oncall-guide.md"],
             "expect_facts": ["secondary"]},
            {"id": "hotel", "question": "出差住宿每晚可以报销多少钱？", "expect_sources": ["expense-policy-zh.md"], "expect_facts": ["600", "400"], "facts": "any"},
            {"id": "tungsten", "question": "What is the boiling point of tungsten?", "refuse": True},
        ]}, allow_unicode=True),
        encoding="utf-8",
    )  # fmt: skip
    env = teambot_env(indexed_settings, **external(llamacpp_endpoint), TEAMBOT_INFERENCE__MAX_TOKENS="96")
    result = run(["eval", str(questions), "--json"], env, timeout=900)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    items = {i["id"]: i for i in report["items"]}
    assert items["tungsten"]["refused"] and items["tungsten"]["answer"].startswith("I don't know")
    assert items["page"]["rank"] == 1 and items["page"]["answer"] and not items["page"]["error"]
    latency = report["summary"]["latency_ms"]
    assert latency["first_text"]["p50"] <= latency["total"]["p50"] and latency["retrieve"]["p50"] > 0
    assert report["summary"]["refusal"]["true_positive"] == 1


def test_export_feedback_turns_voted_down_answers_into_items(settings: Settings, tmp_path: Path) -> None:
    log = AnswerLog(settings.data_dir / "answers.sqlite")
    try:
        liked = log.record("slack", "C1", "1.0", "U1", "Where is the bike room?", AnswerDone("In the basement [1].", [], [1], True))
        disliked = log.record("discord", "C2", "", "U2", "Who approves hotfixes?", AnswerDone("The intern.", [], [], True))
        log.vote(liked, "U3", "up")
        log.vote(disliked, "U3", "down")
        log.vote(disliked, "U4", "down")
    finally:
        log.close()
    env = teambot_env(settings)
    out = tmp_path / "feedback.yaml"
    result = run(["eval", "export-feedback", "--out", str(out)], env)
    assert result.returncode == 0, result.stderr
    exported = yaml.safe_load(out.read_text(encoding="utf-8"))
    (only,) = exported["items"]
    assert only["question"] == "Who approves hotfixes?" and only["kind"] == "feedback" and only["id"] == f"feedback-{disliked[:8]}"
    assert "2 👎" in only["notes"] and "The intern." in only["notes"]
    # Until an admin completes it, the item is skipped: a set of only such items has nothing to run.
    with pytest.raises(QuestionSetError, match="has no question with something to check"):
        load_question_set(out)
    stdout = run(["eval", "export-feedback"], env)
    assert stdout.returncode == 0 and "Who approves hotfixes?" in stdout.stdout and "bike room" not in stdout.stdout


def test_eval_of_whole_answers_with_the_shipped_model_meets_the_ci_floors(indexed_settings: Settings, llamacpp_endpoint: Endpoint) -> None:
    """The sample set, answered by the real SmolLM2 through llama.cpp, in the default `auto` mode."""
    # The model's own time is not what is measured: a loaded machine must not turn its answers into quotes.
    env = teambot_env(indexed_settings, **external(llamacpp_endpoint), TEAMBOT_INFERENCE__MAX_TOKENS="128", TEAMBOT_BOT__GENERATION_TIMEOUT_S="3000")
    floors = [arg for pair in ANSWER_FLOORS.items() for arg in pair]
    result = run(["eval", str(KNOWLEDGE_SET), "--json", *floors], env, timeout=3000)
    report = json.loads(result.stdout)
    assert result.returncode == 0, f"{report['missed_floors']}\n{result.stderr[-2000:]}"
    summary = report["summary"]
    assert summary["errors"] == 0 and summary["rejected_shown"] == 0  # no answer the guard rejected reached a user
    modes = {item["mode"] for item in report["items"]}
    assert modes <= {"generative", "extractive", "not-found"} and "extractive" in modes
    assert all(item["guard_ok"] is not False for item in report["items"] if item["mode"] == "generative")



# --- written model answers (--model-answers) ---------------------------------------------------

# What users read of the sample set's 192 written answers (docs/benchmarks.md, "What users read when a capable model
# answers"): the guard before it judged correct answers shown 0.79, blatant 0.90, binding 0.52, refusals kept 0.00.
# Issue 24's translated question words brought 12 more answers to the guard (cross-lingual questions retrieval used
# to refuse): correct answers shown rose from 73 to 80 of 101, but the guard replaces 6 correct cross-lingual answers
# by quotes, so their share among the answers the guard judged fell from 0.97 to 0.92 (zh 0.87, across languages 0.74).
# The guard's cross-language rule (a window holding the sentence's amounts and Latin words), weekdays as quantities and
# clauses cut after a number brought it to 82/87 = 0.94 (en 0.96, zh 0.90, across languages 0.83; 82 of all 101), and
# binding blocked from 22/32 to 23/32 (docs/benchmarks.md, "Why the guard rejected correct answers").
MODEL_ANSWER_FLOORS = {"--min-correct-shown": "0.92", "--min-blatant-blocked": "0.97", "--min-binding-blocked": "0.70", "--min-refusals-kept": "1.0"}


def replayed_sample_set(env: dict[str, str], floors: list[str]) -> dict:  # type: ignore[type-arg]
    """`teambot eval --model-answers --json` on the sample set with ``floors``: its report, every floor met."""
    result = run(["eval", str(KNOWLEDGE_SET), "--model-answers", "--json", *floors], env, timeout=900)
    report = json.loads(result.stdout)
    assert result.returncode == 0, f"{report['missed_floors']}\n{result.stderr[-2000:]}"
    return report


def test_eval_model_answers_on_the_sample_set_meets_the_ci_floors(indexed_settings: Settings) -> None:
    report = replayed_sample_set(teambot_env(indexed_settings), [arg for pair in MODEL_ANSWER_FLOORS.items() for arg in pair])
    rows = report["model_answers"]["rows"]
    for language in ("lang en", "lang zh"):
        assert rows[language]["correct"]["share_reached"] >= 0.88, (language, rows[language]["correct"])
    assert rows["answers across languages"]["correct"]["share_reached"] >= 0.8
    assert report["model_answers"]["summary"]["correct"]["share"] >= 0.79  # of all 101 correct answers, shown as written (0.72 before issue 24)
    # the questions as their right answers left them (retrieval's refusals and the model's): en 0.81, zh 0.92 measured
    assert rows["lang en"]["right_answers_refusal"]["f1"] >= 0.8 and rows["lang zh"]["right_answers_refusal"]["f1"] >= 0.9


def test_with_a_capable_model_judging_more_right_answers_reach_the_user(indexed_settings: Settings) -> None:
    """rag.model_floor = 0.2 (issue 24): the sample set's questions in other words that the bar refused reach the
    model; its written answers measured (docs/benchmarks.md): correct shown 82 -> 88 of 101, paraphrases 11 -> 15 of
    21, refusal F1 of the right answers en 0.81 -> 0.89, zh 0.92 -> 0.97; every blatant answer still blocked and
    every honest refusal kept."""
    floors = ["--min-correct-shown", "0.92", "--min-blatant-blocked", "1.0", "--min-refusals-kept", "1.0"]
    report = replayed_sample_set(teambot_env(indexed_settings, TEAMBOT_RAG__MODEL_FLOOR="0.2"), floors)
    summary, rows = report["model_answers"]["summary"], report["model_answers"]["rows"]
    assert summary["correct"]["ok"] >= 87 and rows["paraphrase"]["correct"]["ok"] >= 15, (summary["correct"], rows["paraphrase"]["correct"])
    assert summary["blatant"]["ok"] == summary["blatant"]["of"] and summary["refusal"]["ok"] == summary["refusal"]["of"]
    assert rows["lang en"]["right_answers_refusal"]["f1"] >= 0.85 and rows["lang zh"]["right_answers_refusal"]["f1"] >= 0.95


def test_with_a_capable_model_writing_the_search_queries_more_right_answers_reach_the_user(indexed_settings: Settings) -> None:
    """bot.rewrite_question (issue 24): the sample set's written search queries (model_rewrite) replayed with its
    written answers, measured (docs/benchmarks.md): correct shown 82 -> 93 of 101, paraphrases 11 -> 18 of 21,
    hit@4 of what the model was shown 0.87 -> 0.99, refusal F1 of the right answers en 0.81 -> 1.00, zh 0.92 -> 1.00;
    every blatant answer still blocked and every honest refusal kept."""
    floors = ["--min-correct-shown", "0.92", "--min-blatant-blocked", "1.0", "--min-refusals-kept", "1.0", "--min-hit-at-k", "0.97"]
    report = replayed_sample_set(teambot_env(indexed_settings, TEAMBOT_BOT__REWRITE_QUESTION="true"), floors)
    summary, rows = report["model_answers"]["summary"], report["model_answers"]["rows"]
    assert summary["correct"]["ok"] >= 92 and rows["paraphrase"]["correct"]["ok"] >= 17, (summary["correct"], rows["paraphrase"]["correct"])
    assert summary["blatant"]["ok"] == summary["blatant"]["of"] and summary["refusal"]["ok"] == summary["refusal"]["of"]
    assert rows["lang en"]["right_answers_refusal"]["f1"] >= 0.95 and rows["lang zh"]["right_answers_refusal"]["f1"] >= 0.95

ACK = "How quickly do I have to acknowledge a page?"
SMALL_SET = {
    "name": "written",
    "items": [
        {"id": "ack", "kind": "direct", "question": ACK, "expect_sources": ["oncall-guide.md"], "expect_facts": ["5 minutes"], "model_answers": [
            {"text": "Within 5 minutes, even if you can't start work on it yet [oncall-guide.md].", "correct": True},
            {"text": "You have 15 minutes to acknowledge a page [oncall-guide.md].", "correct": False, "wrong": "binding"},
            {"text": "Within 2 minutes, through Opsgenie [oncall-guide.md].", "correct": False, "wrong": "blatant"},
        ]},
        {"id": "hotel-shanghai", "kind": "cross-lingual", "question": "How much can I claim per night for a hotel in Shanghai?",
         "expect_sources": ["expense-policy-zh.md"], "expect_facts": ["600"], "model_answers": [
            {"text": "Up to 600 yuan per night: Shanghai is a first-tier city [expense-policy-zh.md].", "correct": True},
            {"text": "Up to 600 yuan per night [faq.txt].", "correct": True},  # cites a file retrieval did not bring
        ]},
        {"id": "stipend", "kind": "off-topic", "question": "What is the on-call stipend amount in euros?", "refuse": True, "model_answers": [
            {"text": "The documents don't give the stipend amount; the on-call guide only says engineers receive a stipend for each week on call [oncall-guide.md].", "correct": True},
            {"text": "The on-call stipend is 250 euros for each week on call [oncall-guide.md].", "correct": False, "wrong": "blatant"},
        ]},
        {"id": "weather", "kind": "off-topic", "question": "What will the weather be like in Paris tomorrow?", "refuse": True, "model_answers": [
            {"text": "I don't know.", "correct": True},  # nothing passes the relevance bar: the model is never asked
        ]},
    ],
}  # fmt: skip


def test_eval_model_answers_replays_written_answers_through_the_answer_flow(indexed_settings: Settings, tmp_path: Path) -> None:
    questions = tmp_path / "written.yaml"
    questions.write_text(yaml.safe_dump(SMALL_SET, allow_unicode=True), encoding="utf-8")
    floors = ["--min-correct-shown", "1", "--min-blatant-blocked", "1", "--min-binding-blocked", "1", "--min-refusals-kept", "1"]
    result = run(["eval", str(questions), "--model-answers", "--json", *floors], teambot_env(indexed_settings))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    summary = report["model_answers"]["summary"]
    assert (summary["correct"]["ok_reached"], summary["correct"]["reached"], summary["correct"]["of"]) == (2, 2, 3)  # [faq.txt] was not retrieved
    assert summary["cited_missing"] == 1 and summary["not_asked"] == 1
    assert (summary["blatant"]["ok"], summary["blatant"]["of"]) == (2, 2) and (summary["binding"]["ok"], summary["binding"]["of"]) == (1, 1)
    assert (summary["refusal"]["ok_reached"], summary["refusal"]["reached"], summary["refusal"]["ok"]) == (1, 1, 2)
    # the questions as their right answers left them: both to refuse were refused (one by the model), none of the others
    assert summary["right_answers_refusal"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    answers = {(a["id"], a["text"][:12]): a for a in report["model_answers"]["answers"]}
    binding = answers[("ack", "You have 15 ")]
    assert binding["outcome"] == "replaced" and any("puts 15 minutes where the cited passage has 5 minutes" in p for p in binding["problems"])
    shown = answers[("ack", "Within 5 min")]
    assert shown["outcome"] == "shown" and shown["shown_text"].endswith("[1].") and "[oncall-guide.md]" not in shown["shown_text"]
    assert answers[("hotel-shanghai", "Up to 600 yu")]["crosses_languages"]
    assert answers[("stipend", "The document")]["outcome"] == "refused" and answers[("weather", "I don't know")]["model_asked"] is False
    assert shown["prompt_chars"] > len(shown["shown_text"]) and answers[("weather", "I don't know")]["prompt_chars"] is None  # what the model was sent
    assert 0 < summary["prompt_chars"]["p50"] <= summary["prompt_chars"]["p90"]
    assert "answers across languages" in report["model_answers"]["rows"] and "lang en" in report["model_answers"]["rows"]

    text = run(["eval", str(questions), "--model-answers", "--min-correct-shown", "1", "--min-blatant-blocked", "1"], teambot_env(indexed_settings))
    assert text.returncode == 0 and "correct shown" in text.stdout and "binding blocked" in text.stdout and "refusal F1" in text.stdout
    without = tmp_path / "none.yaml"
    without.write_text(yaml.safe_dump({"items": [{"question": "a?", "refuse": True}]}), encoding="utf-8")
    nothing = run(["eval", str(without), "--model-answers"], teambot_env(indexed_settings))
    assert nothing.returncode == 2 and "has no model_answers" in nothing.stderr


def test_a_written_answer_that_is_malformed_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "set.yaml"
    for answers, message in (
        ([{"text": "x", "correct": "yes"}], "correct = 'yes'"),
        ([{"text": "x", "correct": False}], "wrong = None"),
        ([{"text": "x", "correct": True, "wrong": "binding"}], "is correct and also wrong"),
        ([{"correct": True}], "has no text"),
        ([{"text": "x", "correct": True, "label": "a"}], "unknown key(s) label"),
    ):
        path.write_text(yaml.safe_dump({"items": [{"id": "a", "question": "q?", "refuse": True, "model_answers": answers}]}), encoding="utf-8")
        with pytest.raises(QuestionSetError, match=re.escape(message)):
            load_question_set(path)


def test_the_replay_cites_the_passages_it_was_shown_by_number() -> None:
    prompt = "Context passages:\n\n[1] On-call guide (oncall-guide.md, Paging)\ntext\n\n[2] 差旅 (expense-policy-zh.md)\nx\n\n[3] On-call guide (oncall-guide.md, Rotation)\ny"
    assert numbered("Acknowledge within 5 minutes [oncall-guide.md].", prompt) == "Acknowledge within 5 minutes [1][3]."
    assert numbered("600 元 [expense-policy-zh.md]。See [faq.txt] and [release.rst].", prompt) == "600 元 [2]。See [4] and [5]."  # not shown: past the last
    text = "出差期间每天有 100 元餐补，不需要提供发票 [2]。Yes, swaps are fine."
    assert "".join(pieces(text)) == text and len(list(pieces(text))) > 5


def test_the_shipped_sets_carry_written_answers_of_every_kind() -> None:
    counts: dict[str, int] = {}
    crossing = 0
    for path in (KNOWLEDGE_SET, REPO / "examples" / "eval" / "lmdeploy-docs.yaml"):
        for item in load_question_set(path).items:
            for answer in item.model_answers:
                label = answer.label(item.refuse)
                counts[label] = counts.get(label, 0) + 1
                crossing += label == "correct" and item.kind == "cross-lingual"
    assert sum(counts.values()) >= 150 and counts["correct"] >= 60 and crossing >= 20
    assert counts["blatant"] + counts["binding"] >= 40 and counts["binding"] >= 20 and counts["refusal"] >= 20
