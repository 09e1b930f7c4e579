"""InternLM2 -> Llama layout (inference/internlm2.py) and the model checks (inference/model_check.py), on the CPU.

The real InternLM2 remote code and tokenizer are third-party files and stay out of the
repository. These tests build what they need: a small InternLM2 checkpoint whose logits come
from a reference forward pass written here from the published architecture (fused ``wqkv``
grouped per KV head, RoPE with dynamic NTK scaling, RMSNorm, SwiGLU), a model folder whose
remote modeling file has the defects that break it on transformers 5 (an import that no longer
exists, ``_tied_weights_keys`` as a list), and a small sentencepiece BPE model with reserved
pieces that tokenizer_config.json pins the chat tokens onto, as InternLM2's does.
(The real model ran through the same code on a GPU: docs/benchmarks.md, "InternLM2 layout".)
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from config.errors import ConfigError
from inference import internlm2
from inference.model_check import check_tokenizer, known_trouble, needs_remote_code, out_of_vocab, version_tuple
from tests.conftest import EXAMPLES

CONFIG = {
    "architectures": ["InternLM2ForCausalLM"],
    "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config", "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
    "model_type": "internlm2", "bias": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "hidden_act": "silu",
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
    "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "rope_theta": 1_000_000, "rope_scaling": {"type": "dynamic", "factor": 2.0},
    "tie_word_embeddings": False, "torch_dtype": "float32", "vocab_size": 320,
}  # fmt: skip

# A remote modeling file with the defects InternLM2.5's has on transformers 5: importing it fails.
BROKEN_REMOTE_CODE = """
from transformers.modeling_attn_mask_utils import AttentionMaskConverter  # gone in transformers 5
from transformers.utils import is_flash_attn_greater_or_equal_2_10  # gone in transformers 5.4
class InternLM2ForCausalLM:
    _tied_weights_keys = ["output.weight"]  # transformers 5 wants a dict
"""


# --- a reference InternLM2 forward pass -------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def internlm2_logits(weights: dict[str, torch.Tensor], config: dict[str, Any], ids: torch.Tensor) -> torch.Tensor:
    """InternLM2's forward pass as published: one fused wqkv per layer whose rows are, per KV head,
    its query heads, then its key, then its value."""
    heads, kv_heads, hidden = config["num_attention_heads"], config["num_key_value_heads"], config["hidden_size"]
    head_dim, groups, eps = hidden // heads, heads // kv_heads, config["rms_norm_eps"]
    length = ids.shape[1]
    base = float(config["rope_theta"])
    factor, limit = config["rope_scaling"]["factor"], config["max_position_embeddings"]
    if length > limit:  # dynamic NTK scaling
        base *= ((factor * length / limit) - (factor - 1)) ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    mask = torch.full((length, length), float("-inf")).triu(1)
    x = weights["model.tok_embeddings.weight"][ids]
    for n in range(config["num_hidden_layers"]):
        w = {k.removeprefix(f"model.layers.{n}."): v for k, v in weights.items() if k.startswith(f"model.layers.{n}.")}
        h = rms_norm(x, w["attention_norm.weight"], eps)
        qkv = (h @ w["attention.wqkv.weight"].T).view(*h.shape[:2], kv_heads, groups + 2, head_dim)
        q = qkv[..., :groups, :].reshape(*h.shape[:2], heads, head_dim).transpose(1, 2)
        k = qkv[..., groups, :].transpose(1, 2).repeat_interleave(groups, dim=1)
        v = qkv[..., groups + 1, :].transpose(1, 2).repeat_interleave(groups, dim=1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim) + mask, dim=-1) @ v
        x = x + attention.transpose(1, 2).reshape(*h.shape[:2], hidden) @ w["attention.wo.weight"].T
        h = rms_norm(x, w["ffn_norm.weight"], eps)
        x = (
            x
            + (torch.nn.functional.silu(h @ w["feed_forward.w1.weight"].T) * (h @ w["feed_forward.w3.weight"].T))
            @ w["feed_forward.w2.weight"].T
        )
    return rms_norm(x, weights["model.norm.weight"], eps) @ weights["output.weight"].T


def random_weights(config: dict[str, Any]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    qkv_rows = (config["num_attention_heads"] + 2 * config["num_key_value_heads"]) * hidden // config["num_attention_heads"]

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.2

    weights = {
        "model.tok_embeddings.weight": rand(vocab, hidden),
        "model.norm.weight": 1 + rand(hidden),
        "output.weight": rand(vocab, hidden),
    }
    for n in range(config["num_hidden_layers"]):
        layer = f"model.layers.{n}."
        weights |= {layer + "attention.wqkv.weight": rand(qkv_rows, hidden), layer + "attention.wo.weight": rand(hidden, hidden),
                    layer + "feed_forward.w1.weight": rand(inter, hidden), layer + "feed_forward.w3.weight": rand(inter, hidden),
                    layer + "feed_forward.w2.weight": rand(hidden, inter), layer + "attention_norm.weight": 1 + rand(hidden),
                    layer + "ffn_norm.weight": 1 + rand(hidden)}  # fmt: skip
    return weights


# --- a small sentencepiece tokenizer like InternLM2's ----------------------------------------

RESERVED = ["[UNUSED_TOKEN_1]", "[UNUSED_TOKEN_2]"]
CHAT_TEXTS = [
    "Who gets paged if the primary on-call does not acknowledge?",
    "出差住宿每晚可以报销多少钱？",
    "tabs\tand  two spaces\n",
    "emoji 🤖 ünïcödé",
]


def train_sentencepiece(folder: Path, dummy_prefix: bool = False, normalization: str = "identity") -> Path:
    import sentencepiece as spm

    texts = [p.read_text(encoding="utf-8") for p in sorted(EXAMPLES.glob("*.md"))]
    lines = [line for text in texts for line in text.splitlines() if line.strip()]
    prefix = folder / "tokenizer"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(prefix), model_type="bpe", vocab_size=1000, byte_fallback=True,
        control_symbols=RESERVED, add_dummy_prefix=dummy_prefix, character_coverage=0.98, minloglevel=2,
        remove_extra_whitespaces=False, split_digits=True, normalization_rule_name=normalization,
    )  # fmt: skip
    (folder / "tokenizer.vocab").unlink()
    return prefix.with_suffix(".model")


def internlm2_folder(
    folder: Path, dummy_prefix: bool = False, normalization: str = "identity", **shape: Any
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A complete InternLM2-style model folder: config (CONFIG, with ``shape``'s fields in place of its own),
    broken remote code, weights, sentencepiece tokenizer."""
    import sentencepiece as spm
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    model_file = train_sentencepiece(folder, dummy_prefix, normalization)
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    pinned = {sp.piece_to_id(RESERVED[0]): "<|im_end|>", sp.piece_to_id(RESERVED[1]): "<|im_start|>"}
    config = {**CONFIG, **shape, "vocab_size": sp.get_piece_size()}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_internlm2.py").write_text(BROKEN_REMOTE_CODE)
    tokenizer_config = {
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "added_tokens_decoder": {str(i): {"content": t, "special": True} for i, t in pinned.items()},
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "chat_template": "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    weights = random_weights(config)
    save_file(weights, str(folder / "model.safetensors"))
    return folder, weights


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


# --- tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    base = tmp_path_factory.mktemp("internlm2")
    source, weights = internlm2_folder(base / "internlm2")
    before = folder_digest(source)
    messages: list[str] = []
    out = internlm2.convert(source, base / "llama", progress=messages.append)
    assert folder_digest(source) == before  # the user's folder is never changed
    assert any("lossless" in m for m in messages) and any("converted weights 1/1" in m for m in messages)
    return source, out, weights


@pytest.mark.parametrize("length", [7, 32, 80])  # 80 > max_position_embeddings 32: dynamic NTK scaling on both sides
def test_the_llama_copy_computes_what_internlm2_computes(converted: tuple[Path, Path, dict[str, torch.Tensor]], length: int) -> None:
    from transformers import LlamaForCausalLM

    source, out, weights = converted
    config = json.loads((source / "config.json").read_text())
    llama = LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32, attn_implementation="eager").eval()
    ids = torch.randint(3, config["vocab_size"], (2, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        expected = internlm2_logits(weights, config, ids)
        got = llama(ids, use_cache=False).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()


def test_a_wrong_split_would_be_seen(converted: tuple[Path, Path, dict[str, torch.Tensor]]) -> None:
    """The comparison above can fail: taking wqkv as [all q | all k | all v] (the naive split) changes the logits."""
    source, _, weights = converted
    config = json.loads((source / "config.json").read_text())
    heads, kv_heads, hidden = config["num_attention_heads"], config["num_key_value_heads"], config["hidden_size"]
    head_dim = hidden // heads
    q, k, v = internlm2.split_wqkv(weights["model.layers.0.attention.wqkv.weight"], heads, kv_heads, head_dim)
    naive = weights["model.layers.0.attention.wqkv.weight"].split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim])
    assert not torch.equal(q, naive[0]) and not torch.equal(k, naive[1])
    assert torch.equal(
        torch.cat([q, k, v]).sort(0).values, weights["model.layers.0.attention.wqkv.weight"].sort(0).values
    )  # same rows, reordered


def test_the_copy_needs_no_remote_code_and_loads_without_it(converted: tuple[Path, Path, dict[str, torch.Tensor]]) -> None:
    from transformers import AutoConfig, AutoTokenizer

    source, out, _ = converted
    assert needs_remote_code(source) and not needs_remote_code(out)
    assert not list(out.glob("*.py"))  # the broken modeling file is not carried over, so nothing imports it
    assert AutoConfig.from_pretrained(str(out)).model_type == "llama"
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    check_tokenizer(out, trust_remote_code=False)  # every special token inside the vocabulary
    marker = json.loads((out / internlm2.MARKER).read_text())
    assert marker["architecture"] == "InternLM2ForCausalLM" and marker["layout"] == "llama"
    generation = json.loads((out / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]  # a chat turn ends at <|im_end|>


@pytest.mark.parametrize("dummy_prefix", [False, True])
def test_the_rebuilt_tokenizer_encodes_like_sentencepiece_with_chat_tokens_on_their_pinned_ids(tmp_path: Path, dummy_prefix: bool) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    source, _ = internlm2_folder(tmp_path / "m", dummy_prefix)
    out = tmp_path / "out"
    out.mkdir()
    chat_ids = internlm2.write_tokenizer(source, out, CHAT_TEXTS)
    sp = spm.SentencePieceProcessor(model_file=str(source / "tokenizer.model"))
    assert chat_ids == {"<|im_start|>": sp.piece_to_id(RESERVED[1]), "<|im_end|>": sp.piece_to_id(RESERVED[0])}
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert len(tokenizer) == sp.get_piece_size()  # nothing appended past the vocabulary
    for text in [*CHAT_TEXTS, *(p.read_text(encoding="utf-8") for p in EXAMPLES.glob("*.md"))]:
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
        assert tokenizer.decode(sp.encode(text)) == sp.decode(sp.encode(text))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt)["input_ids"]  # as lmdeploy encodes a rendered prompt: with the tokenizer's special tokens
    assert ids[0] == sp.bos_id() and ids[1] == chat_ids["<|im_start|>"] and chat_ids["<|im_end|>"] in ids


@pytest.mark.parametrize("template_bos", ["{{ bos_token }}", "{{- bos_token -}}", ""])
def test_a_rendered_chat_prompt_encodes_with_exactly_one_bos(tmp_path: Path, template_bos: str) -> None:
    """lmdeploy renders the chat template to text, then encodes it adding the tokenizer's BOS; the copy's
    template must not write <s> too (lmdeploy warned "Detected duplicate bos token 1" on every question)."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    source, _ = internlm2_folder(tmp_path / "m")
    config_path = source / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["chat_template"] = tokenizer_config["chat_template"].replace("{{ bos_token }}", template_bos)
    config_path.write_text(json.dumps(tokenizer_config))
    out = tmp_path / "out"
    out.mkdir()
    internlm2.write_tokenizer(source, out)
    bos = spm.SentencePieceProcessor(model_file=str(source / "tokenizer.model")).bos_id()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    messages = [{"role": "system", "content": "Answer from the documents."}, {"role": "user", "content": "Who gets paged?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt)["input_ids"]
    assert ids.count(bos) == 1 and ids[0] == bos, ids[:4]
    assert tokenizer("plain text")["input_ids"][0] == bos  # a completion without the template starts with <s> too


def test_a_tokenizer_the_rebuild_cannot_match_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    """InternLM2's sentencepiece model does no text normalization; one that does (NFKC: "？" -> "?") is caught by the check."""
    source, _ = internlm2_folder(tmp_path / "m", normalization="nmt_nfkc")
    with pytest.raises(ConfigError) as caught:
        internlm2.convert(source, tmp_path / "out", progress=lambda m: None)
    assert "does not encode like sentencepiece" in str(caught.value) and "from token" in str(caught.value)
    assert not (tmp_path / "out" / "tokenizer.json").exists() and not (tmp_path / "out" / "config.json").exists()


def test_a_tokenizer_that_puts_chat_tokens_past_the_vocabulary_is_refused_before_serving(tmp_path: Path) -> None:
    """What InternLM2's remote tokenizer does on transformers 5, reproduced without it: special
    tokens missing from the vocabulary are appended at ids >= vocab_size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{chr(c): c - 94 for c in range(97, 123)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "model"
    PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            additional_special_tokens=["<|im_start|>", "<|im_end|>"]).save_pretrained(str(folder))  # fmt: skip
    (folder / "config.json").write_text(json.dumps({"architectures": ["InternLM2ForCausalLM"], "vocab_size": len(vocab)}))
    with pytest.raises(ConfigError) as caught:
        check_tokenizer(folder, trust_remote_code=False)
    message = str(caught.value)
    assert f"<|im_start|> = {len(vocab) + 0}" in message or f"<|im_start|> = {len(vocab) + 1}" in message
    assert f"{len(vocab)}-token vocabulary" in message and "teambot quantize --model" in message


def test_out_of_vocab_lists_only_what_is_past_the_embedding() -> None:
    class Tokenizer:
        all_special_tokens = ("<s>", "<|im_start|>")

        def get_added_vocab(self) -> dict[str, int]:
            return {"<|im_start|>": 92549, "<|plugin|>": 92538}

        def convert_tokens_to_ids(self, token: str) -> int:
            return {"<s>": 1, "<|im_start|>": 92549, "<|plugin|>": 92538}[token]

    assert out_of_vocab(Tokenizer(), 92544) == {"<|im_start|>": 92549}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5.24.0", (5, 24, 0)), ("4.57.6", (4, 57, 6)), ("5.0.0rc1", (5, 0, 0)), ("0.2.2", (0, 2, 2)), ("5.1.dev0", (5, 1))],
)
def test_version_numbers(text: str, expected: tuple[int, ...]) -> None:
    assert version_tuple(text) == expected


def test_known_trouble_is_said_for_the_versions_that_have_it() -> None:
    assert known_trouble("4.57.6", "0.2.3") == []
    (line,) = known_trouble("5.24.0", "0.2.3")
    assert "transformers 5.24.0" in line and "Llama layout" in line
    lines = known_trouble("5.0.0rc1", "0.2.2")
    assert len(lines) == 2 and "sentencepiece 0.2.2" in lines[1] and "pip install -U sentencepiece" in lines[1]
    assert known_trouble(None, None) == []


def test_an_unreadable_tokenizer_model_names_the_file_the_version_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sentencepiece as spm

    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ConfigError, match="tokenizer.model cannot be read by sentencepiece"):
        internlm2.load_sentencepiece(bad)

    # sentencepiece 0.2.2's own words for InternLM2's piece 354 (seen on the GPU machine's image; bench/results/)
    def rejects(*args: object, **kwargs: object) -> None:
        raise RuntimeError("INTERNAL: piece must not include null character.")

    monkeypatch.setattr(spm, "SentencePieceProcessor", rejects)
    with pytest.raises(ConfigError) as caught:
        internlm2.load_sentencepiece(bad)
    assert "NUL byte" in str(caught.value) and "pip install -U sentencepiece" in str(caught.value)


def test_checkpoints_that_do_not_convert_say_why(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**CONFIG, "bias": True}))
    with pytest.raises(ConfigError, match="biases"):
        internlm2.convert(folder, tmp_path / "out", progress=lambda m: None)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ConfigError, match="not an InternLM2 model"):
        internlm2.convert(folder, tmp_path / "out", progress=lambda m: None)
    with pytest.raises(ConfigError, match="unexpected tensor"):
        list(internlm2.llama_tensors("model.layers.0.attention.wqkv.bias", torch.zeros(3), CONFIG))
    with pytest.raises(ConfigError, match="rows"):
        internlm2.split_wqkv(torch.zeros(10, 64), 8, 2, 8)


def test_teambot_quantize_converts_an_internlm2_model_and_quantizes_the_copy_without_remote_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lmdeploy lite needs a CUDA GPU, so its auto_awq is replaced by a recorder here; the rest is
    teambot's own path (the GPU run: bench/results/gpu-h100-internlm2*.json)."""
    from inference import quantize as quantize_module
    from tests.conftest import make_settings

    source, _ = internlm2_folder(tmp_path / "internlm2")
    before = folder_digest(source)
    calls: list[dict[str, Any]] = []

    def auto_awq(
        model: Path, out: Path, plan: Any, calib_samples: int, group_size: int, batch_size: int, trust_remote_code: bool, progress: Any
    ) -> None:
        calls.append({"model": model, "trust_remote_code": trust_remote_code, "files": sorted(p.name for p in model.iterdir())})
        (out / "model.safetensors").write_bytes(b"0" * 10)

    monkeypatch.setattr(quantize_module, "check_can_quantize", lambda: None)
    monkeypatch.setattr(quantize_module, "_run_auto_awq", auto_awq)
    settings = make_settings(tmp_path / "data", tmp_path / "knowledge")
    said: list[str] = []
    out = tmp_path / "models" / "internlm2-w4a16"
    quantize_module.quantize(settings, str(source), out, group_size=32, calib_dataset="none", progress=said.append)
    (call,) = calls
    assert call["model"] != source and call["trust_remote_code"] is False  # the Llama-layout copy: nothing to trust
    assert "tokenizer.json" in call["files"] and not any(name.endswith(".py") for name in call["files"])
    assert json.loads((out / internlm2.MARKER).read_text())["quantized"].startswith("AWQ W4A16")
    assert not call["model"].exists()  # the temporary copy is gone
    assert folder_digest(source) == before  # and the user's model untouched
    assert any("Llama layout" in line for line in said)


def test_a_full_disk_during_the_conversion_names_the_file_and_what_to_do(tmp_path: Path) -> None:
    """RLIMIT_FSIZE stands in for a full disk (in a child process, so the limit stays there)."""
    import subprocess
    import sys

    source, _ = internlm2_folder(tmp_path / "m")
    script = (
        "import resource, signal, sys; from pathlib import Path; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); "
        "from inference import internlm2; from config.errors import ConfigError\n"
        "try:\n    internlm2.convert(Path(sys.argv[1]), Path(sys.argv[2]), progress=lambda m: None)\n"
        "except ConfigError as e:\n    print(e); sys.exit(3)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script, str(source), str(tmp_path / "out")],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert "cannot write" in done.stdout and "free space" in done.stdout


def _as_list(config: dict[str, Any]) -> Any:
    return [config]


@pytest.mark.parametrize(
    ("change", "field", "value"),
    [
        (_as_list, "a JSON object", "list"),
        (lambda c: {**c, "num_attention_heads": 0}, "num_attention_heads", "0"),
        (lambda c: {k: v for k, v in c.items() if k != "hidden_size"}, "hidden_size", "missing"),
        (lambda c: {**c, "vocab_size": "320"}, "vocab_size", "'320'"),
        (lambda c: {**c, "num_key_value_heads": 3}, "num_key_value_heads", "3"),
        (lambda c: {**c, "hidden_size": 60}, "hidden_size", "60"),  # not a multiple of the 8 heads
        (lambda c: {**c, "rope_scaling": "dynamic"}, "rope_scaling", "'dynamic'"),
        (lambda c: {**c, "rope_scaling": {"type": "dynamic"}}, "rope_scaling.factor", "missing"),
        (lambda c: {**c, "rope_theta": "1e6"}, "rope_theta", "'1e6'"),
    ],
)  # fmt: skip
def test_a_malformed_config_names_the_file_the_field_and_the_value(tmp_path: Path, change: Any, field: str, value: str) -> None:
    """What a hand-edited or truncated config.json holds: a clear error, never a KeyError or ZeroDivisionError."""
    from inference import quantize as quantize_module
    from tests.conftest import make_settings

    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "config.json"
    path.write_text(json.dumps(change(dict(CONFIG))))
    with pytest.raises(ConfigError) as caught:
        internlm2.convert(folder, tmp_path / "out", progress=lambda m: None)
    message = str(caught.value)
    assert str(path) in message and field in message and value in message, message
    assert not (tmp_path / "out").exists()  # refused before anything was written
    with pytest.raises(ConfigError) as caught:  # and `teambot quantize` refuses it before any work
        quantize_module.quantize(make_settings(tmp_path / "data", tmp_path / "k"), str(folder), tmp_path / "q", group_size=32, progress=lambda m: None)
    assert str(path) in str(caught.value) and field in str(caught.value)
