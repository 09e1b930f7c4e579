"""internlm2_5-1_8b-chat as a GGUF on the CPU (`teambot quantize --format gguf`), beside the shipped SmolLM2.

    .venv/bin/python -m bench.gguf [--work /tmp/teambot-bench-gguf] [--prompt 1000] [--decode 32]

The real weights are out of reach here, so the model is made here: internlm2_5-1_8b-chat's public
config (bench/gpu/build_internlm2.py: hidden 2048, 24 layers, 16 heads, 8 KV heads, intermediate
8192, vocabulary 92,544) with random bf16 weights, written shard by shard, and a small
sentencepiece tokenizer (the embedding keeps all 92,544 rows, so every matrix has the real
shape). Speed does not depend on the weights' values. It is converted by `export_gguf` to f16,
Q8_0 and Q4_K_M (conversion time and sizes recorded).

Each measurement runs in a child process of its own (llama-cpp-python's ``Llama``, flash
attention on as `teambot serve` runs it): load time; a 1,000-token prompt (its time is the
first-token time; prompt tokens/s from it); 32 single-token steps (decode tokens/s); peak
resident memory (ru_maxrss). Every model type with a KV cache of q8_0 and f16 on 1 thread,
SmolLM2 before and after; then Q4_K_M and SmolLM2 on 2 threads, for the scaling. The machine is shared with other work:
the load average before and after each measurement is recorded beside it. Model files go
under --work, never into the repository. Writes bench/results/gguf.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.common import save
from bench.random_internlm2 import make_model, measure
from inference.gguf_export import export_gguf
from inference.llamacpp import shipped_model_path


def thread_scaling(q4: Path, rounds: int, decode: int, prompt: int = 256) -> None:
    """1 thread against 2, alternating, ``rounds`` times, Q4_K_M and SmolLM2 (KV q8_0): on a machine shared
    with other work, the best of the rounds is the nearest to what the cores can do."""
    runs = []
    for k in range(rounds):
        for threads in (1, 2) if k % 2 == 0 else (2, 1):
            for model, path in (("internlm2_5-1_8b-chat", q4), ("smollm2-135m", shipped_model_path())):
                row = {"model": model, "threads": threads, "round": k, **measure(path, threads, "q8_0", prompt, decode)}
                runs.append(row)
                print(json.dumps(row), flush=True)
    best = {}
    for model in ("internlm2_5-1_8b-chat", "smollm2-135m"):
        for threads in (1, 2):
            mine = [r for r in runs if r["model"] == model and r["threads"] == threads]
            best[f"{model} {threads} thread(s)"] = {
                "prompt_tokens_per_s": max(r["prompt_tokens_per_s"] for r in mine),
                "decode_tokens_per_s": max(r["decode_tokens_per_s"] for r in mine),
            }
    path = save("gguf-threads", {"command": f"python -m bench.gguf --threads-rounds {rounds}", "prompt_tokens": prompt,
                                 "decode_tokens": decode, "best_of_rounds": best, "runs": runs})  # fmt: skip
    print(json.dumps(best, indent=2))
    print(f"results: {path}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/teambot-bench-gguf"))
    parser.add_argument("--prompt", type=int, default=1000)
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument(
        "--threads-rounds", type=int, default=0, help="instead: N rounds of 1 and 2 threads alternating (gguf-threads.json)"
    )
    args = parser.parse_args()
    source = make_model(args.work / "internlm2_5-1_8b-chat-random")
    files: dict[str, Path] = {}
    conversions: dict[str, Any] = {}
    for gguf_type in ("f16", "q8_0", "q4_k_m"):
        out = args.work / f"internlm2_5-1_8b-chat-random-{gguf_type}.gguf"
        if not out.is_file():
            lines: list[str] = []
            result = export_gguf(source, out, gguf_type=gguf_type, progress=lines.append)
            conversions[gguf_type] = {"seconds": round(result.seconds, 1), "load_avg_after": round(os.getloadavg()[0], 2)}
            print(f"{gguf_type}: {result.bytes_after / 2**30:.2f} GiB in {result.seconds:.0f} s", flush=True)
        files[gguf_type] = out
    sizes = {t: round(p.stat().st_size / 2**30, 3) for t, p in files.items()}
    if args.threads_rounds:
        thread_scaling(files["q4_k_m"], args.threads_rounds, args.decode)
        return
    runs = []
    # One thread first: on this shared machine another process often holds one core, and llama.cpp's
    # threads wait for each other at every step, so 2 threads suffer far more from it than 1.
    # SmolLM2 first and last, to bracket the load others put on the machine meanwhile.
    plan = [("smollm2-135m", "q4_1", kv, 1, args.prompt) for kv in ("q8_0", "f16")]
    plan += [("internlm2_5-1_8b-chat", t, kv, 1, args.prompt) for t in ("q4_k_m", "q8_0", "f16") for kv in ("q8_0", "f16")]
    plan += [(model, t, "q8_0", 2, args.prompt) for model, t in (("internlm2_5-1_8b-chat", "q4_k_m"), ("smollm2-135m", "q4_1"))]
    for model, gguf_type, kv, threads, prompt in plan:
        path = files[gguf_type] if model.startswith("internlm2") else shipped_model_path()
        row = {
            "model": model,
            "type": gguf_type,
            "kv_cache": kv,
            "threads": threads,
            "prompt_tokens": prompt,
            **measure(path, threads, kv, prompt, args.decode),
        }
        runs.append(row)
        print(json.dumps(row), flush=True)
    path = save("gguf", {
        "command": "python -m bench.gguf", "prompt_tokens": args.prompt, "decode_tokens": args.decode,
        "gguf_gib": {**sizes, "smollm2-135m q4_1": round(shipped_model_path().stat().st_size / 2**30, 3)},
        "conversion": conversions, "runs": runs,
        "note": "random weights in internlm2_5-1_8b-chat's shapes; 2 shared cores (load average recorded per run)",
    })  # fmt: skip
    print(f"results: {path}")


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"took {time.monotonic() - started:.0f} s")
