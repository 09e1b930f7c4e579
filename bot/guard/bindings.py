"""Each number in an answer sentence (and each name with a number in it: SEV1, int8) stands, in
its cited passage, in the clause of the words it is bound to in that sentence.

"You have 15 minutes to acknowledge a page" has every number and word of the passage, but the
passage's 15 is in "If the primary does not acknowledge a page within 15 minutes" and the clause
that says what the sentence says is "Acknowledge a page within 5 minutes": a wrong binding.

For each quantity of an answer sentence, the words it is bound to are those of its clause in the
sentence (the whole sentence when the clause is only the number; the question when the sentence
is). Every clause of the cited passages holding an amount of the same kind (minutes, yuan, a
clock time, ...) is scored by how many of those words it holds (its paragraph or list item counts half), less
a little for each word it adds and more for a negation the answer's clause does not share. The
number is wrongly bound when the best clause holds another amount of that kind, and the best
clause holding this one scores clearly lower (``MARGIN``).
"""

from __future__ import annotations

from bot.guard.answer import Answer, Claim, Problem
from bot.guard.quantities import Quantity, codes, quantities
from bot.guard.reading import Clause, PassageSentence, clauses, key, negated, words

SENTENCE_SHARE = 0.5  # the rest of the passage clause's paragraph (or list item) counts this much
OTHER_CLAUSES = 0.5  # the words of the answer sentence's other clauses weigh this much against the number's own clause
QUESTION = 0.3  # and the question's words (what a short answer is bound to) this much
EXTRA_WORDS = 0.2  # taken off for a clause made mostly of words the answer does not bind (times their share)
NEGATION = 0.3  # taken off when one of the two is negated and the other is not
MARGIN = 0.2  # how much better the rival clause must score
MIN_OWN_WORDS = 2  # a sentence with fewer words of its own than this is bound to the question's words


def check(answer: Answer) -> list[Problem]:
    stated = [(q, c, s) for p in answer.sources for s in p.sentences for c in s.clauses for q in (*c.quantities, *c.codes)]
    problems = []
    for claim in answer.claims:
        named = codes(claim.said)
        for quantity in (*claim.quantities, *named):
            rivals = [(q, c, s) for q, c, s in stated if quantity.rival(q)]
            if quantity in named:  # "FP32 takes twice the memory of FP16" compares the two: neither is in the other's place
                rivals = [(q, c, s) for q, c, s in rivals if not any(q.same(m) for m in named)]
            own = [(q, c, s) for q, c, s in stated if quantity.same(q) and q.unit]
            if not rivals or not own:
                continue  # nothing to confuse it with (or it is not in the passages: the numbers check says so)
            bound, is_negated = _bound_words(claim, quantity, answer.question)
            if not bound:
                continue
            best_own = max(_score(bound, is_negated, c, s) for _, c, s in own)
            best_rival, rival = max(((_score(bound, is_negated, c, s), q) for q, c, s in rivals), key=lambda x: x[0])
            if best_rival - best_own >= MARGIN:
                problems.append(Problem("bindings", f"puts {quantity.text} where the cited passage has {rival.text}", claim.text, claim.index))
    return problems


def _bound_words(claim: Claim, quantity: Quantity, question: str) -> tuple[dict[str, float], bool]:
    """The words ``quantity`` is bound to, each with its weight (its own clause's words most, the
    sentence's other words less, the question's least), and whether its clause is negated."""
    parts = clauses(claim.said)
    own = next((c for c in parts if quantity.text in c), claim.said)
    numbers = {key(q) for q in claim.quantities} | set(words(quantity.text))  # the amounts, and a code itself, bind nothing
    bound: dict[str, float] = {}
    # Not what it is bound to: a negated clause ("杭州不在一线城市之列"), or one with another amount of its kind
    # ("4 表示 kv int4 量化，8 表示 kv int8 量化": int4's words are not int8's).
    others = [c for c in parts if c != own and not negated(c) and not any(quantity.rival(q) for q in (*quantities(c), *codes(c)))]
    for text, weight in ((own, 1.0), *((c, OTHER_CLAUSES) for c in others), (question, QUESTION)):
        for word in words(text):
            if word not in numbers and not word[:1].isdigit():
                bound.setdefault(word, weight)
    # Whether it is negated is the business of the words it is bound to: its clause's, else the question's ("5 minutes." to
    # "How long until a page the primary does not acknowledge escalates?").
    said_words = [w for w, weight in bound.items() if weight > QUESTION]
    return bound, negated(own) if len(said_words) >= MIN_OWN_WORDS else negated(question)


def _score(bound: dict[str, float], is_negated: bool, clause: Clause, sentence: PassageSentence) -> float:
    total = sum(bound.values())
    held = [t for t in bound if clause.said.has(t)]
    in_clause = sum(bound[t] for t in held) / total
    in_paragraph = sum(w for t, w in bound.items() if sentence.paragraph.has(t)) / total
    own_words = max(len([w for w in clause.words if not w[:1].isdigit()]), 1)
    extra = max(own_words - len(held), 0) / own_words
    score = in_clause + SENTENCE_SHARE * in_paragraph - EXTRA_WORDS * extra
    if clause.negated != is_negated:
        score -= NEGATION
    return score
