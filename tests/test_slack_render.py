"""Slack rendering and payload reading: pure functions, no Slack needed."""

from __future__ import annotations

import itertools

import pytest

from bot.core import AnswerDone
from bot.prompt import Turn
from bot.slack import messages as msg
from bot.slack.render import (
    MESSAGE_BLOCKS_LIMIT,
    SECTION_TEXT_LIMIT,
    TRUNCATED,
    answer_blocks,
    notification_text,
    progress_text,
    stream_markdown,
    to_mrkdwn,
)
from bot.splitting import split_text
from config.settings import SlackSettings
from rag.search.retriever import Passage


def passage(path: str, title: str = "Guide", heading: str = "", page: str = "") -> Passage:
    return Passage("default", path, title, heading, page, "text", 0.61, 0.7, 0.52, f"{path}:0")


def done(answer: str, sources: int = 2, cited: list[int] | None = None) -> AnswerDone:
    return AnswerDone(answer, [passage(f"doc{n}.md", f"Doc {n}", "Part", "3" if n == 1 else "") for n in range(1, sources + 1)], cited or [1], True)


def test_final_message_has_text_sources_and_feedback_buttons() -> None:
    blocks = answer_blocks(done("Page the **secondary** [1]."), "abc123")
    assert blocks[0]["text"]["text"] == "Page the *secondary* [1]."
    sources = blocks[1]["text"]["text"]
    assert sources.splitlines() == ["*Sources*", "[1] Doc 1 (doc1.md, Part, page 3) · 0.61 ✓", "[2] Doc 2 (doc2.md, Part) · 0.61"]
    actions = blocks[2]
    assert [e["action_id"] for e in actions["elements"]] == ["feedback_up", "feedback_down"]
    assert {e["value"] for e in actions["elements"]} == {"abc123"}


def test_i_dont_know_has_no_sources_section() -> None:
    blocks = answer_blocks(AnswerDone("I don't know.", [], [], False), "id")
    assert [b["type"] for b in blocks] == ["section", "actions"]


def test_long_answers_split_at_sentence_ends_and_never_inside_a_citation() -> None:
    sentence = "The secondary on-call engineer is paged after fifteen minutes [12]. "
    text = sentence * 200  # about 13,600 characters
    pieces = split_text(text, SECTION_TEXT_LIMIT)
    assert all(len(p) <= SECTION_TEXT_LIMIT for p in pieces)
    assert "".join(p + " " for p in pieces).split() == text.split()  # nothing lost
    assert all(p.endswith("[12].") for p in pieces)


def test_a_citation_at_the_cut_moves_whole_to_the_next_piece() -> None:
    text = "x" * 95 + "[12] rest"
    pieces = split_text(text, 97)
    assert pieces[0] == "x" * 95 and pieces[1].startswith("[12]")


def test_an_endless_answer_is_truncated_cleanly() -> None:
    blocks = answer_blocks(done(("A sentence of the answer. " * 150 + "\n\n") * 20), "id")
    text_blocks = [b for b in blocks if b["type"] == "section"][:-1]
    assert len(blocks) <= MESSAGE_BLOCKS_LIMIT
    assert text_blocks[-1]["text"]["text"].endswith(TRUNCATED)
    assert all(len(b["text"]["text"]) <= SECTION_TEXT_LIMIT for b in text_blocks)


def test_mrkdwn_escapes_and_converts() -> None:
    assert to_mrkdwn("# Title\nUse <b> & **bold** [docs](https://x.example/a)") == "*Title*\nUse &lt;b&gt; &amp; *bold* docs (https://x.example/a)"
    assert progress_text("partial").endswith("▍")
    assert len(progress_text("y" * 10000)) < 4000


HOSTILE = "See [click](http://evil.example) <!channel> <http://x|y> @everyone: a < b & c [1]."
SAFE = "See click (http://evil.example) &lt;!channel&gt; &lt;http://x|y&gt; @everyone: a &lt; b &amp; c [1]."


def test_hostile_text_is_escaped_and_links_show_their_targets_everywhere() -> None:
    answer = AnswerDone(HOSTILE, [passage("evil.md", "[Handbook](http://evil.example) <!here>")], [1], True)
    [text, sources, _] = [b.get("text", {}).get("text") for b in answer_blocks(answer, "id")]
    assert text == SAFE and notification_text(answer) == SAFE
    assert progress_text(HOSTILE) == SAFE + " ▍"
    assert "&lt;!here&gt;" in sources and "<!" not in sources
    assert stream_markdown(HOSTILE) == SAFE
    assert to_mrkdwn("[a](<http://x.example/?q=1&r=2> \"title\") [[1]](http://evil.example)") == "a (http://x.example/?q=1&amp;r=2) [1] (http://evil.example)"
    assert to_mrkdwn("[click][1]\n[1]: http://evil.example") == "[click][1]\n1: http://evil.example"  # no reference link either


def test_the_stream_only_grows_and_never_shows_half_a_link() -> None:
    shown = [stream_markdown(HOSTILE[:k]) for k in range(len(HOSTILE) + 1)]
    assert all(b.startswith(a) for a, b in itertools.pairwise(shown))  # appendable: what was sent stays right
    assert not any("[click" in s or "](" in s or "<" in s for s in shown)
    assert shown[HOSTILE.index("(http") + 5] == "See "  # "[click](http" is held back until it is known


def test_thread_history_pairs_questions_with_the_bots_replies() -> None:
    messages = [
        {"ts": "1.0", "user": "U1", "text": "<@UBOT> who is on call?"},
        {"ts": "2.0", "user": "UBOT", "bot_id": "B", "text": "Alice [1]."},
        {"ts": "3.0", "user": "U2", "text": "thanks!"},  # no reply: not a turn
        {"ts": "4.0", "user": "U1", "text": "and tomorrow?"},
        {"ts": "5.0", "user": "UBOT", "bot_id": "B", "text": "_Searching the knowledge base…_"},
        {"ts": "6.0", "user": "UOTHER", "bot_id": "B2", "text": "I am another bot"},
    ]
    assert msg.turns(messages, "UBOT", before_ts="4.0") == [Turn("who is on call?", "Alice [1].")]
    assert msg.turns(messages, "UBOT", before_ts="9.0") == [Turn("who is on call?", "Alice [1].")]


def test_questions_are_read_from_events() -> None:
    settings = SlackSettings(channels={"CHR": ["hr"]}, dm_collections=["default", "hr"])
    mention = {"channel": "CHR", "user": "U1", "text": "<@UBOT>  where is the form?", "ts": "10.1", "team": "T1"}
    q = msg.question_from_message(mention, "T0", settings)
    assert (q.request.text, q.reply_thread, q.history_thread, q.request.collections) == ("where is the form?", "10.1", None, ("hr",))
    assert (q.request.platform, q.request.user, q.request.channel, q.request.thread, q.team) == ("slack", "U1", "CHR", "10.1", "T1")
    in_thread = {**mention, "channel": "C9", "ts": "11.2", "thread_ts": "10.1"}
    q = msg.question_from_message(in_thread, "T0", settings)
    assert (q.reply_thread, q.history_thread, q.request.collections) == ("10.1", "10.1", ("default",))
    dm = {"channel": "D1", "channel_type": "im", "user": "U1", "text": "hello", "ts": "12.0"}
    q = msg.question_from_message(dm, "T0", settings)
    assert (q.reply_thread, q.history_thread, q.request.collections, q.team, q.request.thread) == (None, None, ("default", "hr"), "T0", "")


def test_kb_arguments() -> None:
    assert msg.parse_remove_target("faq.txt", "default") == ("default", "faq.txt")
    assert msg.parse_remove_target("hr:leave policy.md", "default") == ("hr", "leave policy.md")
    assert msg.upload_collection("<@UBOT> HR") == "hr"
    assert msg.upload_collection("") == "default"
    with pytest.raises(ValueError):
        msg.upload_collection("not a name!")


def test_the_app_manifest_asks_for_what_the_adapter_uses() -> None:
    import yaml

    from bot.slack.adapter import SLASH_COMMANDS, SUBSCRIBED_EVENTS
    from tests.conftest import REPO

    manifest = yaml.safe_load((REPO / "deploy" / "slack-manifest.yml").read_text())
    assert tuple(c["command"] for c in manifest["features"]["slash_commands"]) == SLASH_COMMANDS
    events = manifest["settings"]["event_subscriptions"]["bot_events"]
    assert {e.split(".")[0] for e in events} == set(SUBSCRIBED_EVENTS)
    # The Web API methods the adapter calls, and the scope each needs (docs.slack.dev, each method's page).
    needed = {
        "chat.postMessage": "chat:write", "chat.update": "chat:write", "chat.delete": "chat:write",
        "chat.startStream": "chat:write", "conversations.replies": "channels:history", "conversations.history": "im:history",
        "users.info": "users:read", "files (url_private)": "files:read", "app_mention event": "app_mentions:read",
        "slash commands": "commands", "message.groups event": "groups:history",
    }  # fmt: skip
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == set(needed.values())
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
