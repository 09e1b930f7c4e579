"""A random-weight model in the real InternLM2 layout, built through InternLM2's own remote code, on the GPU.

    python3 -m bench.gpu.build_internlm2 --remote-code DIR --out MODEL_DIR --report REPORT.json

DIR holds the third-party files, read at run time and never committed (bench/gpu/prepare.py
copies them from public InternLM repositories): configuration_internlm2.py and
modeling_internlm2.py (InternLM2.5), tokenization_internlm2.py, tokenization_internlm2_fast.py
and the real 92,544-piece tokenizer.model. The config is internlm2_5-1_8b-chat's public one;
the tokenizer_config pins the chat tokens on the ids the published model uses (92538-92543).

The report records what the remote code does on the transformers this runs under (build,
forward, save_pretrained, the remote tokenizer's ids) and checks teambot's conversion to the
Llama layout (inference/internlm2.py) against the remote code: logits of both on the same
tokens, in float32.
"""

from __future__ import annotations

import argparse
import json
import shutil
import traceback
from pathlib import Path
from typing import Any

REMOTE_FILES = (
    "configuration_internlm2.py",
    "modeling_internlm2.py",
    "tokenization_internlm2.py",
    "tokenization_internlm2_fast.py",
    "tokenizer.model",
)
CONFIG = {
    "architectures": ["InternLM2ForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
        "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
    },
    "model_type": "internlm2", "bias": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 32768,
    "num_attention_heads": 16, "num_hidden_layers": 24, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_scaling": {"type": "dynamic", "factor": 2.0}, "rope_theta": 1000000, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 92544, "attn_implementation": "eager",
}  # fmt: skip
CHAT_TOKENS = {
    92538: "<|plugin|>",
    92539: "<|interpreter|>",
    92540: "<|action_end|>",
    92541: "<|action_start|>",
    92542: "<|im_end|>",
    92543: "<|im_start|>",
}
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tokenizer_config() -> dict[str, Any]:  # fmt: skip
    pinned = {0: "<unk>", 1: "<s>", 2: "</s>", **CHAT_TOKENS}
    return {
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", "tokenization_internlm2_fast.InternLM2TokenizerFast"]},
        "tokenizer_class": "InternLM2Tokenizer",
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
            for i, t in sorted(pinned.items())
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>", "<|interpreter|>", "<|plugin|>"],
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "decode_with_prefix_space": False,
        "chat_template": CHAT_TEMPLATE,
    }


def write_folder(remote_code: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in REMOTE_FILES:
        shutil.copy2(remote_code / name, out / name)
    (out / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2, ensure_ascii=False))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, 92542], "pad_token_id": 2}))


def attempt(report: dict[str, Any], name: str, fn: Any) -> Any:
    try:
        value = fn()
        report[name] = value if isinstance(value, dict) else "ok"
        return value
    except Exception as exc:  # noqa: BLE001 - the point is to record whatever the remote code raises on this transformers
        report[name] = f"FAILED {type(exc).__name__}: {str(exc)[:300]}"
        print(traceback.format_exc()[-1500:], flush=True)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--remote-code", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--small", action="store_true", help="2 layers of width 256 on the CPU: a quick check of this script")
    args = parser.parse_args()
    device = "cpu" if args.small else "cuda"
    if args.small:
        CONFIG.update(
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
        )
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from inference import internlm2

    report: dict[str, Any] = {"transformers": transformers.__version__, "torch": torch.__version__}
    args.report.parent.mkdir(parents=True, exist_ok=True)
    write_folder(args.remote_code, args.out)
    config = AutoConfig.from_pretrained(str(args.out), trust_remote_code=True)
    torch.manual_seed(0)
    model = attempt(
        report,
        "remote_code_build",
        lambda: AutoModelForCausalLM.from_config(config, trust_remote_code=True, dtype=torch.float32).to(device).eval(),
    )
    if model is None:
        args.report.write_text(json.dumps(report, indent=2))
        raise SystemExit("the remote code did not build the model")
    report["parameters"] = sum(p.numel() for p in model.parameters())
    attempt(report, "remote_code_save_pretrained", lambda: model.save_pretrained(str(args.out / "save-attempt")))
    shutil.rmtree(args.out / "save-attempt", ignore_errors=True)
    state = {k: v.to(torch.bfloat16).contiguous().cpu() for k, v in model.state_dict().items() if "inv_freq" not in k}
    save_file(state, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    del state

    def remote_tokenizer() -> dict[str, Any]:
        tok = AutoTokenizer.from_pretrained(str(args.out), trust_remote_code=True)
        ids = tok("hello world", add_special_tokens=False)["input_ids"]
        return {"class": type(tok).__name__, "im_start": tok.convert_tokens_to_ids("<|im_start|>"), "im_end": tok.convert_tokens_to_ids("<|im_end|>"),
                "hello_world": [tok.convert_ids_to_tokens(i) for i in ids]}  # fmt: skip

    attempt(report, "remote_tokenizer", remote_tokenizer)

    converted = args.out.parent / "conversion-check"
    internlm2.convert(args.out, converted, progress=lambda m: print(m, flush=True))
    # The remote code's own weights were bf16-rounded on save: compare both models on the same bf16 values.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    llama = LlamaForCausalLM.from_pretrained(str(converted), dtype=torch.float32, attn_implementation="eager").to(device).eval()
    checks = []
    torch.manual_seed(1)
    for length in (64, 2048):  # (dynamic NTK scaling past max_position_embeddings: tests/test_internlm2.py, on a small model)
        tokens = torch.randint(3, 92000, (1, length), device=device)
        with torch.no_grad():
            a = model(tokens, use_cache=False).logits.float()
            b = llama(tokens, use_cache=False).logits.float()
        checks.append({"tokens": length, "max_abs_diff": (a - b).abs().max().item(), "max_abs_logit": a.abs().max().item(),
                       "top1_agree": (a.argmax(-1) == b.argmax(-1)).float().mean().item(), "nan": bool(torch.isnan(a).any())})  # fmt: skip
        print(checks[-1], flush=True)
        del a, b
        torch.cuda.empty_cache()
    report["conversion_vs_remote_code"] = checks
    shutil.rmtree(converted, ignore_errors=True)
    args.report.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
