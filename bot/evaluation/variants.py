"""`teambot eval --variants`: the same questions against several inference settings, side by side
(the course's precision-versus-efficiency trade-off, on the team's own documents).

Each variant starts its own LLM server with its settings, answers every question, and reports
the answer metrics, decoding speed (streamed pieces per second of generation: llama.cpp and
lmdeploy stream about one token a piece), the server's peak memory, and the KV cache size the
server reports at start.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.evaluation.questions import EvalItem
from bot.evaluation.runner import run_answers
from bot.evaluation.scoring import ItemResult, Summary, summarize
from bot.runtime import open_runtime
from config.errors import ConfigError
from config.settings import Settings, with_values
from inference.lmdeploy import resolve_backend

# llama.cpp logs the KV cache's buffer per device ("CPU KV buffer size = 47.81 MiB") and then its
# total ("llama_kv_cache: size = 47.81 MiB (4096 cells, ...)"): the total when there is one, else the buffers.
KV_TOTAL = re.compile(r"llama_kv_cache\w*:\s+size\s*=\s*([\d.]+)\s*MiB")
KV_BUFFER = re.compile(r"KV (?:self )?buffer size\s*=\s*([\d.]+)\s*MiB", re.IGNORECASE)


@dataclass(frozen=True)
class Variant:
    name: str
    values: dict[str, str]  # dotted settings, e.g. {"inference.kv_cache_type": "f16"}


@dataclass
class VariantResult:
    variant: Variant
    description: str  # the server as it ran, e.g. "llama.cpp with SmolLM2-135M-Instruct.Q4_1 (KV cache f16)"
    summary: Summary
    results: list[ItemResult] = field(repr=False)
    pieces_per_s: float | None
    peak_rss_mib: float | None
    kv_cache_mib: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.variant.name, "settings": self.variant.values, "server": self.description,
            "summary": self.summary.to_json(), "pieces_per_s": self.pieces_per_s,
            "peak_rss_mib": self.peak_rss_mib, "kv_cache_mib": self.kv_cache_mib,
        }  # fmt: skip


def kv_variants(settings: Settings) -> list[Variant]:
    """The KV cache precisions of the backend teambot starts: llama.cpp f16 / q8_0 / q4_0, lmdeploy quant_policy 0 / 8 / 4."""
    backend = resolve_backend(settings.inference)
    if backend == "llamacpp":
        return [Variant(f"KV {kind}", {"inference.kv_cache_type": kind}) for kind in ("f16", "q8_0", "q4_0")]
    if backend == "lmdeploy":
        names = {0: "KV bf16/fp16", 8: "KV int8", 4: "KV int4"}
        return [Variant(names[q], {"inference.lmdeploy.quant_policy": str(q)}) for q in (0, 8, 4)]
    raise ConfigError(
        "--variants starts an LLM server per variant, but inference.backend is external",
        "run it where teambot starts the server (inference.backend = llamacpp or lmdeploy), or give --variant settings yourself",
    )


def parse_variant(spec: str) -> Variant:
    """``NAME:key=value,key=value`` (e.g. ``int4:inference.lmdeploy.quant_policy=4,inference.lmdeploy.model_path=/models/x``)."""
    name, _, pairs = spec.partition(":")
    values = dict(pair.split("=", 1) for pair in pairs.split(",") if "=" in pair)
    if not name.strip() or not values or any(not k.strip() for k in values):
        raise ConfigError(f"--variant {spec!r} is not NAME:key=value[,key=value]", "e.g. --variant 'kv-f16:inference.kv_cache_type=f16'")
    return Variant(name.strip(), {k.strip(): v.strip() for k, v in values.items()})


async def run_variants(
    settings: Settings, variants: Sequence[Variant], items: Sequence[EvalItem], progress: Callable[[str, EvalItem], None] | None = None
) -> list[VariantResult]:
    out = []
    for variant in variants:
        varied = with_values(settings, variant.values)
        async with open_runtime(varied, with_llm=True) as runtime:
            assert runtime.server is not None
            results = await run_answers(runtime.require_flow(), items, (lambda item: progress(variant.name, item)) if progress else None)
            process = getattr(runtime.server, "process", None)
            pid = process.pid if process is not None else None
            output = process.output() if process is not None else ""
            out.append(
                VariantResult(
                    variant, runtime.server.description, summarize(results, settings.rag.top_k), results,
                    pieces_per_s=_speed(results), peak_rss_mib=_peak_rss_mib(pid), kv_cache_mib=_kv_cache_mib(output),
                )
            )  # fmt: skip
    return out


def _speed(results: Sequence[ItemResult]) -> float | None:
    pieces = sum(r.deltas for r in results if r.answer is not None)
    seconds = sum(r.timings_ms["total"] - r.timings_ms["first_text"] for r in results if r.answer is not None and r.deltas > 1) / 1000
    return round(pieces / seconds, 1) if seconds > 0 else None


def _peak_rss_mib(pid: int | None) -> float | None:
    """The server process's peak resident memory (VmHWM), while it still runs."""
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmHWM:\s*(\d+) kB", status)
    return round(int(match.group(1)) / 1024, 1) if match else None


def _kv_cache_mib(output: str) -> float | None:
    """The KV cache's size from the server's start-up log (one start)."""
    totals = KV_TOTAL.findall(output)
    if totals:
        return round(float(totals[-1]), 2)
    buffers = [float(size) for size in KV_BUFFER.findall(output)]
    return round(sum(buffers), 2) if buffers else None
