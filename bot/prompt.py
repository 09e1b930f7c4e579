"""The prompt: numbered context passages, the conversation so far, the question. Pure functions."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from inference.client import ChatMessage
from rag.search.retriever import Passage

SYSTEM_PROMPT = (
    "You are teambot, the team's knowledge assistant. Answer the question using only the numbered "
    "context passages below. Cite every passage you use by its number in square brackets, like [1] "
    "or [2][3]. If the passages do not contain the answer, say that you don't know. "
    "Answer briefly, in the language of the question."
)

NOT_FOUND_ANSWER = "I don't know: nothing in the knowledge base matches this question."
NOT_FOUND_ANSWER_ZH = "我不知道：知识库里没有与这个问题相关的内容。"

CITATION = re.compile(r"\[(\d{1,3})\]")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
_CODE = re.compile(
    r"```[\s\S]*?(?:```|$)|`[^`\n]*`|https?://\S+|(?<![\w-])(?:--?|~/|\./|/)[\w./~:=-]+"
    r"|\b\w*[_=./:@]\w[\w=./:@-]*|\b[A-Za-z]+\d[\w.-]*|\b[A-Z][a-z]+[A-Z]\w*|\b[A-Z]{2,}s?\b"
)  # code, commands, options, paths, URLs, identifiers, CamelCase and ALL-CAPS names: not the prose's language
_QUOTED = re.compile(r"“[^”]*”|「[^」]*」|『[^』]*』|《[^》]*》|^[^\n“]{1,80}?\s?\[\d{1,3}\][:：]", re.MULTILINE)  # quotations, titles, "Source [1]:" labels


@dataclass(frozen=True)
class Turn:
    """One earlier exchange of a conversation."""

    question: str
    answer: str


def passage_label(passage: Passage) -> str:
    """How a passage is named to the model and to users: title, path, section, page."""
    label = f"{passage.title} ({passage.path}"
    if passage.heading:
        label += f", {passage.heading}"
    if passage.page:
        label += f", page {passage.page}"
    return label + ")"


def build_messages(question: str, passages: Sequence[Passage], history: Sequence[Turn]) -> list[ChatMessage]:
    context = "\n\n".join(f"[{n}] {passage_label(p)}\n{p.text}" for n, p in enumerate(passages, start=1))
    messages = [ChatMessage("system", f"{SYSTEM_PROMPT}\n\nContext passages:\n\n{context}")]
    for turn in history:
        messages.append(ChatMessage("user", turn.question))
        messages.append(ChatMessage("assistant", turn.answer))
    messages.append(ChatMessage("user", question))
    return messages


def cited_numbers(answer: str, passages: int) -> list[int]:
    """The passage numbers an answer cites, in order of first citation; numbers out of range are ignored."""
    seen: list[int] = []
    for match in CITATION.finditer(answer):
        n = int(match.group(1))
        if 1 <= n <= passages and n not in seen:
            seen.append(n)
    return seen


def language_of(text: str) -> str:
    """"zh" when the text has more Chinese characters than Latin words, else "en". Quotations,
    source labels and code (code blocks and spans, commands, options, paths, URLs, identifiers,
    product names) are left out: a Chinese answer full of `--quant-policy 8` is Chinese."""
    text = _CODE.sub(" ", _QUOTED.sub(" ", text))
    return "zh" if len(_CJK.findall(text)) > len(_LATIN_WORD.findall(text)) else "en"


def not_found_answer(question: str) -> str:
    return NOT_FOUND_ANSWER_ZH if language_of(question) == "zh" else NOT_FOUND_ANSWER
