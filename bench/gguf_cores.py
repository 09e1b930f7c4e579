"""How llama.cpp's speed on internlm2_5-1_8b-chat (Q4_K_M, KV q8_0) grows with cores: the same
model and measurement as bench.gguf, at each thread count, on a machine with that many free cores.

    python -m bench.gguf_cores [--work /tmp/teambot-bench-gguf] [--threads 1,2,4,8,16] [--prompt 1000] [--decode 32]

The project's own machine has 2 shared cores, so this runs on the lent GPU machine's 16 CPU
cores (another CPU: its 1-thread row is the baseline of its own rows, not of the 2-core ones).
It needs torch, safetensors, sentencepiece, numpy, gguf and llama_cpp, not the rest of teambot;
the tokenizer.model may be brought along in the --work model folder (bench.random_internlm2).
Writes bench/results/gguf-cores.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from bench.random_internlm2 import make_model, measure
from inference.gguf_export import export_gguf

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/teambot-bench-gguf"))
    parser.add_argument("--threads", default="1,2,4,8,16")
    parser.add_argument("--prompt", type=int, default=1000)
    parser.add_argument("--decode", type=int, default=32)
    args = parser.parse_args()
    started = time.monotonic()
    source = make_model(args.work / "internlm2_5-1_8b-chat-random")
    q4 = args.work / "internlm2_5-1_8b-chat-random-q4_k_m.gguf"
    if not q4.is_file():
        result = export_gguf(source, q4, gguf_type="q4_k_m", progress=lambda line: None)
        print(f"q4_k_m: {result.bytes_after / 2**30:.2f} GiB in {result.seconds:.0f} s", flush=True)
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), ""
    )
    runs = []
    for threads in (int(t) for t in args.threads.split(",")):
        row = {"threads": threads, **measure(q4, threads, "q8_0", args.prompt, args.decode)}
        runs.append(row)
        print(json.dumps(row), flush=True)
    results = {
        "benchmark": "gguf-cores", "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "platform": platform.platform()},
        "command": f"python -m bench.gguf_cores --threads {args.threads}", "model": "internlm2_5-1_8b-chat shapes, random weights, Q4_K_M",
        "kv_cache": "q8_0", "prompt_tokens": args.prompt, "decode_tokens": args.decode, "runs": runs,
        "seconds": round(time.monotonic() - started),
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gguf-cores.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
