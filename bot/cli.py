"""The `teambot` command line: index, search, ask, chat, serve, status, eval, quantize, config.

Results go to stdout (``--json`` for machines); progress and errors go to stderr. A problem the
user can fix ends the command with its message and hint, and exit code 1 (2 for bad
configuration), never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import signal
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from bot.cli_output import ProgressBar, err, guarded, out, print_error, print_json, progress_line
from bot.core import AnswerDone
from bot.evaluation.commands import eval_app
from bot.prompt import passage_label
from bot.runtime import Runtime, knowledge_runtime, open_runtime
from bot.service import Service
from bot.status import render_status
from bot.terminal import TerminalView, chat, stdin_is_terminal, terminal_request
from config.errors import ConfigError, TeambotError
from config.settings import DEFAULT_COLLECTION, Settings, load_settings
from inference.llamacpp import SHIPPED_MODEL_REWRITE_NOTICE, LlamaCppServer
from inference.supervisor import ServerSupervisor
from rag.ingest.indexer import IndexReport
from rag.operations.desk import IndexStatus
from rag.operations.run_history import Run
from rag.search.retriever import Retrieval

log = logging.getLogger(__name__)

app = typer.Typer(
    help="teambot: answers from your team's documents, with a local LLM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

LOG_FILE_BYTES = 5 * 1024 * 1024
NO_PLATFORM_HELP = """No chat platform is configured.
  Slack:   set SLACK_BOT_TOKEN and SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP events).
  Discord: set DISCORD_BOT_TOKEN."""

CollectionOption = Annotated[list[str], typer.Option("--collection", "-c", help="Collection(s) to use.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="TOML settings file (default: $TEAMBOT_CONFIG or config/teambot.toml).")] = None,
) -> None:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print_error(exc)
        raise typer.Exit(2) from None
    _setup_logging(settings)
    ctx.obj = settings


def main() -> None:
    # teambot uses no JAX, but a library it imports may start JAX, which takes 75% of the GPU at
    # once (seen on the GPU machine: 36-60 GiB held by teambot's own process, starving lmdeploy).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    app()


# --- commands -------------------------------------------------------------------------------


@app.command()
def index(
    ctx: typer.Context,
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders (default: the collection's knowledge folder).")] = None,
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection to index into.")] = DEFAULT_COLLECTION,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Drop the collection first and embed everything again.")] = False,
    allow_mass_delete: Annotated[
        bool, typer.Option("--allow-mass-delete", help="Delete the documents of removed files even when that is most or all of the collection.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Index knowledge files: new ones are added, changed ones replaced, removed ones deleted."""
    settings: Settings = ctx.obj

    def run() -> IndexReport:
        with knowledge_runtime(settings) as runtime:
            if not paths and not rebuild and not allow_mass_delete:  # the service's runs never delete most of a collection
                joined = _join_service_queue(runtime, collection)
                if joined is not None:
                    return joined
            with _IndexBar() as bar:
                return runtime.desk.index(paths, collection, rebuild=rebuild, progress=bar, allow_mass_delete=allow_mass_delete)

    report = guarded(run)
    if as_json:
        print_json(report.to_json())
        return
    out.print(
        f"collection {report.collection}: {report.added} added, {report.updated} updated, {report.deleted} deleted, "
        f"{report.unchanged} unchanged, {len(report.failed)} failed; {report.chunks} chunks embedded "
        f"({report.total_chunks} in the collection) in {report.seconds:.1f} s"
    )
    for failure in report.failed:
        out.print(f"  [red]failed[/red] {escape(failure['path'])}: {escape(failure['error'])}")


@app.command()
def search(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="What to look for.")],
    collection: CollectionOption = [DEFAULT_COLLECTION],  # noqa: B006 (typer needs a list default)
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", min=1, max=50, help="How many passages (default: rag.top_k).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Retrieval only, no LLM: the passages teambot would answer from."""
    settings: Settings = ctx.obj

    def run() -> Retrieval:
        with knowledge_runtime(settings) as runtime:
            return runtime.retriever.search(question, collection, top_k)

    retrieval = guarded(run)
    if as_json:
        print_json({"sources": [p.to_json() for p in retrieval.passages], "timings_ms": retrieval.timings_ms})
        return
    if not retrieval.passages:
        decision = "rag.relevance" if settings.rag.relevance else f"rag.min_score = {settings.rag.bar:g}"
        out.print(f"nothing relevant (no passage passes {decision})")
    for n, passage in enumerate(retrieval.passages, start=1):
        out.print(f"[bold][{n}] {escape(passage_label(passage))}[/bold]  [dim]score {passage.score:.2f}[/dim]")
        out.print(escape(passage.text), "\n")


@app.command()
def ask(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="The question.")],
    collection: CollectionOption = [DEFAULT_COLLECTION],  # noqa: B006
    as_json: JsonOption = False,
) -> None:
    """Answer one question from the knowledge base, citing sources."""
    settings: Settings = ctx.obj

    async def run() -> AnswerDone | None:
        async with open_runtime(settings, with_llm=True, progress=progress_line) as runtime:
            return await runtime.require_flow().answer(terminal_request(question, collection), TerminalView(out, err, quiet=as_json))

    done = guarded(lambda: asyncio.run(run()))
    if done is None:  # the view said why
        raise typer.Exit(1)
    if as_json:
        print_json(done.to_json())


@app.command("chat")
def chat_command(ctx: typer.Context, collection: CollectionOption = [DEFAULT_COLLECTION]) -> None:  # noqa: B006
    """A conversation in the terminal, with streamed answers and sources."""
    settings: Settings = ctx.obj

    async def run() -> None:
        async with open_runtime(settings, with_llm=True, progress=progress_line) as runtime:
            await chat(runtime.require_flow(), collection, out, err)

    guarded(lambda: asyncio.run(run()))


@app.command()
def serve(ctx: typer.Context, collection: CollectionOption = [DEFAULT_COLLECTION]) -> None:  # noqa: B006
    """Start the LLM server and the configured chat platforms; run until stopped."""
    settings: Settings = ctx.obj

    async def run() -> None:
        async with open_runtime(settings, with_llm=True, serving=True, progress=progress_line) as runtime:
            assert runtime.server is not None and runtime.endpoint is not None
            service = Service(runtime)
            await service.start()
            try:
                err.print(f"teambot is up: {runtime.server.description}, OpenAI-compatible API at {runtime.endpoint.base_url}")
                if isinstance(runtime.server, LlamaCppServer) and runtime.server.model_notice:
                    notices = [runtime.server.model_notice, *([SHIPPED_MODEL_REWRITE_NOTICE] if settings.bot.rewrite_question else [])]
                    for notice in notices:
                        log.warning("%s", notice)
                        err.print(f"[yellow]{escape(notice)}[/yellow]")
                if service.http is not None:
                    err.print(f"HTTP server at {service.http.url}: /healthz, /metrics" + (", Slack events at /slack/events" if service.slack else ""))
                    if service.console_off:
                        err.print(f"[yellow]{escape(service.console_off)}[/yellow]")
                    elif service.console_url:
                        err.print(f"Admin console at {service.console_url}")
                if service.platforms:
                    err.print(f"Answering on {', '.join(service.platforms)}. Stop with SIGTERM or Ctrl-C.")
                else:
                    err.print(NO_PLATFORM_HELP)
                if not service.platforms and stdin_is_terminal():
                    err.print("Meanwhile, ask here in the terminal.")
                    await chat(runtime.require_flow(), collection, out, err)
                else:
                    if not service.platforms:
                        err.print("stdin is not a terminal: waiting for SIGTERM or Ctrl-C.")
                    await _until_signalled(runtime.supervisor)
            finally:
                await service.stop()

    guarded(lambda: asyncio.run(run()))


@app.command()
def quantize(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", help="Model ID on the Hugging Face hub, or a local model folder.")] = "internlm/internlm2_5-1_8b-chat",
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default: <data_dir>/models/<model>-w4a16).")] = None,
    group_size: Annotated[int, typer.Option("--group-size", min=8, max=1024, help="Weights per 4-bit quantization group.")] = 128,
    calib_samples: Annotated[int, typer.Option("--calib-samples", min=1, max=4096, help="Calibration samples.")] = 128,
    calib_seqlen: Annotated[int, typer.Option("--calib-seqlen", min=16, max=32768, help="Tokens per calibration sample.")] = 2048,
    calib_dataset: Annotated[
        str, typer.Option("--calib-dataset", help="knowledge: the indexed documents; none: data-free; or one of lmdeploy's (e.g. wikitext2, downloaded).")
    ] = "knowledge",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=256, help="Calibration samples run at once (more is faster, needs more GPU memory).")] = 1,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Let this model's own Python code (auto_map) run, in a child process without teambot's tokens.")
    ] = False,
    model_format: Annotated[
        str, typer.Option("--format", help="awq: W4A16 for lmdeploy on a GPU; gguf: a GGUF for llama.cpp on a CPU (from a local model folder).")
    ] = "awq",
    gguf_type: Annotated[str, typer.Option("--type", help="With --format gguf: q4_k_m (4-bit), q8_0 or f16.")] = "q4_k_m",
    threads: Annotated[int, typer.Option("--threads", min=0, max=512, help="With --format gguf: quantization threads (0: one per core).")] = 0,
) -> None:
    """Quantize a model: W4A16 (AWQ, lmdeploy lite) for lmdeploy on a GPU, or a 4-bit GGUF for llama.cpp on a CPU."""
    settings: Settings = ctx.obj
    if model_format == "gguf":
        _quantize_gguf(settings, model, out_dir, gguf_type.lower(), threads)
        return
    if model_format != "awq":
        print_error(ConfigError(f"--format {model_format} is not awq or gguf", "use --format awq (the default, for a GPU) or --format gguf (for llama.cpp)"))
        raise typer.Exit(2)
    from inference.quantize import default_output
    from inference.quantize import quantize as run_quantize

    target = (out_dir or default_output(settings, model)).expanduser().resolve()
    result = guarded(
        lambda: run_quantize(
            settings, model, target, group_size=group_size, calib_samples=calib_samples, calib_seqlen=calib_seqlen,
            calib_dataset=calib_dataset, batch_size=batch_size, trust_remote_code=trust_remote_code, progress=progress_line,
        )
    )  # fmt: skip
    gb = 1024**3
    out.print(
        f"quantized {result.model.name} to W4A16 in {result.seconds:.0f} s: weights {result.bytes_before / gb:.2f} GiB -> "
        f"{result.bytes_after / gb:.2f} GiB ({result.bytes_after / max(result.bytes_before, 1):.0%})\n"
        f"calibration: {result.calibration}\nmodel: {result.out}"
    )
    if result.out != settings.inference.lmdeploy.model_path:
        out.print(f"serve it with: TEAMBOT_INFERENCE__LMDEPLOY__MODEL_PATH={result.out} teambot serve")


def _quantize_gguf(settings: Settings, model: str, out_dir: Path | None, gguf_type: str, threads: int) -> None:
    from inference.gguf_export import default_output, export_gguf
    from inference.model_catalog import quantize_source

    pulled = guarded(lambda: quantize_source(model, settings.models_dir))  # a short name, or a hub ID already pulled
    source = pulled or Path(model).expanduser().resolve()
    target = out_dir or default_output(settings.models_dir, source, gguf_type)
    result = guarded(lambda: export_gguf(source, target, gguf_type=gguf_type, threads=threads, progress=progress_line))
    gb = 1024**3
    out.print(
        f"wrote {result.out.name} ({result.gguf_type.upper()}) from {result.model.name} in {result.seconds:.0f} s: weights "
        f"{result.bytes_before / gb:.2f} GiB -> {result.bytes_after / gb:.2f} GiB\nmodel: {result.out}"
    )
    if result.out != settings.inference.model_path:
        out.print(f"serve it with: TEAMBOT_INFERENCE__MODEL_PATH={result.out} teambot serve")


@app.command()
def status(ctx: typer.Context, runs: Annotated[int, typer.Option("--runs", min=1, max=500, help="How many recent runs.")] = 5, as_json: JsonOption = False) -> None:
    """Show the index: who runs it, the run in progress, recent runs and each collection's documents."""
    settings: Settings = ctx.obj
    def read() -> IndexStatus:
        with knowledge_runtime(settings) as runtime:
            return runtime.desk.status(runs)

    report = guarded(read)
    if as_json:
        print_json(report.to_json())
        return
    out.print(render_status(report))


app.add_typer(eval_app, name="eval")

discord_app = typer.Typer(help="Discord helpers.", no_args_is_help=True)
app.add_typer(discord_app, name="discord")


@discord_app.command("invite-url")
def discord_invite_url(
    ctx: typer.Context,
    client_id: Annotated[int | None, typer.Option("--client-id", help="The application's ID (default: asked of Discord with DISCORD_BOT_TOKEN).")] = None,
) -> None:
    """Print the URL that adds teambot to a server, with the permissions and scopes it needs."""
    settings: Settings = ctx.obj
    from bot.discord.adapter import application_id, invite_url

    if client_id is None:
        client_id = guarded(lambda: asyncio.run(application_id(settings)))
    out.print(invite_url(client_id))


state_app = typer.Typer(help="The state replicas share (state_url).", no_args_is_help=True)
app.add_typer(state_app, name="state")


@state_app.command("migrate")
def state_migrate(
    ctx: typer.Context,
    to: Annotated[str | None, typer.Option("--to", help="The PostgreSQL to move into (default: state_url). The password goes in PGPASSWORD.")] = None,
    chroma_url: Annotated[
        str | None, typer.Option("--chroma-url", help="The Chroma server the replicas will use, serving this data dir's chroma folder (default: rag.chroma_url).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Move this data dir's SQLite state and the collections' files into an empty PostgreSQL, counted on both sides."""
    settings: Settings = ctx.obj
    from bot.state_migration import migrate_state

    url = to or settings.state_url
    if not url:
        print_error(ConfigError("no PostgreSQL to migrate into", "give --to postgresql://user@host:5432/teambot, or set state_url (TEAMBOT_STATE_URL)"))
        raise typer.Exit(2)
    result = guarded(lambda: migrate_state(settings, url, progress_line, chroma_url))
    if as_json:
        print_json(asdict(result))
        return
    for table in result.tables:
        out.print(f"  {table.table:<17} {table.source:>8} rows in SQLite, {table.copied:>8} in PostgreSQL")
    out.print(f"  {'knowledge files':<17} {result.files:>8} ({result.files_bytes / 1024 / 1024:.1f} MB) stored for every replica")
    for line in result.skipped:
        out.print(f"  skipped {line}")
    out.print(f"moved into {result.target} in {result.seconds:.1f} s, for the Chroma store {result.store}")
    out.print("set state_url (TEAMBOT_STATE_URL) on every replica, and rag.chroma_url to that store")


models_app = typer.Typer(help="Models: download one (`pull`), see what is here (`list`).", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("pull")
def models_pull(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A short name from `teambot models list`, or a repository ID (owner/name).")],
    source: Annotated[
        str | None, typer.Option("--source", help="huggingface (HF_ENDPOINT for a mirror) or modelscope (default: models.source).")
    ] = None,
    revision: Annotated[str, typer.Option("--revision", help="Branch, tag or commit of the repository.")] = "main",
) -> None:
    """Download a model into <data_dir>/models/NAME/: resumable, checked against the hub's checksums."""
    settings: Settings = ctx.obj
    from inference.model_hub import plan, pull, size_text

    if source not in (None, "huggingface", "modelscope"):
        print_error(ConfigError(f"--source {source!r} is not a model hub teambot uses", "use huggingface or modelscope"))
        raise typer.Exit(2)
    result = guarded(lambda: pull(plan(settings, name, source, revision), progress_line))
    request = result.request
    if result.already:
        out.print(f"{request.name} is already pulled: {request.target} ({result.files} files, {size_text(result.bytes)})")
    else:
        rate = size_text(int(result.bytes / max(result.seconds, 1e-3)))
        out.print(f"pulled {request.repository} from {request.source} in {result.seconds:.1f} s ({result.files} files, {size_text(result.bytes)}, {rate}/s): {request.target}")


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The models teambot knows by short name, whether each is here, and the other folders of <data_dir>/models/."""
    settings: Settings = ctx.obj
    from inference.model_catalog import listing

    rows = listing(settings.models_dir, settings.models.source)
    if as_json:
        print_json({"models_dir": str(settings.models_dir), "models": [row.to_json() for row in rows]})
        return
    for row in rows:
        state = f"[green]here[/green] {escape(str(row.path))}" if row.path else f"[yellow]not pulled[/yellow]: teambot models pull {row.name}"
        source = f" from {escape(row.repository)}" if row.repository else ""
        size = f" ({row.size})" if row.size else ""
        out.print(f"[bold]{escape(row.name)}[/bold]{size}{source}\n  {escape(row.use)}\n  {state}")


@app.command("config")
def config_command(ctx: typer.Context) -> None:
    """Print the effective settings (secrets hidden)."""
    settings: Settings = ctx.obj
    print_json(settings.redacted())


# --- helpers -------------------------------------------------------------------------------


async def _until_signalled(supervisor: ServerSupervisor | None = None) -> None:
    """Returns at SIGINT or SIGTERM; raises LLMGaveUp when the LLM server's supervisor gives up."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    waits = [asyncio.create_task(stop.wait())] + ([asyncio.create_task(supervisor.wait())] if supervisor else [])
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    for task in done:
        task.result()


def _setup_logging(settings: Settings) -> None:
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(settings.logs_dir / "teambot.log", maxBytes=LOG_FILE_BYTES, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, logging.handlers.RotatingFileHandler)] + [handler]
    root.setLevel(settings.log_level)
    # Libraries that would log requests, payloads or user text at INFO or DEBUG.
    for noisy in ("httpx", "httpcore", "openai", "chromadb", "sentence_transformers", "urllib3", "slack_bolt", "slack_sdk", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _join_service_queue(runtime: Runtime, collection: str) -> IndexReport | None:
    """With `teambot serve` running the index, queues a re-index there and follows it; None when no service runs it."""
    desk = runtime.desk
    service = desk.index_service()
    if service is None:
        return None
    request = desk.request_reindex("cli")
    where = f"pid {service.info.get('pid', '?')} on {service.info.get('host', '?')}"
    err.print(f"teambot serve ({where}) runs the index: this re-index joined its queue (request {request.request_id})")
    with _IndexBar() as bar:
        run = desk.follow(request.request_id, bar.show_run)
    if run is None or run.state == "interrupted":
        err.print("teambot serve stopped before it ran the re-index: indexing here")
        return None
    if run.state == "failed":
        raise TeambotError(f"the service's index run {run.id} failed: {run.error}", "see <data_dir>/logs/teambot.log of the service")
    report = run.report_for(collection)
    if report is None:
        raise TeambotError(f"the service's index run {run.id} did not cover collection {collection!r}", "is its folder configured under [rag.collections]?")
    if not isinstance(report, IndexReport):
        raise TeambotError(f"collection {collection!r}: {report.error}")
    return report


class _IndexBar(ProgressBar):
    """A progress bar on stderr for the files an index run parses and embeds."""

    def __init__(self) -> None:
        super().__init__("indexing")
        self._task: Any = None

    def planned(self, files: int) -> None:
        self._task = self._progress.add_task("", total=files)

    def advance(self, path: str) -> None:
        self._progress.update(self._task, advance=1, description=escape(path))

    def show_run(self, run: Run) -> None:
        """The progress of a run in another process."""
        if self._task is None:
            self._task = self._progress.add_task("", total=None)
        self._progress.update(self._task, total=run.files_total or None, completed=run.files_done, description=escape(f"run {run.id} {run.current}"))


if __name__ == "__main__":
    main()
