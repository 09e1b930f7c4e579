"""InternLM2 models (internlm2_5-1_8b-chat, the course's model) rewritten in the Llama layout.

InternLM2 ships its architecture and tokenizer as remote code in the model folder, written for
transformers 4.x. On the transformers that `pip install -e '.[gpu]'` resolves today (5.x):
- the modeling file no longer imports (``transformers.modeling_attn_mask_utils`` and
  ``is_flash_attn_greater_or_equal_2_10`` are gone, ``_tied_weights_keys`` must be a dict,
  models no longer inherit ``generate``), so ``lmdeploy lite auto_awq`` cannot load the model;
- the fast tokenizer's converter calls a transformers API whose signature changed, and gets
  wrong merges ("hello" -> "h" "ello"); and the chat tokens ``<|im_start|>``/``<|im_end|>``,
  which the model's tokenizer_config maps onto reserved pieces 92543/92542, are appended as
  new ids 92549/92548 instead, past the 92,544-row embedding (lmdeploy then crashes on the
  first chat with a CUDA index error).

InternLM2 is Llama with the query, key and value projections fused into one ``wqkv`` matrix
and other parameter names, so the weights convert losslessly into the Llama layout, which
transformers, ``lmdeploy lite`` and both lmdeploy engines support natively, without remote
code. `teambot quantize` converts an InternLM2 model into a copy this way (the user's folder is
never changed) and quantizes the copy. The copy's tokenizer is a ``tokenizer.json`` built here
from the model's own sentencepiece file, with the chat tokens on the ids the model was trained
with, and checked token for token against sentencepiece before it is used.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from config.errors import ConfigError
from inference.model_check import read_config, read_json

log = logging.getLogger(__name__)

ARCHITECTURE = "InternLM2ForCausalLM"
MARKER = "teambot-model.json"  # written into a converted copy: where it came from, and how
# Texts the rebuilt tokenizer must encode exactly as sentencepiece does (more come from the caller).
CHECK_TEXTS = (
    "Who gets paged if the primary on-call does not acknowledge?",
    "出差住宿每晚可以报销多少钱？", "  two  spaces\nnew line\ttab", "def f(x):\n    return x**2  # ünïcödé 🤖",
)  # fmt: skip

Progress = Callable[[str], None]

# A chat template that opens with the BOS token. lmdeploy renders the template to text and encodes that
# adding the tokenizer's BOS (its HF-template and built-in InternLM2 paths alike), so where the rebuilt
# tokenizer adds BOS (InternLM2's add_bos_token) the copy's template must not write it too: lmdeploy
# warned "Detected duplicate bos token 1 in prompt" on every question.
TEMPLATE_BOS = re.compile(r"^\s*\{\{-?\s*bos_token\s*-?\}\}")

# InternLM2 parameter names -> Llama's (the per-layer part after "model.layers.N.").
LAYER_NAMES = {
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
TOP_NAMES = {
    "model.tok_embeddings.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


class ConversionError(ConfigError):
    """An InternLM2 model folder that cannot be converted (says which file and what to do)."""


def is_internlm2(config: dict[str, Any]) -> bool:
    return ARCHITECTURE in (config.get("architectures") or []) or config.get("model_type") == "internlm2"


# --- config ---------------------------------------------------------------------------------


CONFIG_FIX = "use the config.json the model was published with"
_MISSING = object()


def _bad(path: Path, field: str, value: object, rule: str) -> ConversionError:
    shown = "missing" if value is _MISSING else repr(value)
    return ConversionError(f"{path}: {field} is {shown}; {rule}", CONFIG_FIX)


def _whole(config: dict[str, Any], key: str, path: Path, default: object = _MISSING) -> int:
    """config[key] as a positive whole number, or a ConversionError naming the file, the field and the value."""
    value = config.get(key, default)
    if value is _MISSING or isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(path, key, value, "it must be a whole number of at least 1")
    return value


def _number(config: dict[str, Any], key: str, path: Path, default: object = _MISSING, prefix: str = "") -> float:
    """config[key] as a number above 0, or a ConversionError naming the file, the field (``prefix`` + key) and the value."""
    value = config.get(key, default)
    if value is _MISSING or isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _bad(path, prefix + key, value, "it must be a number above 0")
    return float(value)


def llama_config(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """The Llama config.json for an InternLM2 config.json (``path``: same shapes, RoPE and norms); a
    ConversionError naming the field and its value for one that is missing or malformed."""
    if config.get("bias"):
        raise ConversionError(
            f"this InternLM2 model has biases in its projections ({path}: bias = true)",
            "only InternLM2 models without biases (all published chat models) convert",
        )
    hidden, heads = _whole(config, "hidden_size", path), _whole(config, "num_attention_heads", path)
    kv_heads = heads if config.get("num_key_value_heads") is None else _whole(config, "num_key_value_heads", path)
    if hidden % heads:
        raise _bad(path, "hidden_size", hidden, f"it must be a multiple of num_attention_heads = {heads}")
    if heads % kv_heads:
        raise _bad(path, "num_key_value_heads", kv_heads, f"it must divide num_attention_heads = {heads}")
    out = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": _whole(config, "intermediate_size", path),
        "num_hidden_layers": _whole(config, "num_hidden_layers", path),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "hidden_act": config.get("hidden_act", "silu"),
        "max_position_embeddings": _whole(config, "max_position_embeddings", path, 2048),
        "rms_norm_eps": _number(config, "rms_norm_eps", path, 1e-6),
        "rope_theta": _number(config, "rope_theta", path, 10000),
        "vocab_size": _whole(config, "vocab_size", path),
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": config.get("bos_token_id", 1),
        "eos_token_id": config.get("eos_token_id", 2),
        "pad_token_id": config.get("pad_token_id", 2),
        "torch_dtype": config.get("torch_dtype", "bfloat16"),
        "use_cache": True,
    }
    scaling = config.get("rope_scaling")
    if scaling:
        if not isinstance(scaling, dict):
            raise _bad(path, "rope_scaling", scaling, 'it must be an object like {"type": "dynamic", "factor": 2.0}, or null')
        kind = scaling.get("type") or scaling.get("rope_type")
        if kind not in ("dynamic", "linear"):
            raise _bad(path, "rope_scaling.type", kind if kind is not None else _MISSING, "InternLM2 uses dynamic or linear RoPE scaling")
        out["rope_scaling"] = {"type": kind, "rope_type": kind, "factor": _number(scaling, "factor", path, prefix="rope_scaling.")}
    return out


# --- weights --------------------------------------------------------------------------------


def split_wqkv(wqkv: Any, heads: int, kv_heads: int, head_dim: int) -> tuple[Any, Any, Any]:
    """InternLM2's fused projection -> Llama's q, k, v. Its rows are grouped per KV head:
    [the query heads that share it, then its key, then its value], each head_dim rows."""
    groups = heads // kv_heads
    hidden = wqkv.shape[-1]
    if wqkv.shape[0] != kv_heads * (groups + 2) * head_dim:
        raise ConversionError(f"wqkv has {wqkv.shape[0]} rows; {kv_heads} KV heads x ({groups} + 2) x {head_dim} were expected", "check num_attention_heads and num_key_value_heads in config.json")  # fmt: skip
    blocks = wqkv.reshape(kv_heads, groups + 2, head_dim, hidden)
    q = blocks[:, :groups].reshape(heads * head_dim, hidden)
    return (
        q.contiguous(),
        blocks[:, groups].reshape(kv_heads * head_dim, hidden).contiguous(),
        blocks[:, groups + 1].reshape(kv_heads * head_dim, hidden).contiguous(),
    )


def llama_tensors(name: str, tensor: Any, config: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """The Llama tensors for one InternLM2 tensor (a wqkv gives three)."""
    if name in TOP_NAMES:
        yield TOP_NAMES[name], tensor
        return
    prefix, _, rest = name.partition(".layers.")
    number, _, part = rest.partition(".")
    if prefix != "model" or not number.isdigit():
        raise ConversionError(f"unexpected tensor {name!r} in an InternLM2 checkpoint", "only InternLM2ForCausalLM checkpoints convert")
    layer = f"model.layers.{number}."
    if part == "attention.wqkv.weight":
        heads = config["num_attention_heads"]
        q, k, v = split_wqkv(tensor, heads, config.get("num_key_value_heads") or heads, config["hidden_size"] // heads)
        yield layer + "self_attn.q_proj.weight", q
        yield layer + "self_attn.k_proj.weight", k
        yield layer + "self_attn.v_proj.weight", v
    elif part in LAYER_NAMES:
        yield layer + LAYER_NAMES[part], tensor
    elif part.endswith("rotary_emb.inv_freq"):
        return  # recomputed from rope_theta
    else:
        raise ConversionError(
            f"unexpected tensor {name!r} in an InternLM2 checkpoint", "only InternLM2ForCausalLM checkpoints without biases convert"
        )


def checkpoint_shards(folder: Path) -> list[Path]:
    shards = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not shards:
        raise ConversionError(f"{folder} has no *.safetensors or pytorch_model*.bin weights", "give --model a complete model folder")
    return shards


def read_shard(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=True)


def convert_weights(source: Path, dest: Path, config: dict[str, Any], progress: Progress) -> int:
    """Writes the Llama-layout shards (one per source shard) and their index; returns the tensor count."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    shards = checkpoint_shards(source)
    weight_map: dict[str, str] = {}
    total = 0
    for k, shard in enumerate(shards, start=1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        converted: dict[str, Any] = {}
        for key, tensor in read_shard(shard).items():
            for new_key, new_tensor in llama_tensors(key, tensor, config):
                converted[new_key] = new_tensor
                weight_map[new_key] = name
        try:
            save_file(converted, str(dest / name), metadata={"format": "pt"})
        except (OSError, SafetensorError) as exc:  # a full disk, most often: the copy is as large as the model
            raise ConversionError(
                f"cannot write {dest / name}: {exc}",
                f"free space on that disk (the copy needs about as much as {source.name}'s weights) and run it again",
            ) from exc
        total += sum(t.numel() * t.element_size() for t in converted.values())
        progress(f"converted weights {k}/{len(shards)} ({shard.name})")
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return len(weight_map)


# --- tokenizer ------------------------------------------------------------------------------


def special_tokens(tokenizer_config: dict[str, Any]) -> dict[int, str]:
    """The token ids tokenizer_config.json pins to special tokens (InternLM2: 92538-92543 for <|plugin|> ... <|im_start|>)."""
    pinned = {}
    for key, value in (tokenizer_config.get("added_tokens_decoder") or {}).items():
        content = value.get("content") if isinstance(value, dict) else value
        if str(key).isdigit() and isinstance(content, str):
            pinned[int(key)] = content
    return pinned


def bpe_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """The merges of a sentencepiece BPE model: every split of a piece into two pieces, ranked by
    the merged piece's id (sentencepiece numbers BPE pieces in merge order)."""
    ranked = []
    for piece, rank in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((rank, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def build_tokenizer(sp: Any, name: str, pinned: dict[int, str], add_bos: bool) -> Any:
    """A `tokenizers` BPE tokenizer equal to the sentencepiece model ``sp`` (file ``name``), with ``pinned`` tokens on their ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    size = sp.get_piece_size()
    outside = {i: t for i, t in pinned.items() if i >= size}
    if outside:
        raise ConversionError(f"tokenizer_config.json pins {outside} at ids past the {size} pieces of {name}", "the tokenizer files do not belong together")  # fmt: skip
    pieces = [pinned.get(i, sp.id_to_piece(i)) for i in range(size)]
    vocab: dict[str, int] = {}
    for i, piece in enumerate(pieces):
        vocab.setdefault(piece, i)
    # Control and byte pieces never come out of a merge.
    mergeable = {p: i for p, i in vocab.items() if not (sp.is_control(i) or sp.is_byte(i) or sp.is_unknown(i) or i in pinned)}
    unk = sp.id_to_piece(sp.unk_id())
    tokenizer = Tokenizer(BPE(vocab, bpe_merges(mergeable), unk_token=unk, fuse_unk=True, byte_fallback=True))
    dummy_prefix = sp.encode("a", out_type=str)[:1] == ["▁a"]
    steps = [normalizers.Prepend("▁")] if dummy_prefix else []
    tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    decoding = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tokenizer.decoder = decoders.Sequence([*decoding, decoders.Strip(" ", 1, 0)] if dummy_prefix else decoding)
    specials = sorted({i: pieces[i] for i in range(size) if sp.is_control(i) or sp.is_unknown(i)} | pinned)
    tokenizer.add_special_tokens([AddedToken(pieces[i], special=True, normalized=False) for i in specials])
    if add_bos and sp.bos_id() >= 0:
        bos = pieces[sp.bos_id()]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, sp.bos_id())]
        )
    return tokenizer


def load_sentencepiece(model_file: Path) -> Any:
    """The sentencepiece model, or a ConfigError naming the file, the sentencepiece version and the fix."""
    import sentencepiece as spm

    try:
        return spm.SentencePieceProcessor(model_file=str(model_file))
    except (RuntimeError, OSError) as exc:
        version = getattr(spm, "__version__", "?")
        hint = "reinstall sentencepiece at another version (`pip install -U sentencepiece`; 0.2.1 and 0.2.3 read it)"
        if "null character" in str(exc):
            hint = f"sentencepiece {version} rejects InternLM2's tokenizer (its piece 354 is a NUL byte): {hint}"
        raise ConfigError(f"{model_file} cannot be read by sentencepiece {version}: {exc}", hint) from exc


def tokenizer_mismatch(tokenizer: Any, sp: Any, texts: Iterable[str]) -> str | None:
    """Where the tokenizer first encodes a text unlike sentencepiece (``sp``), described; None when all agree."""
    for text in texts:
        expected = sp.encode(text)
        got = tokenizer.encode(text, add_special_tokens=False).ids
        if got != expected:
            at = next((k for k, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), min(len(expected), len(got)))
            pieces = [sp.id_to_piece(i) for i in expected[at : at + 4]], [tokenizer.id_to_token(i) for i in got[at : at + 4]]
            return f"in {text[:40]!r}, from token {at}: sentencepiece {pieces[0]}, rebuilt {pieces[1]}"
    return None


def write_tokenizer(source: Path, dest: Path, check_texts: Iterable[str] = ()) -> dict[str, int]:
    """tokenizer.json + tokenizer_config.json for the copy; returns the chat tokens' ids."""
    model_file = source / "tokenizer.model"
    if not model_file.is_file():
        raise ConversionError(
            f"{source} has no tokenizer.model (InternLM2's sentencepiece tokenizer)", "give --model the complete model folder"
        )
    tokenizer_config = read_json(source / "tokenizer_config.json")
    pinned = special_tokens(tokenizer_config)
    sp = load_sentencepiece(model_file)
    tokenizer = build_tokenizer(sp, model_file.name, pinned, bool(tokenizer_config.get("add_bos_token", True)))
    problem = tokenizer_mismatch(tokenizer, sp, [*CHECK_TEXTS, *check_texts])
    if problem:
        raise ConversionError(
            f"the tokenizer rebuilt from {model_file} does not encode like sentencepiece {problem}",
            "teambot rebuilds BPE tokenizers without text normalization, as InternLM2's is; this model's is not supported. "
            "Nothing was written",
        )
    tokenizer.save(str(dest / "tokenizer.json"))
    keep = ("bos_token", "eos_token", "unk_token", "pad_token", "additional_special_tokens", "chat_template", "model_max_length")
    out = {key: tokenizer_config[key] for key in keep if key in tokenizer_config}
    if tokenizer.post_processor is not None and isinstance(out.get("chat_template"), str):
        out["chat_template"] = TEMPLATE_BOS.sub("", out["chat_template"], count=1)
    out.update({"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False})
    (dest / "tokenizer_config.json").write_text(json.dumps(out, indent=2, ensure_ascii=False), encoding="utf-8")
    return {token: tokenizer.token_to_id(token) for token in ("<|im_start|>", "<|im_end|>") if tokenizer.token_to_id(token) is not None}


# --- the copy -------------------------------------------------------------------------------


def convert(source: Path, dest: Path, progress: Progress = print, check_texts: Iterable[str] = ()) -> Path:
    """Writes ``dest``: ``source`` (an InternLM2 model folder) in the Llama layout, with its own tokenizer rebuilt."""
    config = read_config(source)
    if not is_internlm2(config):
        raise ConversionError(f"{source} is not an InternLM2 model (architectures {config.get('architectures')})", "only InternLM2 models are converted")  # fmt: skip
    new_config = llama_config(config, source / "config.json")
    checkpoint_shards(source)
    dest.mkdir(parents=True, exist_ok=True)
    progress(f"converting {source.name} from InternLM2 to the Llama layout (lossless) in {dest}")
    chat_ids = write_tokenizer(source, dest, check_texts)
    eos = list(new_config["eos_token_id"]) if isinstance(new_config["eos_token_id"], list) else [new_config["eos_token_id"]]
    if "<|im_end|>" in chat_ids and chat_ids["<|im_end|>"] not in eos:  # a chat turn ends there
        eos.append(chat_ids["<|im_end|>"])
    (dest / "config.json").write_text(json.dumps(new_config, indent=2), encoding="utf-8")
    generation = {"bos_token_id": new_config["bos_token_id"], "eos_token_id": eos, "pad_token_id": new_config["pad_token_id"]}
    if published := read_json(source / "generation_config.json"):
        generation = {**published, "eos_token_id": eos}
    (dest / "generation_config.json").write_text(json.dumps(generation, indent=2), encoding="utf-8")
    tensors = convert_weights(source, dest, config, progress)
    marker = {
        "converted_from": str(source),
        "architecture": ARCHITECTURE,
        "layout": "llama",
        "tensors": tensors,
        "chat_token_ids": chat_ids,
    }
    (dest / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    progress(f"converted: {tensors} tensors; chat tokens {chat_ids}")
    return dest
