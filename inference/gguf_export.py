"""`teambot quantize --format gguf`: a Hugging Face model folder -> a 4-bit GGUF for llama.cpp.

The CPU counterpart of W4A16. Two steps:
1. an f16 GGUF written here with the ``gguf`` package (llama.cpp's own gguf-py): the weights in
   llama.cpp's Llama tensor layout, the sentencepiece vocabulary with its scores and token types,
   the chat template and the stop token. InternLM2 (the course's model) goes through the same
   lossless Llama-layout conversion as the AWQ path (inference/internlm2.py), tensor by tensor, so
   memory holds one tensor at a time; Llama-layout models with a sentencepiece tokenizer go in
   directly.
2. llama.cpp's own quantizer (``llama_model_quantize`` through llama-cpp-python): Q4_K_M by
   default, Q8_0 selectable (or the f16 file itself).

llama.cpp's Llama graph applies RoPE to adjacent pairs of a head's dimensions, Hugging Face's to
its two halves (``rotate_half``); the query and key rows of each head are reordered here so both
compute the same (tests/test_gguf_export.py compares the logits with InternLM2's forward pass).
Files appear only complete: each is written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.errors import ConfigError, TeambotError
from inference import internlm2
from inference.model_check import read_config, read_json

Progress = Callable[[str], None]

# --type: llama.cpp's file types (llama.h's llama_ftype), and the share of the f16 file's size each
# comes to (Q8_0: 34 bytes per 32 weights; Q4_K_M: about 4.9 bits per weight, a few tensors at 6).
GGUF_TYPES = {"q4_k_m": 15, "q8_0": 7, "f16": 1}
SIZE_OF_F16 = {"q4_k_m": 0.32, "q8_0": 0.54, "f16": 1.0}
DEFAULT_GGUF_TYPE = "q4_k_m"
VOCAB_MARGIN = 32 * 1024**2  # the vocabulary and the other metadata: InternLM2's 92,544 tokens take about 3 MB
LLAMA_ARCHITECTURES = ("LlamaForCausalLM",)
CHAT_END = "<|im_end|>"  # where a chat turn ends for InternLM2 and the other ChatML models
FOLDER_HINT = "give --model a Hugging Face model folder (config.json, *.safetensors, tokenizer.model, tokenizer_config.json)"


class GgufError(TeambotError):
    """The GGUF could not be written or quantized."""


@dataclass(frozen=True)
class GgufResult:
    model: Path
    out: Path
    gguf_type: str
    bytes_before: int
    bytes_after: int
    seconds: float
    chat_template: bool


@dataclass(frozen=True)
class ModelShape:
    """What llama.cpp's Llama graph needs to know of the model (from config.json, checked)."""

    config: dict[str, Any]  # the Llama-layout config (inference.internlm2.llama_config's fields)
    source_config: dict[str, Any]  # config.json as published
    internlm2: bool

    @property
    def heads(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def kv_heads(self) -> int:
        return int(self.config["num_key_value_heads"])


def default_output(models_dir: Path, model: Path, gguf_type: str) -> Path:
    return models_dir / f"{model.name.lower()}-{gguf_type}.gguf"


# --- the model folder ------------------------------------------------------------------------


def read_shape(folder: Path) -> ModelShape:
    """The model's shapes, or a ConfigError naming the file and field at fault."""
    config = read_config(folder)
    path = folder / "config.json"
    if internlm2.is_internlm2(config):
        return ModelShape(internlm2.llama_config(config, path), config, internlm2=True)
    architectures = config.get("architectures") or []
    if not any(a in LLAMA_ARCHITECTURES for a in architectures) and config.get("model_type") != "llama":
        raise ConfigError(
            f"{path}: architectures is {architectures!r}; --format gguf converts InternLM2ForCausalLM and LlamaForCausalLM models",
            "convert this model with llama.cpp's convert_hf_to_gguf.py, or use the default AWQ format on a GPU",
        )
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ConfigError(f"{path}: attention_bias / mlp_bias is true; only Llama models without biases convert", FOLDER_HINT)
    shape = internlm2.llama_config({**config, "bias": False}, path)  # the same fields, checked the same way
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim != shape["head_dim"]:
        raise ConfigError(
            f"{path}: head_dim is {head_dim!r}, not hidden_size / num_attention_heads = {shape['head_dim']}",
            "only Llama models whose head size follows from hidden_size convert",
        )
    return ModelShape(shape, config, internlm2=False)


def sentencepiece_file(folder: Path) -> Path:
    path = folder / "tokenizer.model"
    if not path.is_file():
        raise ConfigError(
            f"{folder} has no tokenizer.model: --format gguf writes sentencepiece vocabularies (InternLM2's, Llama 2's)",
            "give --model a model folder with its tokenizer.model; byte-level BPE models (tokenizer.json only) convert "
            "with llama.cpp's convert_hf_to_gguf.py",
        )
    return path


def chat_template(folder: Path) -> str | list[dict[str, str]] | None:
    """The model's own chat template: tokenizer_config.json's chat_template, or chat_template.jinja."""
    template = read_json(folder / "tokenizer_config.json").get("chat_template")
    if template:
        return template
    jinja = folder / "chat_template.jinja"
    return jinja.read_text(encoding="utf-8") if jinja.is_file() else None


# --- the vocabulary --------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocabulary:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool
    bos: int
    eos: int  # the token that ends an answer: <|im_end|> for a ChatML chat model
    unk: int
    pad: int | None
    chat_end: int | None
    add_bos: bool


def vocabulary(folder: Path, vocab_size: int) -> Vocabulary:
    """The GGUF vocabulary: sentencepiece's pieces, scores and kinds, with tokenizer_config.json's
    added tokens (InternLM2's chat tokens, pinned on reserved pieces) on their ids."""
    from gguf import TokenType

    model_file = sentencepiece_file(folder)
    sp = internlm2.load_sentencepiece(model_file)
    tokenizer_config = read_json(folder / "tokenizer_config.json")
    added = tokenizer_config.get("added_tokens_decoder") or {}
    pinned = internlm2.special_tokens(tokenizer_config)
    size = sp.get_piece_size()
    if size > vocab_size or any(i >= vocab_size for i in pinned):
        raise ConfigError(
            f"{model_file} has {size} pieces (tokenizer_config.json pins ids up to {max(pinned, default=0)}), "
            f"more than config.json's vocab_size = {vocab_size}",
            "the tokenizer and the weights do not belong together: use the files of one model",
        )
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        if i in pinned and not (i < size and sp.id_to_piece(i) == pinned[i]):  # <s>, </s>, <unk> keep sentencepiece's kinds
            entry = added.get(str(i))
            special = not isinstance(entry, dict) or bool(entry.get("special", True))
            tokens.append(pinned[i])
            scores.append(sp.get_score(i) if i < size else 0.0)
            types.append(TokenType.CONTROL if special else TokenType.USER_DEFINED)
            continue
        if i >= size:  # embedding rows past the tokenizer (padding to a round size)
            tokens.append(f"[PAD{i}]")
            scores.append(0.0)
            types.append(TokenType.UNUSED)
            continue
        piece, kind = sp.id_to_piece(i), TokenType.NORMAL
        if sp.is_unknown(i):
            kind = TokenType.UNKNOWN
        elif sp.is_control(i):
            kind = TokenType.CONTROL
        elif sp.is_byte(i):
            kind = TokenType.BYTE
        elif sp.is_unused(i):
            kind = TokenType.UNUSED
        if "\x00" in piece:
            # llama.cpp keeps token texts as C strings: a NUL piece (InternLM2's 354) would read as
            # empty and collide. It never comes out of text (byte fallback <0x00> covers the byte).
            piece, kind = f"[NUL{i}]", TokenType.UNUSED
        tokens.append(piece)
        scores.append(sp.get_score(i))
        types.append(kind)
    chat_end = tokens.index(CHAT_END) if CHAT_END in tokens else None
    pad = sp.pad_id() if sp.pad_id() >= 0 else None
    return Vocabulary(
        tokens, scores, [int(t) for t in types], add_space_prefix=sp.encode("a", out_type=str)[:1] == ["▁a"],
        bos=sp.bos_id(), eos=chat_end if chat_end is not None else sp.eos_id(), unk=sp.unk_id(), pad=pad, chat_end=chat_end,
        add_bos=bool(tokenizer_config.get("add_bos_token", True)),
    )  # fmt: skip


# --- the tensors -----------------------------------------------------------------------------


def shard_tensors(shard: Path, load: bool) -> Iterator[tuple[str, Any]]:
    """A checkpoint shard's tensors one at a time: loaded, or (``load`` False) as shape-only meta tensors."""
    import torch

    if shard.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is no dict)
                if load:
                    yield name, f.get_tensor(name)
                else:
                    view = f.get_slice(name)
                    yield name, torch.empty(view.get_shape(), dtype=_torch_dtype(view.get_dtype()), device="meta")
        return
    state = torch.load(str(shard), map_location="cpu", weights_only=True, mmap=True)
    for name, tensor in state.items():
        yield name, tensor if load else torch.empty_like(tensor, device="meta")


def _torch_dtype(name: str) -> Any:
    import torch

    return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}.get(name, torch.float32)


def rope_pairs_adjacent(weight: Any, heads: int) -> Any:
    """Reorders each head's rows from Hugging Face's RoPE layout (dimension d pairs with d + head_dim/2)
    to llama.cpp's (d pairs with d + 1): row j of the first half goes to 2j, of the second half to 2j + 1."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def gguf_tensors(folder: Path, shape: ModelShape, load: bool) -> Iterator[tuple[str, Any]]:
    """(GGUF name, tensor) for every weight, in llama.cpp's layout: 2-D weights in f16, norms in f32."""
    import torch
    from gguf import MODEL_ARCH, get_tensor_name_map

    names = get_tensor_name_map(MODEL_ARCH.LLAMA, shape.config["num_hidden_layers"])
    for shard in internlm2.checkpoint_shards(folder):
        for name, tensor in shard_tensors(shard, load):
            llama = internlm2.llama_tensors(name, tensor, shape.source_config) if shape.internlm2 else [(name, tensor)]
            for llama_name, weight in llama:
                if llama_name.endswith("rotary_emb.inv_freq"):
                    continue  # llama.cpp computes it from rope.freq_base
                gguf_name = names.get_name(llama_name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise ConfigError(f"{shard}: tensor {name!r} has no place in llama.cpp's Llama model", FOLDER_HINT)
                if llama_name.endswith("self_attn.q_proj.weight"):
                    weight = rope_pairs_adjacent(weight, shape.heads)
                elif llama_name.endswith("self_attn.k_proj.weight"):
                    weight = rope_pairs_adjacent(weight, shape.kv_heads)
                yield gguf_name, weight.to(torch.float16 if weight.dim() > 1 else torch.float32)


# --- writing ---------------------------------------------------------------------------------


def write_f16(folder: Path, shape: ModelShape, vocab: Vocabulary, template: Any, path: Path, progress: Progress) -> None:
    """The f16 GGUF at ``path`` (written as given: the caller picks a temporary name)."""
    import numpy as np
    from gguf import GGUFWriter, LlamaFileType, RopeScalingType

    config = shape.config
    writer = GGUFWriter(str(path), "llama")
    writer.add_name(folder.name)
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(len(vocab.tokens))
    scaling = config.get("rope_scaling") or {}
    if scaling.get("type") == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    writer.add_tokenizer_model("llama")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_add_space_prefix(vocab.add_space_prefix)
    writer.add_bos_token_id(vocab.bos)
    writer.add_eos_token_id(vocab.eos)
    writer.add_unk_token_id(vocab.unk)
    if vocab.pad is not None:
        writer.add_pad_token_id(vocab.pad)
    if vocab.chat_end is not None:
        writer.add_eot_token_id(vocab.chat_end)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if template:
        writer.add_chat_template(template)
    planned = []
    for name, meta in gguf_tensors(folder, shape, load=False):  # shapes only: nothing is read yet
        dtype = np.float16 if meta.dim() > 1 else np.float32
        writer.add_tensor_info(name, tuple(meta.shape), np.dtype(dtype), meta.numel() * np.dtype(dtype).itemsize)
        planned.append(name)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for k, (name, tensor) in enumerate(gguf_tensors(folder, shape, load=True), start=1):
        if name != planned[k - 1]:  # the same walk twice; a checkpoint read differently the second time is a bug
            raise GgufError(f"{folder}: tensor {k} was {planned[k - 1]} and is now {name}", "run it again")
        writer.write_tensor_data(tensor.contiguous().numpy())
        progress(f"f16 GGUF: tensor {k}/{len(planned)} {name} {tuple(tensor.shape)}")
    writer.close()


def estimated_f16_bytes(folder: Path, shape: ModelShape) -> int:
    """The f16 GGUF's size: the weights in f16 (norms in f32) and a margin for the vocabulary."""
    return sum(t.numel() * (2 if t.dim() > 1 else 4) for _, t in gguf_tensors(folder, shape, load=False)) + VOCAB_MARGIN


def check_free_space(where: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(where).free
    if free < needed:
        gib = 1024**3
        raise GgufError(f"{where} has {free / gib:.2f} GiB free; {what} need about {needed / gib:.2f} GiB", "free space there, or give --out on another disk")  # fmt: skip


def llama_cpp_tokens(vocab: Any, text: str) -> list[int]:
    """``text`` encoded by llama.cpp's tokenizer (no BOS; chat tokens in the text read as text)."""
    import llama_cpp

    data = text.encode("utf-8")
    room = len(data) + 8  # a token covers at least one byte
    tokens = (llama_cpp.llama_token * room)()
    count = llama_cpp.llama_tokenize(vocab, data, len(data), tokens, room, False, False)
    return list(tokens[:count])


def tokenizer_mismatch(gguf: Path, folder: Path, texts: list[str]) -> str | None:
    """Where llama.cpp, reading the GGUF's vocabulary, first encodes a text unlike sentencepiece; None when all agree.
    (The vocabulary alone is loaded, with no context: nothing is computed.)"""
    import llama_cpp

    sp = internlm2.load_sentencepiece(sentencepiece_file(folder))
    quiet = logging.getLogger("llama-cpp-python")  # llama.cpp's own messages go through it: errors only here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    if not model:
        quiet.setLevel(level)
        raise GgufError(f"llama.cpp cannot read the GGUF it was given ({gguf})", "see llama.cpp's messages above; this is a bug in teambot")
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        for text in texts:
            expected, got = sp.encode(text), llama_cpp_tokens(vocab, text)
            if got != expected:
                at = next((k for k, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), min(len(expected), len(got)))
                return f"in {text[:40]!r}, from token {at}: sentencepiece {expected[at : at + 4]}, llama.cpp {got[at : at + 4]}"
    finally:
        llama_cpp.llama_model_free(model)
        quiet.setLevel(level)
    return None


def quantize_file(f16: Path, out: Path, gguf_type: str, threads: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = GGUF_TYPES[gguf_type]
    params.nthread = threads
    shown = logging.getLogger("llama-cpp-python")  # llama.cpp lists each tensor at INFO as it quantizes it: the progress
    level = shown.level
    shown.setLevel(logging.INFO)
    try:
        code = llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), ctypes.byref(params))
    finally:
        shown.setLevel(level)
    if code != 0:
        raise GgufError(f"llama.cpp could not quantize {f16} to {gguf_type.upper()} (code {code})", "see llama.cpp's messages above")


def export_gguf(
    model: Path,
    out: Path,
    *,
    gguf_type: str = DEFAULT_GGUF_TYPE,
    threads: int = 0,
    progress: Progress = print,
) -> GgufResult:
    """Writes ``out`` (replacing a file there, once the new one is complete), a GGUF of the model folder
    ``model`` in ``gguf_type`` (q4_k_m, q8_0 or f16)."""
    started = time.monotonic()
    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"--type {gguf_type} is not one of {', '.join(GGUF_TYPES)}", "use --type q4_k_m (the default), q8_0 or f16")
    model = model.expanduser()
    if not model.is_dir():
        raise ConfigError(f"--model {model}: no such folder", f"{FOLDER_HINT}, or a short name pulled first (`teambot models pull internlm2_5-1_8b-chat`, then --model internlm2_5-1_8b-chat); --format gguf does not download")
    model = model.resolve()
    shape = read_shape(model)
    internlm2.checkpoint_shards(model)
    vocab = vocabulary(model, shape.config["vocab_size"])
    template = chat_template(model)
    out = out.expanduser().resolve()
    if out.is_dir():
        out = out / default_output(out, model, gguf_type).name
    out.parent.mkdir(parents=True, exist_ok=True)
    f16_bytes = estimated_f16_bytes(model, shape)
    needed = f16_bytes + (int(f16_bytes * SIZE_OF_F16[gguf_type]) if gguf_type != "f16" else 0)
    check_free_space(out.parent, needed, "the f16 GGUF and the quantized one" if gguf_type != "f16" else "the f16 GGUF")
    if shape.internlm2:
        progress(f"{model.name}: InternLM2, converted to the Llama layout (lossless) while it is written")
    if template is None:
        progress(f"{model.name} has no chat template (tokenizer_config.json chat_template): llama.cpp will format chats as Llama 2's")
    if (shape.config.get("rope_scaling") or {}).get("type") == "dynamic":
        progress(
            f"{model.name} scales RoPE dynamically past {shape.config['max_position_embeddings']} tokens; llama.cpp does not: "
            "keep inference.context_size at or below that"
        )
    f16 = out.with_name(f".{out.name}.f16.partial") if gguf_type != "f16" else out.with_name(f".{out.name}.partial")
    partial = out.with_name(f".{out.name}.partial")
    try:
        write_f16(model, shape, vocab, template, f16, progress)
        problem = tokenizer_mismatch(f16, model, list(internlm2.CHECK_TEXTS))
        if problem:
            raise GgufError(f"llama.cpp reads the vocabulary written from {model / 'tokenizer.model'} unlike sentencepiece {problem}", "this tokenizer is not supported; nothing was written")  # fmt: skip
        if gguf_type != "f16":
            mib = 1024**2
            progress(
                f"quantizing with llama.cpp to {gguf_type.upper()}: {f16.stat().st_size / mib:,.0f} MiB f16 -> about "
                f"{f16.stat().st_size * SIZE_OF_F16[gguf_type] / mib:,.0f} MiB; minutes for a 1.8B model on a few cores "
                "(llama.cpp lists each tensor)"
            )
            quantize_file(f16, partial, gguf_type, threads)
        os.replace(partial, out)
    except OSError as exc:
        raise GgufError(f"cannot write {out.parent}: {exc}", "free space on that disk and run it again") from exc
    finally:
        for leftover in (f16, partial):
            leftover.unlink(missing_ok=True)
    weights = sum(p.stat().st_size for p in internlm2.checkpoint_shards(model))
    return GgufResult(model, out, gguf_type, weights, out.stat().st_size, time.monotonic() - started, template is not None)
