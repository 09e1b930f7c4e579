"""Refusals: a sentence that says the documents do not answer ("The documents don't say how much
the stipend is", "文档中没有提到年假天数", "I don't know").

An honest refusal is what a capable model should write when the passages touch a question but do
not answer it; it is shown as the model wrote it and counted as a refusal, never replaced by
quotes of passages that do not answer. A refusal sentence needs no support (it claims nothing
the passages say); what follows a "but" in it does, and is checked like any sentence.
"""

from __future__ import annotations

import re

_SOURCES_EN = r"(?:the\s+)?(?:provided\s+|given\s+|available\s+|cited\s+|retrieved\s+|team'?s?\s+)?(?:documents?|docs|documentation|passages?|sources?|context|knowledge\s+base|materials?|texts?|pages?|guides?|polic(?:y|ies)|handbook|faq|information\s+(?:provided|given|available))"
_SAY_EN = r"(?:say|mention|specify|state|contain|include|cover|give|provide|list|describe|explain|address|tell|indicate|answer|discuss|document|name|have|set|define|show)"
_REFUSAL_EN = re.compile(
    rf"{_SOURCES_EN}(?:\s+\w+){{0,3}}?\s+(?:do|does|did)(?:\s+not|n't)\s+(?:\w+\s+)?{_SAY_EN}"
    rf"|{_SOURCES_EN}\s+(?:has|have|had|contains?|gives?|includes?|provides?)\s+no\s+(?:information|details?|mention|data|answer)"
    r"|\b(?:there\s+is|there's|i\s+(?:found|could\s+find|can\s+find|see))\s+no\s+(?:\w+\s+)?(?:information|mention|details?|data|answer)"
    r"|\bno\s+(?:information|details?|mention)\s+(?:about|on|of|regarding|is\s+given|was\s+found)"
    r"|\b(?:is|are|was|were)\s+not\s+(?:mentioned|specified|stated|documented|described|covered|addressed|listed|given|provided)\s+(?:in|by)\b"
    r"|\b(?:isn't|aren't|wasn't|weren't|is\s+not|are\s+not)\s+(?:mentioned|specified|stated|documented)\b"
    r"|\b(?:isn't|aren't|wasn't|weren't)\s+(?:mentioned|specified|stated|documented|described|covered|addressed|listed|given|provided)\s+(?:in|by)\b"
    r"|\bi\s+(?:don't|do\s+not|cannot|can't|couldn't|could\s+not)\s+(?:know|find|answer|tell|see|determine)\b"
    r"|\b(?:not|nothing)\s+(?:in|covered\s+(?:in|by))\s+(?:the\s+)?(?:documents?|passages?|sources?|context|knowledge\s+base)"
    r"|\bunable\s+to\s+(?:find|answer|determine)\b|\bcannot\s+be\s+(?:answered|determined|found)\s+from\b"
    rf"|\b(?:none|neither)\s+of\s+{_SOURCES_EN}\s+(?:\w+\s+)?{_SAY_EN}"
    rf"|\bnothing\s+in\s+{_SOURCES_EN}\s+(?:\w+\s+)?{_SAY_EN}",
    re.IGNORECASE,
)
_SOURCES_ZH = r"(?:文档|资料|文件|上下文|材料|知识库|段落|内容|政策|指南|页面|手册|来源|提供的信息|给出的信息)"
_REFUSAL_ZH = re.compile(
    rf"{_SOURCES_ZH}[^，。；！？]{{0,12}}?(?:中|里|里面|内)?(?:并|都|均|也)?(?:没有|没|未|并未|并没有)(?:[^，。；！？]{{0,4}})?(?:提到|提及|说明|涉及|给出|列出|写明|包含|规定|介绍|记载|说|讲|明确|具体)"
    rf"|{_SOURCES_ZH}[^，。；！？]{{0,12}}?(?:中|里)?(?:找不到|查不到|无法找到|不包含|不涉及)"
    r"|没有(?:找到)?(?:相关|具体|这方面的|关于[^，。；！？]{0,12}的)?(?:信息|说明|内容|记载|规定|资料|答案)"
    rf"|{_SOURCES_ZH}[^，。；！？]{{0,4}}?(?:中|里|里面|内)?(?:并|都|均)?没有[^，。；！？]{{0,20}}的[^，。；！？]{{0,6}}?(?:信息|说明|内容|记载|规定|资料|介绍)"
    r"|(?:未|没有)(?:提及|说明|涉及|给出|规定|提到)"
    r"|无法(?:回答|确定|找到|得知|判断)|不知道|不清楚|找不到(?:相关|答案|这)"
)
_BUT = re.compile(r"[,;，；]?\s*(?:\bbut\b|\bhowever\b|但是|但|不过|然而)", re.IGNORECASE)


def is_refusal(sentence: str) -> bool:
    """Whether the sentence says the documents do not answer (or that the writer does not know)."""
    head = _BUT.split(sentence, maxsplit=1)[0]
    return bool(_REFUSAL_EN.search(head) or _REFUSAL_ZH.search(head))


def claimed_after(sentence: str) -> str:
    """What a refusal sentence goes on to claim after a "but" ("" when nothing)."""
    parts = _BUT.split(sentence, maxsplit=1)
    return parts[1].strip() if len(parts) > 1 else ""


def says_it_does_not_know(answer: str) -> bool:
    """Whether an answer is a refusal: its first sentence (after a bare "No."), the one that says what the answer is, refuses."""
    from bot.evidence import sentences
    from bot.guard.reading import opener, without_citations

    said = [part for part in sentences(without_citations(answer)) if part[len(opener(part)) :].strip()]
    return bool(said) and is_refusal(said[0])
