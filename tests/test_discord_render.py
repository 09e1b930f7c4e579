"""Discord rendering and reading: pure functions, no Discord needed."""

from __future__ import annotations

from bot.core import AnswerDone
from bot.evidence import Evidence
from bot.discord import messages as msg
from bot.discord.adapter import invite_url
from bot.discord.render import MESSAGE_LIMIT, PLACEHOLDER, answer_only, answer_pages, error_text, progress_pages, thread_name
from bot.prompt import Turn
from config.settings import DiscordSettings
from rag.search.retriever import Passage


def done(answer: str) -> AnswerDone:
    sources = [Passage("default", "oncall-guide.md", "On-call guide", "Paging", "", "t", 0.6, 0.6, 0.6, "x:0")]
    return AnswerDone(answer, sources, [1], True)


def test_a_short_answer_is_one_message_with_its_sources() -> None:
    [page] = answer_pages(done("Page the secondary [1]."))
    assert page == "Page the secondary [1].\n\n**Sources**\n[1] On-call guide (oncall-guide.md, Paging) · 0.60 ✓"


def test_long_answers_continue_in_more_messages_never_cut_mid_citation() -> None:
    answer = "The secondary engineer is paged after fifteen minutes [1]. " * 120  # about 7,000 characters
    pages = answer_pages(done(answer))
    assert len(pages) >= 4 and all(len(p) <= MESSAGE_LIMIT for p in pages)
    assert all(p.count("[") == p.count("]") for p in pages)
    assert pages[-1].endswith("· 0.60 ✓")
    assert " ".join(pages).split() == (answer.strip() + " **Sources** [1] On-call guide (oncall-guide.md, Paging) · 0.60 ✓").split()
    assert all(len(p) <= MESSAGE_LIMIT for p in progress_pages(answer))


HOSTILE = "See [click](http://evil.example) <!channel> <http://x|y> @everyone @here <@310000000000000001> <@&310000000000000002>: a < b & c [1]."
SAFE = (
    "See click (<http://evil.example>) <!channel> <http://x|y> @\u200beveryone @\u200bhere <@\u200b310000000000000001>"
    " <@\u200b&310000000000000002>: a < b & c [1]."
)


def test_links_show_their_targets_and_mentions_ping_no_one() -> None:
    sources = [Passage("default", "evil.md", "[Handbook](http://evil.example) @everyone", "", "", "t", 0.6, 0.6, 0.6, "x:0")]
    [page] = answer_pages(AnswerDone(HOSTILE, sources, [1], True))
    assert page == SAFE + "\n\n**Sources**\n[1] Handbook (<http://evil.example>) @\u200beveryone (evil.md) · 0.60 ✓"
    assert progress_pages(HOSTILE) == [SAFE + " ▌"]
    assert "@\u200beveryone" in error_text("@everyone [x](http://evil.example)") and "[x](" not in error_text("[x](http://evil.example)")
    assert answer_pages(done("[[1]](http://evil.example) and [a](<http://x.example> \"t\")"))[0].startswith("[1] (<http://evil.example>) and a (<http://x.example>)")


def test_history_pairs_questions_with_the_bots_pages_without_sources() -> None:
    said = [
        msg.Said(False, "<@42> who is on call?", 1.0),
        msg.Said(True, "Alice [1].\n\n**Sources**\n[1] On-call guide (oncall-guide.md) · 0.61", 2.0),
        msg.Said(False, "and how long?", 3.0),
        msg.Said(True, "A week,", 4.0),
        msg.Said(True, "Monday to Monday [1].", 5.0),
        msg.Said(False, "ok", 6.0),
        msg.Said(True, PLACEHOLDER, 7.0),
    ]
    assert msg.turns(reversed(said)) == [Turn("who is on call?", "Alice [1]."), Turn("and how long?", "A week,\nMonday to Monday [1].")]


def test_scoping_by_channel_thread_parent_guild_and_dm() -> None:
    settings = DiscordSettings(channels={"100": ["hr"], "7": ["eng"]}, dm_collections=["default", "hr"])
    assert msg.Where("100", "", "", 7, False).collections(settings) == ["hr"]
    assert msg.Where("555", "555", "100", 7, False).collections(settings) == ["hr"]  # a thread under #hr
    assert msg.Where("200", "", "", 7, False).collections(settings) == ["eng"]  # the guild's default
    assert msg.Where("200", "", "", 8, False).collections(settings) == ["default"]
    assert msg.Where("9", "", "", None, True).collections(settings) == ["default", "hr"]


def test_mentions_thread_names_and_the_invite() -> None:
    assert msg.strip_mentions("<@42> <@!43> hello <@&7> there") == "hello there"
    assert len(thread_name("x" * 300)) == 100 and thread_name("  a   b ") == "a b"
    url = invite_url(123)
    assert "client_id=123" in url and "scope=bot+applications.commands" in url
    assert "permissions=309237713920" in url  # view, send, send in threads, create public threads, read history


def test_a_refusal_lists_its_sources_as_searched_without_quotes() -> None:
    sources = [Passage("default", "oncall-guide.md", "On-call guide", "Compensation", "", "t", 0.6, 0.6, 0.6, "x:0")]
    evidence = [Evidence(1, "On-call engineers receive a stipend for each week on call.", 0.9)]
    answered = AnswerDone("The stipend is paid weekly [1].", sources, [1], True, evidence=evidence)
    refused = AnswerDone("The documents don't give the stipend amount.", sources, [], True, evidence=evidence, refusal=True)
    [with_quote] = answer_pages(answered)
    [page] = answer_pages(refused)
    assert "**Sources**" in with_quote and "> On-call engineers receive a stipend" in with_quote
    assert "**Searched (they do not answer this)**" in page and "> " not in page and "oncall-guide.md" in page
    assert answer_only(page) == "The documents don't give the stipend amount."  # what the conversation history keeps
