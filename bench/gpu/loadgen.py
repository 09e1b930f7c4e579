"""Load for an OpenAI-compatible chat server: one wave of ``concurrency`` streamed requests at once.

Each request has its own prompt of about ``prompt_tokens`` tokens (different texts, so no
prefix cache helps) and asks for exactly ``output_tokens`` tokens (``ignore_eos``, which
lmdeploy accepts). Output tokens/s is all the output tokens over the wave's wall time; TTFT
is each request's time to its first streamed text (queueing included: where the KV cache is
full, requests wait, and that is the point of the memory-capped runs).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.common import percentile


@dataclass
class Wave:
    concurrency: int
    output_tokens_per_s: float
    ttft_ms: dict[str, float]
    seconds: float
    failed: int

    def to_json(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "output_tokens_per_s": round(self.output_tokens_per_s, 1), "ttft_ms": self.ttft_ms,
                "seconds": round(self.seconds, 2), "failed": self.failed}  # fmt: skip


def prompts(tokenizer: Any, count: int, prompt_tokens: int, seed: int) -> list[str]:
    """Texts of about ``prompt_tokens`` tokens each, decoded from random token ids of the tokenizer's own vocabulary."""
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = []
    for _ in range(count):
        text = tokenizer.decode([rng.choice(ids) for _ in range(prompt_tokens)])
        # Decoding and encoding again merges differently; cut the re-encoded ids back to the length asked.
        texts.append(tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:prompt_tokens]))
    return texts


async def _one(http: httpx.AsyncClient, model: str, prompt: str, output_tokens: int) -> tuple[float, int]:
    """(seconds to the first text, output tokens) of one streamed request."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": output_tokens,
            "min_tokens": output_tokens, "ignore_eos": True, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    async with http.stream("POST", "/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                tokens = chunk["usage"].get("completion_tokens") or tokens
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content") and not first:
                    first = time.perf_counter() - started
    return first, tokens or output_tokens


async def wave(base_url: str, api_key: str, model: str, texts: list[str], output_tokens: int) -> Wave:
    limits = httpx.Limits(max_connections=len(texts) + 8, max_keepalive_connections=len(texts) + 8)
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=httpx.Timeout(900.0),
                                 limits=limits) as http:  # fmt: skip
        started = time.perf_counter()
        results = await asyncio.gather(*(_one(http, model, t, output_tokens) for t in texts), return_exceptions=True)
        seconds = time.perf_counter() - started
    good = [r for r in results if isinstance(r, tuple)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors and not good:
        raise RuntimeError(f"every request failed, e.g. {errors[0]!r}")
    ttfts = [r[0] * 1000 for r in good]
    summary = {"p50": percentile(ttfts, 50), "p99": percentile(ttfts, 99), "max": round(max(ttfts), 1)}
    return Wave(len(texts), sum(r[1] for r in good) / seconds, summary, seconds, len(errors))
