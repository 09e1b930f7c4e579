"""Whether a new question continues the conversation or starts a new topic.

Earlier turns go into retrieval and the prompt only for a follow-up: a question that leans on
what was said before ("and if they don't answer either?", "那其他城市呢？"), in the language of
the question before it. Anything else starts clean, so an unrelated question (or one in
another language) is answered, or refused, on its own, and never from the previous topic's
passages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from bot.prompt import Turn, language_of

_EN_OPENERS = re.compile(r"^(?:and|but|so|also|then|or|what about|how about|what if|and if|and what|same for|if so|if not)\b", re.IGNORECASE)
_EN_BACK_REFERENCES = re.compile(
    r"\b(?:it|its|they|them|their|theirs|that|this|those|these|he|him|his|she|her|there|either|neither|else|instead|the same|one)\b",
    re.IGNORECASE,
)
_ZH_OPENERS = re.compile(r"^(?:那|那么|还有|另外|如果|那如果|而且|并且|然后|此外|那要是|要是)")
_ZH_BACK_REFERENCES = re.compile(r"呢[？?]?$|它|他们|她们|这个|那个|这些|那些|其他|其它|其余|上述|同样|这种|那种|该")


def is_follow_up(question: str, history: Sequence[Turn]) -> bool:
    """True when ``question`` continues the last turn of ``history``."""
    if not history:
        return False
    if language_of(question) != language_of(history[-1].question):
        return False
    text = question.strip()
    if language_of(text) == "zh":
        return bool(_ZH_OPENERS.search(text) or _ZH_BACK_REFERENCES.search(text))
    return bool(_EN_OPENERS.search(text) or _EN_BACK_REFERENCES.search(text))


def follow_up_query(question: str, history: Sequence[Turn]) -> str:
    """What a follow-up is searched with: the question before it, then the question."""
    return f"{history[-1].question}\n{question}"
