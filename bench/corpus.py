"""Synthetic team documents for the benchmarks: varied, reproducible, English and Chinese."""

from __future__ import annotations

import random
from pathlib import Path

SERVICES = ["billing", "search", "checkout", "auth", "notifications", "reporting", "ingest", "gateway", "ledger", "catalog",
            "payments", "scheduler", "exports", "profiles", "media", "analytics", "inventory", "pricing", "shipping", "support"]
TEAMS = ["platform", "payments", "growth", "data", "mobile", "web", "security", "infra", "support", "finance"]
ACTIONS = ["restart", "roll back", "scale up", "drain", "page the owner of", "open an incident for", "rotate the keys of",
           "check the dashboards of", "silence the alerts of", "fail over"]
CONDITIONS = ["error rate exceeds {n}%", "latency p99 passes {n} ms", "the queue holds more than {n} messages",
              "disk usage reaches {n}%", "more than {n} logins fail in a minute", "a deploy has been running for {n} minutes"]
CHINESE = ["当{service}服务的错误率超过百分之{n}时，值班工程师需要在{m}分钟内响应。",
           "{team}团队负责{service}服务的发布，每周{day}下午发布一次。",
           "报销{service}相关的云服务费用时，需要在{m}天内提交发票。"]
DAYS = ["一", "二", "三", "四", "五"]


def sentence(rng: random.Random) -> str:
    if rng.random() < 0.15:
        return rng.choice(CHINESE).format(service=rng.choice(SERVICES), team=rng.choice(TEAMS), n=rng.randint(1, 20),
                                          m=rng.randint(5, 60), day=rng.choice(DAYS))
    condition = rng.choice(CONDITIONS).format(n=rng.randint(2, 900))
    return (f"When the {rng.choice(SERVICES)} service's {condition}, the {rng.choice(TEAMS)} team should "
            f"{rng.choice(ACTIONS)} the {rng.choice(SERVICES)} service within {rng.randint(2, 60)} minutes.")


def write_corpus(folder: Path, files: int, sentences_per_file: int = 1, seed: int = 7) -> list[Path]:
    """``files`` Markdown files of a heading and ``sentences_per_file`` sentences each."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(files):
        path = folder / f"runbook-{k:05d}.md"
        body = " ".join(sentence(rng) for _ in range(sentences_per_file))
        path.write_text(f"# Runbook {k}: {rng.choice(SERVICES)}\n\n{body}\n", encoding="utf-8")
        paths.append(path)
    return paths


def questions(count: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        if rng.random() < 0.15:
            out.append(f"{rng.choice(SERVICES)}服务的错误率太高时应该怎么办？")
        else:
            out.append(f"What should the {rng.choice(TEAMS)} team do when the {rng.choice(SERVICES)} latency is high?")
    return out
