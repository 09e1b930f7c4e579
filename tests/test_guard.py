"""The grounding guard's checks, each on hand-made passages: numbers as quantities across units
and languages, names across languages, wrong bindings in English and Chinese, refusals with and
without citations, "Yes." openers, and answers shown without the sentence that failed."""

from __future__ import annotations

import pytest

from bot.guard import LEFT_OUT, check_answer
from bot.guard.quantities import quantities
from bot.guard.refusal import is_refusal, says_it_does_not_know
from rag.search.retriever import Passage
from tests.test_grounding import ONCALL, passage

ROTATION = """The rotation is one week long. Handoff happens every Monday at 10:00 in the #oncall channel.

Each week has a primary and a secondary on-call engineer. Swaps are fine: agree on them with
your teammate and update the schedule in PagerDuty before the shift starts."""
HOTEL = """出差住宿按城市分级报销：一线城市（北京、上海、广州、深圳）住宿标准为每晚不超过 600 元，
其他城市每晚不超过 400 元。超出标准的部分需要部门负责人书面批准，否则由员工自行承担。

出差期间每天发放餐补 100 元，无需提供发票。"""
SECURITY = "Install operating system updates within seven days of their release. Report a lost laptop to security@example.com within one hour."


EN = [passage(ONCALL, "On-call guide", "oncall-guide.md"), passage(ROTATION, "On-call guide", "oncall-guide.md")]
ZH = [passage(HOTEL, "差旅与报销政策", "expense-policy-zh.md")]


def verdict(answer: str, question: str, passages: list[Passage]):  # type: ignore[no-untyped-def]
    return check_answer(answer, question, passages)


# --- numbers as quantities --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("600 yuan", "600 元"), ("RMB 600", "600 元"), ("¥600", "600 块"), ("10 am", "10:00"), ("2 pm", "14:00"), ("下午两点", "14:00"),
        ("seven calendar days", "7 天"), ("one week", "7 days"), ("six hours", "六小时"), ("five working days", "5 个工作日"),
        ("December 20", "12 月 20 日"), ("9:30", "九点半"), ("every hour", "每小时"), ("the 15th", "15 日"),
    ],
)  # fmt: skip
def test_the_same_amount_in_other_units_and_languages_is_one_quantity(one: str, other: str) -> None:
    [a], [b] = quantities(one), quantities(other)
    assert a.same(b), (a, b)


def test_digits_in_names_and_versions_are_no_quantities() -> None:
    assert quantities("SEV1 and SEV2 on int8 with llama2-7b, v0.6.0 and A100-80G") == []
    assert [q.text for q in quantities("Use --quant-policy 8 and one of the reviewers; two approving reviews")] == ["8", "two"]


def test_an_english_answer_about_the_chinese_policy_is_checked_in_yuan() -> None:
    question = "How much can I claim per night for a hotel in Shanghai?"
    assert verdict("Up to 600 yuan per night, since Shanghai is a first-tier city [1].", question, ZH).ok
    assert verdict("Up to RMB 600 a night [1].", question, ZH).ok
    wrong = verdict("Up to 800 yuan per night [1].", question, ZH)
    assert not wrong.ok and any(p.check == "numbers" and "800 yuan" in p.why for p in wrong.failures)


def test_a_chinese_answer_about_the_english_guide_is_checked_in_minutes() -> None:
    question = "值班工程师需要在多长时间内确认告警？"
    assert verdict("需要在 5 分钟内确认告警，即使暂时还不能开始处理 [1]。", question, EN).ok
    assert verdict("每周一上午 10 点交接 [2]。", "值班交接是每周什么时候？", EN).ok
    assert not verdict("需要在 10 分钟内确认告警 [1]。", question, EN).ok


def test_a_count_the_answer_lists_itself_is_not_an_invented_number() -> None:
    assert verdict("北京、上海、广州、深圳这四个城市，每晚不超过 600 元 [1]。", "一线城市有哪些？", ZH).ok
    assert not verdict("北京、上海、广州这四个城市，每晚不超过 600 元 [1]。", "一线城市有哪些？", ZH).ok


# --- names across languages ------------------------------------------------------------------


def test_place_names_match_their_translation_and_invented_ones_do_not() -> None:
    question = "What is the hotel limit per night in Beijing?"
    assert verdict("In Beijing the limit is 600 yuan per night [1].", question, ZH).ok
    hangzhou = verdict("In Hangzhou and Beijing the limit is 600 yuan per night [1].", question, ZH)
    assert not hangzhou.ok and any(p.check == "names" and "Hangzhou" in p.why for p in hangzhou.failures)
    invented = verdict("一线城市包括北京、上海、广州、深圳和杭州 [1]。", "一线城市包括哪些？", ZH)
    assert not invented.ok and any("杭州" in p.why for p in invented.failures)
    # A name the question gives is the user's, not the model's.
    assert verdict("杭州不在一线城市之列，每晚不超过 400 元 [1]。", "去杭州出差，一晚的酒店能报多少？", ZH).ok


def test_a_short_capitalised_word_is_a_whole_word_not_a_substring() -> None:
    wrong = verdict("Ask IT; the password is on the IT wiki [1].", "Where is the Wi-Fi password?", [passage("It is printed on the card next to the coffee machine.", "Team FAQ", "faq.txt")])
    assert not wrong.ok and any(p.check == "names" and "IT" in p.why for p in wrong.failures)


# --- bindings --------------------------------------------------------------------------------


def test_a_number_put_to_the_wrong_thing_in_english_is_caught() -> None:
    question = "How quickly do I have to acknowledge a page?"
    wrong = verdict("You have 15 minutes to acknowledge a page [1].", question, EN)
    assert not wrong.ok
    [binding] = [p for p in wrong.failures if p.check == "bindings"]
    assert binding.span.startswith("You have 15 minutes") and "puts 15 minutes where the cited passage has 5 minutes" in binding.why
    assert verdict("Within 5 minutes, even if you can't start work on it yet [1].", question, EN).ok
    assert verdict("If the primary does not acknowledge within 15 minutes, PagerDuty escalates it to the secondary [1].", question, EN).ok
    assert not verdict("5 minutes [1].", "How long until a page the primary does not acknowledge goes to the secondary?", EN).ok  # bound to the question


def test_a_number_put_to_the_wrong_thing_in_chinese_is_caught() -> None:
    wrong = verdict("其他城市每晚不超过 600 元 [1]。", "那其他城市呢？", ZH)
    assert not wrong.ok and any(p.check == "bindings" and "600 元" in p.why and "400 元" in p.why for p in wrong.failures)
    assert verdict("其他城市每晚不超过 400 元 [1]。", "那其他城市呢？", ZH).ok
    assert not verdict("Other cities are capped at 600 yuan a night [1].", "What is the hotel limit in other cities?", ZH).ok  # across languages too


# --- table rows and assignments --------------------------------------------------------------

BENCHMARK = """Request throughput of the server on one GPU.

| model     | batch | tp | RPS    |
| --------- | ----- | -- | ------ |
| qwen-7b   | 256   | 1  | 14.556 |
| qwen-14b  | 128   | 1  | 7.950  |

Decoding speed of qwen-7b with one request.

| batch | prompt_tokens | output_tokens | throughput(out tok/s) |
| ----- | ------------- | ------------- | --------------------- |
| 1     | 1             | 128           | 100.02                |
| 1     | 128           | 128           | 102.21                |
"""
TABLES = [passage(BENCHMARK, "Server benchmark", "benchmark.md")]
LONG_CONTEXT = """To serve long inputs, widen the context and scale the rotary embedding:

```python
config = EngineConfig(
    rope_scaling_factor=2.5,
    session_len=160000,
    cache_max_entry_count=0.7)
```

Or on the command line: `serve model --rope-scaling-factor 2.5 --session-len 160000`."""
SETTINGS = [passage(LONG_CONTEXT, "Long context", "long-context.md")]


def test_a_table_number_stands_in_the_row_the_sentence_names() -> None:
    question = "What is the RPS of qwen-7b?"
    assert verdict("The RPS of qwen-7b is 14.556 [1].", question, TABLES).ok
    wrong = verdict("The RPS of qwen-7b is 7.950 [1].", question, TABLES)
    assert not wrong.ok and any(p.check == "bindings" and "7.950" in p.why and "qwen-7b" in p.why for p in wrong.failures)


def test_a_table_row_is_found_by_the_numbers_the_question_puts_beside_its_columns() -> None:
    question = "With batch 1, 1 prompt token and 128 output tokens, how many tokens a second does qwen-7b decode?"
    assert not any(p.check == "bindings" for p in verdict("About 100.02 tokens a second [1].", question, TABLES).failures)
    wrong = verdict("About 102.21 tokens a second [1].", question, TABLES)
    assert not wrong.ok and any(p.check == "bindings" and "102.21" in p.why for p in wrong.failures)


def test_a_table_number_the_sentence_anchors_to_no_row_is_not_judged() -> None:
    assert not any(p.check == "bindings" for p in verdict("The highest RPS is 14.556 [1].", "What is the highest RPS?", TABLES).failures)


@pytest.mark.parametrize(
    "written",
    [
        "`rope_scaling_factor=2.5`",
        "`rope_scaling_factor = 2.5`",
        "`rope_scaling_factor='2.5'`",
        "`--rope-scaling-factor 2.5`",
        "`--rope_scaling_factor=2.50`",
    ],
)
def test_an_assignment_as_the_passage_writes_it_is_accepted(written: str) -> None:
    assert verdict(f"Set {written} and a session length of 160000 [1].", "How do I serve long inputs?", SETTINGS).ok


@pytest.mark.parametrize("written", ["`rope_scaling_factor=0.7`", "`--rope-scaling-factor 0.7`", '`rope_scaling_factor = "0.7"`'])
def test_an_assignment_of_the_value_the_passage_gives_another_setting_is_a_wrong_binding(written: str) -> None:
    wrong = verdict(f"Set {written} and a session length of 160000 [1].", "How do I serve long inputs?", SETTINGS)
    assert not wrong.ok and any(p.check == "bindings" and "rope_scaling_factor" in p.why and "2.5" in p.why for p in wrong.failures)


def test_an_assignment_the_question_gives_is_the_users_own() -> None:
    answer = verdict("Set `session_len=200000` [1].", "Can I serve inputs of 200000 tokens?", SETTINGS)
    assert not any(p.check == "bindings" for p in answer.failures)


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "The documents don't say how much the stipend is.", "Sorry, none of the documents cover parental leave.",
        "That isn't covered in the documents I have.", "文档中没有提到年假天数。", "文档里没有 H100 的价格信息。", "我不知道。",
    ],
)  # fmt: skip
def test_refusals_in_both_languages_are_recognised(text: str) -> None:
    assert is_refusal(text) and says_it_does_not_know(text)


@pytest.mark.parametrize("text", ["If the primary does not acknowledge a page within 15 minutes, PagerDuty escalates it.", "出差期间每天发放餐补 100 元，无需提供发票。"])
def test_sentences_with_a_negation_are_no_refusals(text: str) -> None:
    assert not is_refusal(text)


def test_an_honest_refusal_is_kept_with_or_without_a_citation() -> None:
    question = "What is the on-call stipend amount in euros?"
    bare = verdict("The documents don't give the stipend amount.", question, EN)
    assert bare.ok and bare.refusal and bare.kept is None
    cited = verdict("The on-call guide doesn't state an amount; it says nothing about a stipend in euros [2].", question, EN)
    assert cited.ok and cited.refusal
    chinese = verdict("文档中没有提到值班补贴的具体金额。", "值班补贴每周具体是多少钱？", EN)
    assert chinese.ok and chinese.refusal


def test_what_a_refusal_goes_on_to_claim_is_checked() -> None:
    question = "What is the on-call stipend amount in euros?"
    added = verdict("The documents don't give the amount. Most teams pay 500 euros a week [1].", question, EN)
    assert added.ok and added.refusal and added.kept == "The documents don't give the amount."  # the refusal stays, the claim goes
    but = verdict("The documents don't say, but it is probably 500 euros [1].", question, EN)
    assert not but.ok  # the claim is in the refusal's own sentence: nothing to keep


# --- openers and answers with a sentence too many ---------------------------------------------


def test_an_answer_that_says_nothing_is_no_answer() -> None:
    """SmolLM2 wrote "No, no. No." and cited a passage; the guard before accepted it."""
    nothing = verdict("No, no. No.\n\n[2] Release process (release-process.rst)", "And if a fix can't wait that long?", EN)
    assert not nothing.ok and any("says nothing" in p for p in nothing.problems)
    assert verdict("Within 5 minutes [1].", "How quickly do I have to acknowledge a page?", EN).ok  # short, with a number
    assert verdict("Through PagerDuty [1].", "How are alerts paged?", EN).ok  # short, with a name


def test_a_short_yes_opener_needs_no_support_of_its_own() -> None:
    question = "Can I swap an on-call shift with a teammate?"
    assert verdict("Yes. Agree on the swap with your teammate and update the schedule in PagerDuty before the shift starts [2].", question, EN).ok
    assert verdict("Yes, swaps are fine. Agree on the swap with your teammate and update the schedule in PagerDuty before the shift starts [2].", question, EN).ok
    assert verdict("是的。出差期间每天发放餐补 100 元，无需提供发票 [1]。", "出差吃饭有补贴吗？", ZH).ok


def test_an_unsupported_sentence_is_left_out_and_the_rest_shown_with_a_note() -> None:
    question = "How quickly do I have to acknowledge a page?"
    answer = (
        "Acknowledge a page within 5 minutes, even if you cannot start work on it yet. "
        "If you do not, PagerDuty escalates it to the secondary on-call engineer after 15 minutes. Most teams also set up a backup phone for this [1]."
    )
    trimmed = verdict(answer, question, EN)
    assert trimmed.ok and trimmed.failures and trimmed.kept is not None
    assert trimmed.kept.startswith("Acknowledge a page within 5 minutes") and "after 15 minutes. [1]" in trimmed.kept  # its citation stays
    assert trimmed.kept.endswith(LEFT_OUT.format(n=1)) and "backup phone" not in trimmed.kept
    # Not when half of it fails (a small model's nonsense is often half supported), nor when its first claim does.
    assert verdict("Acknowledge a page within 5 minutes. Most teams also set up a backup phone for this [1].", question, EN).kept is None
    assert verdict("Most teams set up a backup phone for paging. Acknowledge a page within 5 minutes, even if you cannot start work on it yet. "
                   "PagerDuty escalates it to the secondary after 15 minutes [1].", question, EN).kept is None  # fmt: skip
    invented = verdict("Acknowledge a page within 5 minutes. Acknowledge it in PagerDuty. After 45 minutes Alice is paged [1].", question, EN)
    assert not invented.ok and invented.kept is None  # a wrong number or name is never left out quietly: the answer goes


def test_every_problem_names_its_check_and_span() -> None:
    wrong = verdict("PagerDuty pages Bob after 45 minutes [3].", "Who gets paged?", EN)
    checks = {p.check for p in wrong.failures}
    assert {"citations", "numbers", "names"} <= checks
    assert all(p.span.startswith("PagerDuty pages Bob") for p in wrong.failures if p.check in ("numbers", "names"))
    assert any(str(p) == "“PagerDuty pages Bob after 45 minutes .” the number(s) 45 minutes are not in the cited passages" for p in wrong.failures)


def test_an_answer_in_the_wrong_language_or_without_citations_is_refused() -> None:
    assert "it is not in the language of the question" in verdict("Up to 600 yuan [1].", "出差住宿每晚可以报销多少钱？", ZH).problems
    assert "it cites no source" in verdict("Up to 600 yuan per night.", "How much per night?", ZH).problems
    code = verdict("用 `--quant-policy 8` 启动 `lmdeploy serve api_server` 即可 [1]。", "怎么打开 int8 KV cache？", [passage("Use lmdeploy serve api_server with --quant-policy 8 for int8 KV cache.", "KV cache", "kv.md")])
    assert "it is not in the language of the question" not in code.problems  # code is no language


SEVERITY = """- **SEV1**: customers cannot use the product. Start an incident channel, name an incident commander and post status updates every 30 minutes.
- **SEV2**: a major feature is degraded for many customers. Post updates every hour."""


def test_a_name_with_a_number_put_in_anothers_place_is_caught() -> None:
    """SmolLM2 wrote this one: every word is in the passage, but the incident channel is SEV1's."""
    severity = [passage(SEVERITY, "On-call guide", "oncall-guide.md")]
    wrong = verdict("A SEV2 also gets its own incident channel and an incident commander [1].", "What about a SEV2?", severity)
    assert not wrong.ok and any(p.check == "bindings" and "puts SEV2 where the cited passage has SEV1" in p.why for p in wrong.failures)
    assert verdict("A SEV1 gets its own incident channel and an incident commander [1].", "What about a SEV1?", severity).ok
    assert not verdict("During a SEV1 you post a status update every hour [1].", "How often during a SEV1?", severity).ok
    memory = [passage("FP32 recurrent state is more precise, but uses twice the memory of FP16 or BF16.", "TurboMind config", "turbomind.md")]
    assert verdict("An FP32 recurrent state takes twice the memory of FP16 [1].", "What does FP32 cost?", memory).ok  # a comparison, not a swap


def test_a_name_is_found_where_chinese_text_touches_it() -> None:
    """Chinese is written without spaces: an option or setting glued to it is still the name."""
    limits = [passage("## Atlas 300I Duo上的限制\n\n1. 只支持dtype=float16。\n2. 只支持图模式，请不要加上--eager-mode。", "华为昇腾", "ascend.md")]
    question = "Are there any limits on the Atlas 300I Duo?"
    assert verdict("It only supports dtype=float16 and graph mode, so do not add --eager-mode [1].", question, limits).ok
    assert not verdict("It only supports dtype=float16, so add --enforce-eager [1].", question, limits).ok  # a name it does not hold
    assert not verdict("It only supports dtype=bfloat16 [1].", question, limits).ok  # nor one it holds only inside another


def test_kv_is_vocabulary_as_gpu_is() -> None:
    sleep = [passage("Before updating the weights, offload the weights and the kv cache with /sleep, then /wakeup.", "Update weights", "update.md")]
    assert verdict("Offload the weights and the KV cache with /sleep [1].", "How do I free the GPU memory?", sleep).ok


REWARD = """Score a conversation with a reward model offline:

```python
engine_config = PytorchEngineConfig(tp=tp)
with pipeline(model_path, backend_config=engine_config) as pipe:
    score = pipe.get_reward_score(input_ids)
```"""
AWQ = "Run `lmdeploy lite auto_awq $HF_MODEL --w-bits 4 --work-dir $WORK_DIR`. The quantized weights are saved in $WORK_DIR."


def test_a_setting_may_be_written_with_the_value_its_passage_gives_a_variable() -> None:
    reward = [passage(REWARD, "Reward models", "reward_models.md")]
    question = "How do I score conversations offline?"
    inlined = "Use get_reward_score [1]:\n\n```python\nwith pipeline(model_path, backend_config={}(tp=tp)) as pipe:\n    score = pipe.get_reward_score(input_ids)\n```"
    assert verdict(inlined.format("PytorchEngineConfig"), question, reward).ok
    assert verdict(inlined.format("engine_config"), question, reward).ok
    wrong = verdict(inlined.format("TurbomindEngineConfig"), question, reward)
    assert not wrong.ok and any("sets backend_config to turbomindengineconfig" in p for p in wrong.problems)


def test_an_option_alone_in_its_code_span_is_given_no_value() -> None:
    awq = [passage(AWQ, "AWQ", "w4a16.md")]
    question = "Where do the quantized weights go?"
    assert verdict("The quantized weights are saved in the `--work-dir` directory [1].", question, awq).ok
    wrong = verdict("Quantize with `--w-bits 8`; the weights are saved in the `--work-dir` directory [1].", question, awq)
    assert not wrong.ok and [p.why for p in wrong.failures if p.check == "bindings"] == ["sets w_bits to 8 where the cited passage sets it to 4"]
