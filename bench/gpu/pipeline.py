"""The GPU run, on the lent machine: build, quantize, serve, ask, benchmark. Started by bench/gpu/run.sh.

    python3 -m bench.gpu.pipeline --work /tmp/tb [--internlm2 FILES]

1. builds a model with internlm2_5-1_8b-chat's shapes and random weights: in the Llama layout
   (bench/gpu/build_model.py), or with --internlm2 in InternLM2's own layout through its remote
   code and real tokenizer from FILES, under the image's transformers (bench/gpu/build_internlm2.py;
   the rest then runs on the transformers a user gets, put first on PYTHONPATH by run.sh), and
   checks that teambot refuses to serve that folder as published (its tokenizer breaks lmdeploy);
2. indexes a knowledge base (the sample one plus generated runbooks) and quantizes the model to
   W4A16 through `teambot quantize`'s code path (inference/quantize.py), calibrating on it;
3. starts lmdeploy servers through teambot's manager (inference/lmdeploy.py) and runs
   `teambot ask` end to end against W4A16 + KV int8;
4. benchmarks bf16, W4A16, W4A16 + KV int8 and W4A16 + KV int4, uncapped (KV cache far larger
   than the load needs) at concurrency 1/16/64/128 with short prompts, then capped to an 8 GiB
   GPU budget per server at 16/64/128 with 1,536-token prompts and 512 output tokens; and the
   bot's own answer latency through the core at concurrency 1 and 16.
Results go to <work>/results/gpu.json after every step; the log says what runs.

The 8 GiB cap: each variant's KV cache gets what 8 GiB leaves after that variant's own
non-KV memory (weights, activations, CUDA graphs, the CUDA context), as measured on its
uncapped server with nvidia-smi, passed as --num-gpu-blocks. The four capped servers then
run side by side (they fit in 32 GiB) and are measured one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path
from typing import Any

from bench.common import QUESTIONS

REPO = Path(__file__).resolve().parents[2]
GIB = 1024**3
BLOCK_TOKENS = 64  # lmdeploy's --cache-block-seq-len default
UNCAPPED_BLOCKS = 1600  # 102,400 tokens: 2x what c=128 x (128 + 256 + template) needs
CAP_BYTES = 8 * GIB
# internlm2_5-1_8b: 24 layers x 8 KV heads x 128 dims, K and V. int8/int4 keep a float16 scale and zero point per token and head.
LAYERS, KV_HEADS, HEAD_DIM = 24, 8, 128
QUANT_PARAMS = 2 * LAYERS * KV_HEADS * 2 * 2
KV_BYTES_PER_TOKEN = {0: 2 * LAYERS * KV_HEADS * HEAD_DIM * 2, 8: 2 * LAYERS * KV_HEADS * HEAD_DIM + QUANT_PARAMS,
                      4: LAYERS * KV_HEADS * HEAD_DIM + QUANT_PARAMS}  # fmt: skip

started = time.monotonic()
results: dict[str, Any] = {"steps": {}}


def log(message: str) -> None:
    print(f"[{time.monotonic() - started:7.1f} s] {message}", flush=True)


def save(work: Path) -> None:
    (work / "results").mkdir(parents=True, exist_ok=True)
    (work / "results" / "gpu.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))


@contextmanager
def step(work: Path, name: str) -> Iterator[None]:
    """``with step(work, name):`` records the step's seconds, or its error (logged, then raised), and saves."""
    started_at = time.monotonic()
    log(f"--- {name}")
    entry: dict[str, Any] = {}
    try:
        yield
    except BaseException as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
        log(traceback.format_exc())
        raise
    finally:
        results["steps"][name] = {"seconds": round(time.monotonic() - started_at, 1), **entry}
        save(work)


def settings_for(work: Path, **overrides: Any):  # type: ignore[no-untyped-def]
    from config.settings import load_settings

    rag = {"knowledge_dir": str(work / "knowledge"), "embed_model": str(work / "stage" / "minilm-fp16")}  # fmt: skip
    return load_settings(REPO / "tests" / "teambot-test.toml", data_dir=str(work / "data"), rag=rag, **overrides)


def knowledge(work: Path) -> Path:
    """The sample knowledge base plus generated runbooks: enough text to calibrate on (16 x 512 tokens)."""
    from bench.corpus import write_corpus

    folder = work / "knowledge"
    shutil.copytree(REPO / "examples" / "knowledge", folder, dirs_exist_ok=True)
    write_corpus(folder, files=150, sentences_per_file=20)
    return folder


def command(args: list[str], what: str, env: dict[str, str] | None = None) -> str:
    """Runs a command to its end (a fresh process: its GPU memory is returned when it exits); returns its output."""
    done = subprocess.run(args, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=1200)
    output = done.stdout + done.stderr
    log(f"{what}: exit {done.returncode}\n{output[-2500:]}")
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed with exit code {done.returncode}")
    return output


def gpu_processes() -> list[str]:
    """nvidia-smi's view, with each process's command line: who holds how much GPU memory (to explain failures)."""
    try:
        rows = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip().splitlines()  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return [repr(exc)]
    described = []
    for row in rows:
        pid = row.split(",")[0].strip()
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
            parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            args, parent = "(gone)", "?"
        described.append(f"{row} | ppid {parent} | {args} | pipeline pid {os.getpid()}")
    return described


def weights_gib(folder: Path) -> float:
    from inference.quantize import weights_bytes

    return round(weights_bytes(folder) / GIB, 2)


# --- servers ------------------------------------------------------------------------------


def variants(work: Path) -> dict[str, tuple[Path, int]]:
    models = work / "models"
    return {"bf16": (models / "bf16", 0), "w4a16": (models / "w4a16", 0), "w4a16-kv8": (models / "w4a16", 8), "w4a16-kv4": (models / "w4a16", 4)}


def server(work: Path, name: str, model: Path, quant_policy: int, blocks: int, tag: str):  # type: ignore[no-untyped-def]
    from inference.lmdeploy import LMDeployServer

    lmdeploy = {"model_path": str(model), "quant_policy": quant_policy, "session_len": 4096, "max_batch_size": 128,
                "extra_args": ["--num-gpu-blocks", str(blocks)], "start_timeout_s": 900}  # fmt: skip
    settings = settings_for(work, inference={"backend": "lmdeploy", "lmdeploy": lmdeploy})
    return LMDeployServer(settings.inference, log_dir=work / "logs" / f"{tag}-{name}", api_key=f"bench-{name}")


def gpu_memory_by_group() -> dict[int, int]:
    """GPU bytes in use per process group (a server and its engine workers share one)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    groups: dict[int, int] = {}
    for line in out.strip().splitlines():
        pid, mib = (int(x.strip()) for x in line.split(","))
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            continue
        groups[group] = groups.get(group, 0) + mib * 1024 * 1024
    return groups


async def start_all(servers: dict[str, Any]) -> dict[str, Any]:
    async def one(name: str, s: Any) -> tuple[str, Any]:
        endpoint = await s.start(lambda m: log(f"{name}: {m}"))
        return name, endpoint

    done = await asyncio.gather(*(one(n, s) for n, s in servers.items()), return_exceptions=True)
    endpoints = {}
    for item in done:
        if isinstance(item, BaseException):
            log(f"a server failed to start: {item!r}")
        else:
            endpoints[item[0]] = item[1]
    return endpoints


async def measure(endpoint: Any, tokenizer: Any, levels: list[int], prompt_tokens: int, output_tokens: int, runs: int = 2) -> dict[str, Any]:
    from bench.gpu.loadgen import prompts, wave

    table: dict[str, Any] = {}
    for level in levels:
        await wave(endpoint.base_url, endpoint.api_key, endpoint.model, prompts(tokenizer, level, prompt_tokens, seed=level), 8)  # warm-up
        measured = []
        for run in range(runs):
            texts = prompts(tokenizer, level, prompt_tokens, seed=1000 * (run + 1) + level)
            measured.append((await wave(endpoint.base_url, endpoint.api_key, endpoint.model, texts, output_tokens)).to_json())
            log(f"  c={level} run {run + 1}: {measured[-1]}")
        table[str(level)] = measured
    return table


# --- the bot's own latency ----------------------------------------------------------------


async def core_latency(work: Path, endpoint: Any) -> dict[str, Any]:
    from bench.common import summary_ms
    from bot.core import AnswerDone
    from bot.runtime import open_runtime

    os.environ["TEAMBOT_LLM_API_KEY"] = endpoint.api_key
    settings = settings_for(work, inference={"backend": "external", "base_url": endpoint.base_url, "max_tokens": 128},
                            bot={"max_concurrent": 16})  # fmt: skip

    async def answer(engine: Any, question: str) -> dict[str, float]:
        async with aclosing(engine.answer(question)) as events:
            async for event in events:
                if isinstance(event, AnswerDone):
                    return event.timings_ms
        raise AssertionError("no AnswerDone")

    out: dict[str, Any] = {}
    async with open_runtime(settings, with_llm=True) as runtime:
        engine = runtime.require_engine()
        await answer(engine, QUESTIONS[0])  # warm-up
        for level in (1, 16):
            timings = []
            for _ in range(2 if level == 16 else 10):
                batch = [QUESTIONS[k % len(QUESTIONS)] for k in range(level)]
                timings += await asyncio.gather(*(answer(engine, q) for q in batch))
            out[str(level)] = {key: summary_ms([t[key] for t in timings]) for key in ("retrieve", "first_token", "total") if key in timings[0]}
            log(f"  core c={level}: {out[str(level)]}")
    return out


# --- the run --------------------------------------------------------------------------------


def image_env() -> dict[str, str]:
    """The environment without the user's transformers (USER_TRANSFORMERS, first on PYTHONPATH): the image's own."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != os.environ.get("USER_TRANSFORMERS")]
    return {"PYTHONPATH": os.pathsep.join(paths)}


def build_internlm2(work: Path, files: Path) -> None:
    models = work / "models"
    report = work / "results" / "internlm2-build.json"
    command([sys.executable, "-m", "bench.gpu.build_internlm2", "--remote-code", str(files), "--out", str(models / "internlm2"),
             "--report", str(report)], "build InternLM2 through its remote code", image_env())  # fmt: skip
    results["internlm2_build"] = json.loads(report.read_text())
    results["model"] = {"parameters": results["internlm2_build"].get("parameters"), "bf16_weights_gib": weights_gib(models / "internlm2")}


def ask(work: Path, model: Path, quant_policy: int) -> dict[str, Any]:
    """`teambot ask` with inference.backend = auto on ``model``: its exit code and output."""
    env = {**os.environ, "TEAMBOT_DATA_DIR": str(work / "data"), "TEAMBOT_RAG__KNOWLEDGE_DIR": str(work / "knowledge"),
           "TEAMBOT_RAG__EMBED_MODEL": str(work / "stage" / "minilm-fp16"), "TEAMBOT_INFERENCE__BACKEND": "auto",
           "TEAMBOT_INFERENCE__LMDEPLOY__MODEL_PATH": str(model), "TEAMBOT_INFERENCE__MAX_TOKENS": "48",
           "TEAMBOT_INFERENCE__LMDEPLOY__SESSION_LEN": "4096", "TEAMBOT_INFERENCE__LMDEPLOY__QUANT_POLICY": str(quant_policy),
           "TEAMBOT_INFERENCE__LMDEPLOY__EXTRA_ARGS": json.dumps(["--num-gpu-blocks", "256"])}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "bot.cli", "ask", QUESTIONS[0]], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log(f"teambot ask ({model.name}, quant policy {quant_policy}) exit {done.returncode}\n{done.stderr[-1500:]}\n{done.stdout[-1500:]}")
    return {"exit_code": done.returncode, "stdout": done.stdout[-3000:], "stderr": done.stderr[-3000:]}


async def run(work: Path, internlm2_files: Path | None, skip_bench: bool = False) -> None:
    import lmdeploy
    import torch  # this process never touches the GPU: servers and the quantizer run in their own

    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"], capture_output=True, text=True)
    results["machine"] = {"gpu": gpu.stdout.strip(), "torch": torch.__version__, "lmdeploy": lmdeploy.__version__, "python": sys.version.split()[0]}
    log(str(results["machine"]))
    models = work / "models"
    folder = knowledge(work)

    if internlm2_files is not None:
        with step(work, "build InternLM2 model (remote code, image transformers)"):
            build_internlm2(work, internlm2_files)
    else:
        with step(work, "build model"):
            params = command([sys.executable, "-m", "bench.gpu.build_model", "--out", str(models / "bf16"), "--texts", str(folder)], "build model")
            results["model"] = {"parameters": next(int(line) for line in params.splitlines() if line.strip().isdigit()), "bf16_weights_gib": weights_gib(models / "bf16")}

    with step(work, "index knowledge"):
        from bot.runtime import knowledge_runtime

        with knowledge_runtime(settings_for(work)) as runtime:
            report = runtime.indexer.run()
        results["index"] = {"files": report.added, "chunks": report.total_chunks, "seconds": round(report.seconds, 1)}

    source = models / "bf16"
    if internlm2_files is not None:
        source = models / "internlm2"
        with step(work, "teambot ask on the InternLM2 folder as published (must be refused)"):
            results["teambot_ask_published_folder"] = ask(work, source, 8)
        if not skip_bench:
            with step(work, "convert to the Llama layout for the bf16 variant"):
                from inference.internlm2 import convert

                convert(source, models / "bf16", progress=log)

    with step(work, "teambot quantize"):
        env = {"TEAMBOT_DATA_DIR": str(work / "data"), "TEAMBOT_RAG__KNOWLEDGE_DIR": str(folder)}
        output = command([sys.executable, "-m", "bot.cli", "quantize", "--model", str(source), "--out", str(models / "w4a16"),
                          "--group-size", "128", "--calib-samples", "16", "--calib-seqlen", "512"], "teambot quantize", env)  # fmt: skip
        results["quantize"] = {"output": [line for line in output.splitlines() if line.startswith(("quantized", "calibration:", "model:", "convert", "transformers"))],
                               "bf16_gib": weights_gib(models / "bf16"), "w4a16_gib": weights_gib(models / "w4a16")}  # fmt: skip
        results["gpu_after_quantize"] = gpu_processes()

    with step(work, "teambot ask end to end (W4A16 + KV int8)"):
        results["teambot_ask"] = ask(work, models / "w4a16", 8)
        results["gpu_after_ask"] = gpu_processes()
    if internlm2_files is not None:
        with step(work, "teambot ask end to end (W4A16 + KV int4)"):
            results["teambot_ask_kv4"] = ask(work, models / "w4a16", 4)
    if skip_bench:
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(models / "bf16"))

    uncapped = {name: server(work, name, model, policy, UNCAPPED_BLOCKS, "uncapped") for name, (model, policy) in variants(work).items()}
    with step(work, "start uncapped servers"):
        endpoints = await start_all(uncapped)
        results["uncapped_engines"] = {name: s.engine for name, s in uncapped.items()}
        results["gpu_uncapped_started"] = gpu_processes()

    non_kv: dict[str, int] = {}
    with step(work, "uncapped benchmark"):
        results["uncapped"] = {}
        for name, endpoint in endpoints.items():
            log(f"uncapped {name}")
            try:
                results["uncapped"][name] = await measure(endpoint, tokenizer, [1, 16, 64, 128], prompt_tokens=128, output_tokens=256)
            except Exception as exc:  # one variant's failure must not lose the others'
                results["uncapped"][name] = {"error": repr(exc)}
            save(work)
        memory = gpu_memory_by_group()
        for name, s in uncapped.items():
            used = memory.get(s.process.pid or -1)
            if used:
                non_kv[name] = used - UNCAPPED_BLOCKS * BLOCK_TOKENS * KV_BYTES_PER_TOKEN[variants(work)[name][1]]
        results["uncapped_gpu_memory_gib"] = {n: round(memory.get(s.process.pid or -1, 0) / GIB, 2) for n, s in uncapped.items()}
        results["non_kv_gib"] = {n: round(b / GIB, 2) for n, b in non_kv.items()}

    with step(work, "core latency (W4A16 + KV int8, uncapped)"):
        if "w4a16-kv8" in endpoints:
            results["core_latency_ms"] = await core_latency(work, endpoints["w4a16-kv8"])
    for s in uncapped.values():
        await s.stop()

    results["gpu_before_capped"] = gpu_processes()
    results["capped_kv"], results["capped"], results["capped_gpu_memory_gib"] = {}, {}, {}
    for name, (model, policy) in variants(work).items():
        with step(work, f"capped {name} (8 GiB)"):
            # Without a measurement (no per-process figure from nvidia-smi): weights plus a 2.5 GiB estimate.
            rest = non_kv.get(name) or int((weights_gib(model) + 2.5) * GIB)
            blocks = max(0, (CAP_BYTES - rest) // (BLOCK_TOKENS * KV_BYTES_PER_TOKEN[policy]))
            tokens = blocks * BLOCK_TOKENS
            results["capped_kv"][name] = {"non_kv_gib": round(rest / GIB, 2), "kv_blocks": blocks, "kv_tokens": tokens,
                                          "conversations_of_2048": tokens // 2048, "measured_non_kv": name in non_kv}  # fmt: skip
            if tokens < 2048 + 4 * BLOCK_TOKENS:
                results["capped_kv"][name]["fits"] = False  # not even one 1,536 + 512-token conversation: nothing to measure
                continue
            capped = server(work, name, model, policy, blocks, "capped")
            try:
                endpoint = await capped.start(lambda m: log(f"capped {name}: {m}"))
                results["capped"][name] = await measure(endpoint, tokenizer, [16, 64, 128], prompt_tokens=1536, output_tokens=512)
                used = gpu_memory_by_group().get(capped.process.pid or -1, 0)
                results["capped_gpu_memory_gib"][name] = round(used / GIB, 2)
            except Exception as exc:  # one variant's failure must not lose the others'
                results["capped"][name] = {"error": repr(exc)[:1500], "gpu": gpu_processes()}
            finally:
                await capped.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--internlm2", type=Path, help="InternLM2's remote code and tokenizer.model: build the model in its own layout")
    parser.add_argument("--skip-bench", action="store_true", help="stop after `teambot ask` (no throughput benchmarks)")
    args = parser.parse_args()
    work = args.work
    try:
        asyncio.run(run(work, args.internlm2, args.skip_bench))
    finally:
        results["total_seconds"] = round(time.monotonic() - started, 1)
        save(work)
        (work / "done").write_text("done\n")
        log("done")


if __name__ == "__main__":
    main()
