"""👍 / 👎 under an answer on Discord. The answer id is in each button's custom_id, so votes work
after a restart; they go to the answer log the bot's client carries."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import discord

from bot.answer_log import AnswerLog, Vote


class FeedbackButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"teambot:feedback:(?P<vote>up|down):(?P<answer>[0-9a-f]{32})"):
    def __init__(self, vote: Vote, answer_id: str) -> None:
        label, emoji = ("Helpful", "👍") if vote == "up" else ("Not helpful", "👎")
        super().__init__(discord.ui.Button(label=label, emoji=emoji, style=discord.ButtonStyle.secondary, custom_id=f"teambot:feedback:{vote}:{answer_id}"))
        self.vote: Vote = vote
        self.answer_id = answer_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: re.Match[str]) -> FeedbackButton:
        return cls("up" if match["vote"] == "up" else "down", match["answer"])

    async def callback(self, interaction: discord.Interaction) -> None:
        answers = getattr(interaction.client, "answers", None)
        recorded = isinstance(answers, AnswerLog) and await asyncio.to_thread(answers.vote, self.answer_id, str(interaction.user.id), self.vote)
        text = "Thanks for the feedback!" if recorded else "That answer is no longer on record, but thanks."
        await interaction.response.send_message(text, ephemeral=True)


def feedback_view(answer_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(FeedbackButton("up", answer_id))
    view.add_item(FeedbackButton("down", answer_id))
    return view
