"""Which Discord servers teambot serves: those in ``discord.guild_ids`` and no others.

A bot's invite link works for anyone who has it, and a public bot can be added to any server;
there, its owner has Manage Server. So questions, commands and uploads are taken only from the
allowed servers (and from direct messages where ``discord.allow_dms`` is on), admin rights count
only there, and a server that is not allowed is left (``discord.leave_other_guilds``). Every
refusal is logged with the server's id and name, never with what was asked.
"""

from __future__ import annotations

import logging

import discord

from config.errors import ConfigError
from config.settings import DiscordSettings

log = logging.getLogger(__name__)

NOT_THIS_SERVER = "Sorry, teambot does not serve this server."
NO_DMS = "Sorry, I answer only in my team's Discord server: direct messages are off."


class GuildPolicy:
    def __init__(self, settings: DiscordSettings) -> None:
        if not settings.guild_ids:
            raise ConfigError(
                "discord.guild_ids is empty: teambot would answer (and take uploads from) any Discord server it is added to",
                "set discord.guild_ids to your server's ID (Discord: User Settings > Advanced > Developer Mode, "
                "then right-click the server > Copy Server ID), e.g. TEAMBOT_DISCORD__GUILD_IDS='[123456789012345678]'",
            )
        self.allowed = frozenset(settings.guild_ids)
        self._dms = settings.allow_dms
        self._leave = settings.leave_other_guilds

    def admits(self, guild_id: int | None) -> bool:
        """Whether teambot serves this server (None: a direct message)."""
        return self._dms if guild_id is None else guild_id in self.allowed

    def refusal(self, guild_id: int | None) -> str:
        """What someone is told where teambot does not serve them."""
        return NO_DMS if guild_id is None else NOT_THIS_SERVER

    def log_refused(self, what: str, guild: discord.Guild | None, guild_id: int | None, user_id: int) -> None:
        """One line per refused event: where it came from, never what it said."""
        if guild_id is None:
            log.warning("Discord: refused a %s in a direct message from user %s: discord.allow_dms is off", what, user_id)
        else:
            log.warning(
                "Discord: refused a %s in server %s (%r) from user %s: not in discord.guild_ids", what, guild_id, _name(guild), user_id
            )

    async def check_membership(self, guild: discord.Guild) -> None:
        """Called for every server the bot is in (at start) or is added to: leaves one that is not allowed."""
        if guild.id in self.allowed:
            return
        if not self._leave:
            log.warning(
                "Discord: the bot is in server %s (%r), which is not in discord.guild_ids: its requests will be refused",
                guild.id,
                guild.name,
            )
            return
        log.warning("Discord: leaving server %s (%r): not in discord.guild_ids (discord.leave_other_guilds is on)", guild.id, guild.name)
        try:
            await guild.leave()
        except discord.HTTPException as exc:
            log.error("Discord: could not leave server %s (%r) (HTTP %s); its requests will be refused", guild.id, guild.name, exc.status)


def _name(guild: discord.Guild | None) -> str:
    return guild.name if guild is not None and guild.name else "?"
