"""The grounding guard across languages: a Chinese answer held to an English passage (and the
other way round) is judged by what both languages write alike, and still caught when a number,
a name, a weekday or a negation is wrong."""

from __future__ import annotations

from bot.guard import check_answer
from bot.guard.quantities import quantities
from tests.test_grounding import passage

SEVERITY = [passage("- **SEV1**: customers cannot use the product. Start an incident channel, name an incident commander and post status updates every 30 minutes.\n"
                    "- **SEV2**: a major feature is degraded for many customers. Post updates every hour.", "On-call guide", "oncall-guide.md")]  # fmt: skip
TRAIN = [
    passage(
        "Releases leave every Tuesday at 14:00. Whatever is merged to main and green in CI by Tuesday noon goes out with that train.",
        "Release process",
        "release-process.rst",
    )
]
PAYOUT = [passage("审核通过的报销款在每月 15 日和 30 日随工资统一发放。", "差旅与报销政策", "expense-policy-zh.md")]


def problems(answer: str, question: str, passages: list) -> dict[str, list[str]]:  # type: ignore[type-arg]
    found: dict[str, list[str]] = {}
    for p in check_answer(answer, question, passages).failures:
        found.setdefault(p.check, []).append(p.why)
    return found


def test_a_chinese_answer_whose_numbers_and_names_an_english_passage_holds_is_supported() -> None:
    """The dictionary gives 建 "build" and 指定 "appoint", the passage says "start" and "name": its
    words alone do not bridge the sentence, its 30 minutes, SEV1 and incident commander do."""
    question = "SEV1 期间多久发一次状态更新？"
    assert problems("每 30 分钟发一次状态更新。SEV1 还要建一个事故频道，并指定一名 incident commander [1]。", question, SEVERITY) == {}


def test_the_same_chinese_answer_with_a_wrong_number_name_or_negation_is_still_refused() -> None:
    question = "SEV1 期间多久发一次状态更新？"
    assert "numbers" in problems("每 45 分钟发一次状态更新 [1]。", question, SEVERITY)
    assert "names" in problems("SEV3 还要建一个事故频道，并指定一名 incident commander [1]。", question, SEVERITY)
    assert "bindings" in problems("SEV2 还要建一个事故频道，并指定一名 incident commander [1]。", question, SEVERITY)
    assert "support" in problems(
        "SEV1 不用建事故频道，也不用指定 incident commander [1]。", question, SEVERITY
    )  # the passage's clause is not negated
    assert "support" in problems(
        "每 30 分钟要给所有客户打电话并写一份赔偿报告 [1]。", question, SEVERITY
    )  # a third of its words is not there


def test_a_weekday_is_a_day_not_every_week_and_a_number() -> None:
    [tuesday] = quantities("每周二")
    assert tuesday.same(quantities("every Tuesday")[0]) and tuesday.same(quantities("星期二")[0])
    assert not tuesday.same(quantities("Wednesday")[0])
    assert [q.unit for q in quantities("一周一次")] == ["minutes"] and [q.unit for q in quantities("每周一次")] == [
        "minutes"
    ]  # once a week
    question = "每周几点发布？"
    assert problems("每周二下午两点。周二中午之前合入 main 并且 CI 通过的代码会随这一班发布 [1]。", question, TRAIN) == {}
    assert "numbers" in problems("每周三下午两点发布 [1]。", question, TRAIN)


def test_a_period_after_a_number_ends_the_clause_a_value_is_bound_in() -> None:
    assert "bindings" in problems("Releases go out every Tuesday at noon [1].", "When do releases go out?", TRAIN)
    assert problems("Releases leave every Tuesday at 14:00 [1].", "When do releases go out?", TRAIN) == {}


def test_a_day_of_the_month_is_read_after_every_month_and_an_ordinal_is_no_name() -> None:
    assert [(q.value, q.unit) for q in quantities("每月 15 日和 30 日")] == [
        (1.0, "months"),
        (15.0, "day_of_month"),
        (30.0, "day_of_month"),
    ]
    question = "When are expense claims paid out?"
    assert problems("On the 15th and the 30th of each month, paid out together with your salary [1].", question, PAYOUT) == {}
    assert "numbers" in problems("On the 10th and the 30th of each month, paid out together with your salary [1].", question, PAYOUT)
