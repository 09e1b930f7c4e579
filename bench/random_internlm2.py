"""internlm2_5-1_8b-chat's shapes with random weights, and llama.cpp's speed on a GGUF of it: what
bench.gguf (on the project's 2 cores) and bench.gguf_cores (on a machine with more) share.

Light on imports (torch, safetensors, sentencepiece, llama_cpp, and teambot's converter, which
needs neither pydantic nor the rest of teambot), so that it also runs on the lent GPU machine's
CPUs with a few carried wheels.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.gpu.build_internlm2 import CHAT_TEMPLATE, CHAT_TOKENS, CONFIG

LAYERS_PER_SHARD = 4

CHILD = r"""
import json, os, resource, sys, time
import llama_cpp
path, threads, kv, prompt, decode = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
load_before = os.getloadavg()[0]
started = time.perf_counter()
kv = getattr(llama_cpp, "GGML_TYPE_" + kv.upper())  # f16, q8_0, q4_0: the KV cache element type
llm = llama_cpp.Llama(path, n_ctx=prompt + decode + 16, n_batch=512, n_threads=threads, n_threads_batch=threads,
                      type_k=kv, type_v=kv, flash_attn=True, verbose=False)
loaded = time.perf_counter()
ids = [3 + (i * 7919) % 997 for i in range(prompt)]
llm.eval(ids)  # computes the last position's logits: the first token is chosen from them
prompted = time.perf_counter()
for k in range(decode):
    llm.eval([3 + (k * 31) % 997])  # which token is fed does not change the work
done = time.perf_counter()
print(json.dumps({
    "load_s": round(loaded - started, 2), "first_token_s": round(prompted - loaded, 2),
    "prompt_tokens_per_s": round(prompt / (prompted - loaded), 1), "decode_tokens_per_s": round(decode / (done - prompted), 2),
    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    "load_avg_before": round(load_before, 2), "load_avg_after": round(os.getloadavg()[0], 2),
}))
"""


def make_model(folder: Path) -> Path:
    """internlm2_5-1_8b-chat's shapes with random bf16 weights, one shard per LAYERS_PER_SHARD layers."""
    import sentencepiece as spm
    import torch
    from safetensors.torch import save_file

    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "tokenizer.model").is_file():  # else brought along (the tests' trainer needs all of teambot)
        from tests.test_internlm2 import train_sentencepiece

        train_sentencepiece(folder)
    spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    generator = torch.Generator().manual_seed(0)
    hidden, inter, vocab, layers = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"], CONFIG["num_hidden_layers"]
    qkv_rows = (CONFIG["num_attention_heads"] + 2 * CONFIG["num_key_value_heads"]) * hidden // CONFIG["num_attention_heads"]

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * 0.02).to(torch.bfloat16)

    save_file({"model.tok_embeddings.weight": rand(vocab, hidden), "output.weight": rand(vocab, hidden),
               "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)}, str(folder / "model-top.safetensors"))  # fmt: skip
    for first in range(0, layers, LAYERS_PER_SHARD):
        shard = {}
        for n in range(first, min(first + LAYERS_PER_SHARD, layers)):
            layer = f"model.layers.{n}."
            shard |= {layer + "attention.wqkv.weight": rand(qkv_rows, hidden), layer + "attention.wo.weight": rand(hidden, hidden),
                      layer + "feed_forward.w1.weight": rand(inter, hidden), layer + "feed_forward.w3.weight": rand(inter, hidden),
                      layer + "feed_forward.w2.weight": rand(hidden, inter), layer + "attention_norm.weight": torch.ones(hidden, dtype=torch.bfloat16),
                      layer + "ffn_norm.weight": torch.ones(hidden, dtype=torch.bfloat16)}  # fmt: skip
        save_file(shard, str(folder / f"model-layers-{first:02d}.safetensors"))
        print(f"  weights: layers {first}-{min(first + LAYERS_PER_SHARD, layers) - 1}", flush=True)
    tokenizer_config = {
        "added_tokens_decoder": {str(i): {"content": t, "special": True} for i, t in CHAT_TOKENS.items()},
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True, "chat_template": CHAT_TEMPLATE,
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (folder / "config.json").write_text(json.dumps({k: v for k, v in CONFIG.items() if k != "auto_map"}))
    return folder


def measure(path: Path, threads: int, kv: str, prompt: int, decode: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(threads), kv, str(prompt), str(decode)],
        capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"measuring {path.name} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
