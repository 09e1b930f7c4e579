"""`teambot quantize --format gguf` (inference/gguf_export.py) on small InternLM2 models, read by the real llama.cpp.

The models come from tests/test_internlm2.py's ``internlm2_folder`` (random weights, a trained
sentencepiece tokenizer with the chat tokens pinned on reserved pieces), in widths llama.cpp's
k-quants take whole (rows of 256), so Q4_K_M quantizes every matrix as Q4_K / Q6_K rather than
falling back. Logits are compared with the reference InternLM2 forward pass there.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from config.errors import ConfigError, TeambotError
from inference import internlm2
from inference.gguf_export import CHAT_END, check_free_space, export_gguf
from tests.conftest import EXAMPLES, indexed_copy, make_settings
from tests.test_cli import ON_CALL_QUESTION, TEAMBOT, run, teambot_env
from tests.test_internlm2 import CHAT_TEXTS, RESERVED, internlm2_folder, internlm2_logits

# Widths that suit llama.cpp's k-quants (rows of 256); 4 query heads share 2 KV heads of 64 dims.
SHAPE = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
# llama.cpp multiplies f16 weights with activations rounded to f16: its logits differ from a float32
# forward pass over the same (f16-rounded) weights by up to about 1% of the largest logit (0.11 of
# 12.8 seen). Taking the rows in Hugging Face's RoPE order instead (no reordering) gives 19.5.
F16_TOLERANCE = 0.02  # of the largest reference logit


def llama(path: Path, **options: Any) -> Any:
    import llama_cpp

    return llama_cpp.Llama(str(path), n_ctx=512, n_threads=2, verbose=False, **options)


def gguf_logits(path: Path, ids: list[int]) -> np.ndarray:
    model = llama(path, logits_all=True)
    try:
        model.eval(ids)
        return np.array(model.scores[: len(ids)])
    finally:
        model.close()


def reference_logits(weights: dict[str, torch.Tensor], config: dict[str, Any], ids: list[int]) -> np.ndarray:
    """InternLM2's forward pass over the weights as the f16 GGUF holds them (rounded to f16)."""
    rounded = {k: (v.half().float() if v.dim() > 1 else v) for k, v in weights.items()}
    with torch.no_grad():
        return internlm2_logits(rounded, config, torch.tensor([ids]))[0].numpy()


def text_ids(source: Path) -> list[int]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(source / "tokenizer.model"))
    text = (EXAMPLES / "oncall-guide.md").read_text(encoding="utf-8")
    return [sp.bos_id(), *sp.encode(text)][:200]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The model converted by the command itself (Q4_K_M, the default type) and by export_gguf (f16, Q8_0)."""
    base = tmp_path_factory.mktemp("gguf")
    source, weights = internlm2_folder(base / "internlm2-tiny", **SHAPE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEAMBOT_")} | {"TEAMBOT_DATA_DIR": str(base / "data")}
    done = subprocess.run(
        [TEAMBOT, "quantize", "--format", "gguf", "--model", str(source)], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    q4 = base / "data" / "models" / "internlm2-tiny-q4_k_m.gguf"
    said: list[str] = []
    files = {
        "q4_k_m": q4,
        **{t: export_gguf(source, base / f"tiny-{t}.gguf", gguf_type=t, progress=said.append).out for t in ("f16", "q8_0")},
    }
    return {"source": source, "weights": weights, "config": json.loads((source / "config.json").read_text()), "files": files,
            "stdout": done.stdout, "stderr": done.stderr, "said": said}  # fmt: skip


def test_the_command_writes_a_q4_k_m_gguf_and_says_how_to_serve_it(exported: dict[str, Any]) -> None:
    q4 = exported["files"]["q4_k_m"]
    assert q4.is_file() and q4.read_bytes()[:4] == b"GGUF"
    assert f"TEAMBOT_INFERENCE__MODEL_PATH={q4} teambot serve" in exported["stdout"]
    assert (
        "f16 GGUF: tensor 1/" in exported["stderr"]
        and "quantizing with llama.cpp to Q4_K_M" in exported["stderr"]
        and "MiB f16" in exported["stderr"]
    )
    # llama.cpp's own progress, one line a tensor: every matrix went to a k-quant (the widths suit them)
    assert "blk.1.ffn_up.weight" in exported["stderr"] and "converting to q4_K" in exported["stderr"]
    assert "possible training context overflow" not in exported["stderr"]  # the tokenizer check loads no context
    assert [p.name for p in q4.parent.iterdir()] == [q4.name]  # the f16 intermediate and the partial file are gone
    f16 = exported["files"]["f16"]
    assert q4.stat().st_size < 0.45 * f16.stat().st_size


def test_the_gguf_carries_the_vocabulary_the_chat_template_and_the_stop_token(exported: dict[str, Any]) -> None:
    import sentencepiece as spm
    from gguf import GGUFReader, TokenType

    source = exported["source"]
    sp = spm.SentencePieceProcessor(model_file=str(source / "tokenizer.model"))
    reader = GGUFReader(exported["files"]["f16"])

    def field(name: str) -> Any:
        return reader.fields[name].contents()

    chat_end = sp.piece_to_id(RESERVED[0])  # tokenizer_config.json pins <|im_end|> there
    assert field("general.architecture") == "llama" and field("tokenizer.ggml.model") == "llama"
    tokens, types, scores = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type"), field("tokenizer.ggml.scores")
    assert len(tokens) == sp.get_piece_size() == field("llama.vocab_size")
    assert tokens[chat_end] == CHAT_END and types[chat_end] == TokenType.CONTROL
    assert field("tokenizer.ggml.eos_token_id") == field("tokenizer.ggml.eot_token_id") == chat_end  # a chat turn ends there
    assert field("tokenizer.ggml.bos_token_id") == sp.bos_id() and field("tokenizer.ggml.add_bos_token") is True
    piece = sp.encode("primary", out_type=int)[0]
    assert tokens[piece] == sp.id_to_piece(piece) and scores[piece] == pytest.approx(sp.get_score(piece))
    assert types[sp.piece_to_id("<0x0A>")] == TokenType.BYTE
    template = json.loads((source / "tokenizer_config.json").read_text())["chat_template"]
    assert field("tokenizer.chat_template") == template


@pytest.mark.parametrize("length", [7, 64])
def test_the_f16_gguf_computes_what_internlm2_computes(exported: dict[str, Any], length: int) -> None:
    ids = torch.randint(3, exported["config"]["vocab_size"], (length,), generator=torch.Generator().manual_seed(length)).tolist()
    expected = reference_logits(exported["weights"], exported["config"], ids)
    got = gguf_logits(exported["files"]["f16"], ids)
    tolerance = F16_TOLERANCE * np.abs(expected).max()
    assert np.abs(got - expected).max() <= tolerance, (np.abs(got - expected).max(), tolerance)
    assert (got.argmax(-1) == expected.argmax(-1)).all()


# Top-1 agreement with the reference over 200 tokens, as measured (2026-12-04): f16 99.5%, Q8_0 88%, Q4_K_M 23.5%
# (relative logit error 0.3%, 10%, 69%). This random model's logits are nearly flat (the top two a
# fraction of a unit apart among 1,000) and its 0.2-scale weights amplify any rounding layer by layer,
# so 4-bit weights move many near-ties; the scripted model below, whose choices are clear, keeps every
# one of them at Q4_K_M. A GGUF in the wrong layout agrees on about 0.1% (chance), 10% at most.
@pytest.mark.parametrize(("gguf_type", "least", "error"), [("f16", 0.97, 0.01), ("q8_0", 0.8, 0.2), ("q4_k_m", 0.15, 0.9)])
def test_quantized_ggufs_pick_the_same_next_token_over_a_text(exported: dict[str, Any], gguf_type: str, least: float, error: float) -> None:
    ids = text_ids(exported["source"])
    expected = reference_logits(exported["weights"], exported["config"], ids)
    got = gguf_logits(exported["files"][gguf_type], ids)
    agreement = float((got.argmax(-1) == expected.argmax(-1)).mean())
    relative = float(np.linalg.norm(got - expected) / np.linalg.norm(expected))
    print(
        f"{gguf_type}: top-1 agreement with the reference over {len(ids)} tokens of oncall-guide.md {agreement:.1%}, logit error {relative:.1%}"
    )
    assert agreement >= least and relative <= error


@pytest.mark.parametrize("dummy_prefix", [False, True])
def test_llama_cpp_encodes_like_sentencepiece_chat_tokens_included(tmp_path: Path, dummy_prefix: bool) -> None:
    import sentencepiece as spm

    source, _ = internlm2_folder(tmp_path / "m", dummy_prefix, **SHAPE)
    gguf = export_gguf(source, tmp_path / "m.gguf", gguf_type="f16", progress=lambda line: None).out
    sp = spm.SentencePieceProcessor(model_file=str(source / "tokenizer.model"))
    model = llama(gguf, vocab_only=True)
    try:
        for text in [*CHAT_TEXTS, *(p.read_text(encoding="utf-8") for p in EXAMPLES.glob("*.md"))]:
            assert model.tokenize(text.encode(), add_bos=False, special=True) == sp.encode(text)
            # llama-cpp-python's detokenize keeps the space sentencepiece's dummy prefix put before the first word
            assert model.detokenize(sp.encode(text)).decode() == (" " if dummy_prefix else "") + sp.decode(sp.encode(text))
        start, end = sp.piece_to_id(RESERVED[1]), sp.piece_to_id(RESERVED[0])
        turn = "<|im_start|>user\nWho gets paged?<|im_end|>\n"
        expected = [sp.bos_id(), start, *sp.encode("user\nWho gets paged?"), end, *sp.encode("\n")]
        assert model.tokenize(turn.encode(), add_bos=True, special=True) == expected
        assert model.tokenize(b"<|im_end|>", add_bos=False, special=False) != [end]  # user text cannot forge a chat token
    finally:
        model.close()


def test_a_llama_layout_model_converts_directly(exported: dict[str, Any], tmp_path: Path) -> None:
    """The Llama-layout copy `teambot quantize` makes of InternLM2, with its sentencepiece file: the same GGUF logits."""
    source = exported["source"]
    llama_folder = internlm2.convert(source, tmp_path / "llama", progress=lambda line: None)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (llama_folder / name).write_bytes((source / name).read_bytes())
    gguf = export_gguf(llama_folder, tmp_path / "llama.gguf", gguf_type="f16", progress=lambda line: None).out
    ids = text_ids(source)[:40]
    assert np.array_equal(gguf_logits(gguf, ids), gguf_logits(exported["files"]["f16"], ids))


def test_a_pytorch_bin_checkpoint_converts_like_safetensors(exported: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file

    folder = Path(shutil.copytree(exported["source"], tmp_path / "bin"))
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    gguf = export_gguf(folder, tmp_path / "bin.gguf", gguf_type="f16", progress=lambda line: None).out
    assert gguf.read_bytes()[-4096:] == exported["files"]["f16"].read_bytes()[-4096:]  # the same weights, in the same place
    ids = text_ids(folder)[:40]
    assert np.array_equal(gguf_logits(gguf, ids), gguf_logits(exported["files"]["f16"], ids))


def test_folders_that_do_not_convert_say_which_file_and_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such folder"):
        export_gguf(tmp_path / "nowhere", tmp_path / "out.gguf", progress=lambda line: None)
    source, _ = internlm2_folder(tmp_path / "m", **SHAPE)
    with pytest.raises(ConfigError, match="--type q5 is not one of q4_k_m, q8_0, f16"):
        export_gguf(source, tmp_path / "out.gguf", gguf_type="q5", progress=lambda line: None)
    (source / "tokenizer.model").rename(tmp_path / "tokenizer.model")
    with pytest.raises(ConfigError, match=f"{source} has no tokenizer.model") as caught:
        export_gguf(source, tmp_path / "out.gguf", progress=lambda line: None)
    assert "convert_hf_to_gguf.py" in (caught.value.hint or "")
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}))
    with pytest.raises(ConfigError) as caught:
        export_gguf(source, tmp_path / "out.gguf", progress=lambda line: None)
    assert f"{source / 'config.json'}: architectures is ['Qwen2ForCausalLM']" in str(caught.value)
    (source / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 3}))
    with pytest.raises(ConfigError, match="num_key_value_heads is 3"):
        export_gguf(source, tmp_path / "out.gguf", progress=lambda line: None)
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial"))
    with pytest.raises(TeambotError, match=r"has [\d.]+ GiB free; the f16 GGUF and the quantized one need about") as caught:
        check_free_space(tmp_path, 1 << 60, "the f16 GGUF and the quantized one")
    assert "--out" in (caught.value.hint or "")


def test_a_full_disk_while_writing_leaves_no_file_and_says_so(tmp_path: Path) -> None:
    """RLIMIT_FSIZE stands in for a full disk (in a child process, so the limit stays there)."""
    source, _ = internlm2_folder(tmp_path / "m", **SHAPE)
    script = (
        "import resource, signal, sys; from pathlib import Path; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000)); "
        "from inference.gguf_export import export_gguf; from config.errors import TeambotError\n"
        "try:\n    export_gguf(Path(sys.argv[1]), Path(sys.argv[2]), progress=lambda m: None)\n"
        "except TeambotError as e:\n    print(e); sys.exit(3)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script, str(source), str(tmp_path / "out" / "m.gguf")], cwd=repo,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr[-2000:]
    assert "cannot write" in done.stdout and "free space" in done.stdout
    assert list((tmp_path / "out").iterdir()) == []  # neither the f16 intermediate nor a partial GGUF is left


# --- a model that answers a known text, then <|im_end|>, then text no one may read -------------

ANSWER = "The secondary on-call is paged"  # nine distinct tokens of the test tokenizer
AFTER_END = " after end"
LOGIT = 30.0  # the chosen next token's logit is LOGIT * sqrt(hidden_size) = 480; every other one's is 0


def scripted_folder(folder: Path) -> tuple[Path, list[int]]:
    """An InternLM2 folder whose attention and MLP add nothing (their output projections are zero), so the
    next token depends on the current one alone: every token leads to ANSWER's first token, each of ANSWER's
    tokens to the next, the last to <|im_end|>, and <|im_end|> to AFTER_END's tokens."""
    import sentencepiece as spm
    from safetensors.torch import load_file, save_file

    source, _ = internlm2_folder(folder, **{**SHAPE, "max_position_embeddings": 4096})
    sp = spm.SentencePieceProcessor(model_file=str(source / "tokenizer.model"))
    chain = [*sp.encode(ANSWER), sp.piece_to_id(RESERVED[0]), *sp.encode(AFTER_END)]
    assert len(set(chain)) == len(chain), [sp.id_to_piece(i) for i in chain]  # one next token per token
    weights = load_file(str(source / "model.safetensors"))
    hidden = SHAPE["hidden_size"]
    embeddings = torch.zeros_like(weights["model.tok_embeddings.weight"])
    embeddings[:, 0] = 1.0  # every token not in the chain: direction 0, which leads to ANSWER's first token
    output = torch.zeros_like(weights["output.weight"])
    output[chain[0], 0] = LOGIT
    for k, (token, following) in enumerate(itertools.pairwise(chain), start=1):
        embeddings[token] = 0.0
        embeddings[token, k] = 1.0
        output[following, k] = LOGIT
    assert len(chain) < hidden
    weights |= {"model.tok_embeddings.weight": embeddings, "output.weight": output, "model.norm.weight": torch.ones(hidden)}
    for name in weights:
        if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
            weights[name] = torch.zeros_like(weights[name])
        elif name.endswith("norm.weight"):
            weights[name] = torch.ones_like(weights[name])
    save_file(weights, str(source / "model.safetensors"))
    return source, chain


def test_teambot_ask_streams_the_models_answer_and_stops_at_im_end(indexed_settings: Any, tmp_path: Path) -> None:
    source, _ = scripted_folder(tmp_path / "scripted")
    data, knowledge = indexed_copy(indexed_settings, tmp_path)
    settings = make_settings(data, knowledge)
    env = teambot_env(settings, TEAMBOT_BOT__ANSWER_MODE="generative")  # the model's own answer, whatever the guard says
    converted = run(["quantize", "--format", "gguf", "--model", str(source), "--out", str(tmp_path / "scripted.gguf")], env, timeout=600)
    assert converted.returncode == 0, converted.stderr
    result = run(["ask", ON_CALL_QUESTION], {**env, "TEAMBOT_INFERENCE__MODEL_PATH": str(tmp_path / "scripted.gguf")}, timeout=600)
    assert result.returncode == 0, result.stderr
    answer, _, sources = result.stdout.partition("\nSources\n")
    assert answer.strip().startswith(ANSWER), result.stdout
    print(result.stdout)
    assert "after end" not in result.stdout and CHAT_END not in result.stdout
    assert "oncall-guide.md" in sources
    assert "scripted.gguf" in result.stderr  # served by llama.cpp from the converted file
    template = json.loads((source / "tokenizer_config.json").read_text())["chat_template"]
    assert f"Using gguf chat template: {template}" in (settings.logs_dir / "llama-server.log").read_text()  # the model's own
