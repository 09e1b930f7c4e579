"""Checks on a Hugging Face model folder before lmdeploy quantizes or serves it.

- Remote code: a model whose config.json or tokenizer_config.json has an ``auto_map`` runs code
  from its own folder (InternLM2 does), which transformers loads only with trust_remote_code.
  teambot refuses such a folder unless the operator named it (``check_remote_code``); then its
  code runs only in child processes with the LLM server's environment, which holds none of
  teambot's tokens: lmdeploy's, and the tokenizer check's (``check_tokenizer_in_child``).
- Chat tokens inside the vocabulary: a tokenizer that gives a special token an id at or past
  the model's ``vocab_size`` crashes lmdeploy on the first chat (a CUDA index error). This is
  what InternLM2's remote tokenizer does on transformers 5; teambot says so before it starts.
- Library versions with known trouble for the course's model (said once, at the start).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from config.errors import ConfigError
from inference.process import child_env, describe_exit

CHECK_TIMEOUT_S = 300.0  # loading a tokenizer takes seconds; a folder on a hung network disk should not hang the start


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file of the model folder ({} when it is not there), or a ConfigError naming it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}", "check the model folder") from exc
    if not isinstance(value, dict):
        raise ConfigError(
            f"{path} holds a JSON {type(value).__name__}, not a JSON object of named fields",
            "use the file the model was published with (its first character is '{')",
        )
    return value


def read_config(folder: Path) -> dict[str, Any]:
    """The model's config.json, or a ConfigError naming it."""
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path} cannot be read: it does not exist", "check the model folder")
    return read_json(path)


def remote_code(folder: Path) -> list[str]:
    """The files of the model folder that name code of its own (``auto_map``): config.json, tokenizer_config.json."""
    return [name for name in ("config.json", "tokenizer_config.json") if read_json(folder / name).get("auto_map")]


def needs_remote_code(folder: Path) -> bool:
    """True when the model's config or tokenizer is code in its folder (``auto_map``)."""
    return bool(remote_code(folder))


def check_remote_code(folder: Path, trusted: bool, opt_in: str) -> None:
    """A ConfigError when ``folder`` ships code of its own and the operator has not said it may run (``opt_in``: how to)."""
    files = remote_code(folder)
    if not files or trusted:
        return
    named = ", ".join(f"{folder / name} (auto_map)" for name in files)
    if "InternLM2ForCausalLM" in (read_json(folder / "config.json").get("architectures") or []):
        hint = f"run `teambot quantize --model {folder}`: it converts the model to the Llama layout, which needs no code of its own"
    else:
        hint = (
            f"if transformers and lmdeploy support this architecture themselves, delete auto_map from {' and '.join(files)}; "
            f"if you trust the code, {opt_in} (it then runs in a child process without teambot's tokens)"
        )
    raise ConfigError(f"the model folder {folder} ships Python code of its own, named in {named}; teambot runs a model's code only when told to", hint)


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numbers of a version: "5.0.0rc1" -> (5, 0, 0), "5.1.dev0" -> (5, 1)."""
    parts = []
    for piece in version.split(".")[:3]:
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def installed(package: str) -> str | None:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def known_trouble(transformers: str | None, sentencepiece: str | None) -> list[str]:
    """What these versions are known to break for InternLM2's remote code, one line each (empty: nothing known)."""
    lines = []
    if transformers and version_tuple(transformers) >= (5,):
        lines.append(
            f"transformers {transformers} cannot run InternLM2's remote modeling code (written for 4.x) and its remote "
            "tokenizer mis-tokenizes and puts the chat tokens past the vocabulary; teambot converts InternLM2 models to the "
            "Llama layout with a rebuilt tokenizer instead (lossless)"
        )
    if sentencepiece and version_tuple(sentencepiece) == (0, 2, 2):
        lines.append(
            f"sentencepiece {sentencepiece} cannot read InternLM2's tokenizer.model (its piece 354 is a NUL byte; seen on a GPU "
            "machine's image): `pip install -U sentencepiece` (0.2.3 reads it)"
        )
    return lines


def vocab_size(folder: Path) -> int | None:
    config = read_json(folder / "config.json")
    text_config = config.get("text_config")
    size = config.get("vocab_size") or (text_config.get("vocab_size") if isinstance(text_config, dict) else None)
    return size if isinstance(size, int) else None


def out_of_vocab(tokenizer: Any, size: int) -> dict[str, int]:
    """Special and added tokens whose id is at or past ``size`` (the model's embedding rows)."""
    tokens = set(getattr(tokenizer, "all_special_tokens", None) or []) | set(tokenizer.get_added_vocab())
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in sorted(tokens)}
    return {token: i for token, i in ids.items() if isinstance(i, int) and i >= size}


def check_tokenizer(folder: Path, trust_remote_code: bool) -> None:
    """Loads the model's tokenizer as lmdeploy does; a ConfigError when a special token's id is past the vocabulary."""
    size = vocab_size(folder)
    if size is None:
        return
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as exc:  # tokenizer code of any kind raises any kind of error; all mean lmdeploy cannot load it either
        raise ConfigError(f"the tokenizer in {folder} cannot be loaded: {type(exc).__name__}: {exc}", _fix(folder)) from exc
    outside = out_of_vocab(tokenizer, size)
    if outside:
        shown = ", ".join(f"{t} = {i}" for t, i in outside.items())
        raise ConfigError(
            f"the tokenizer in {folder} gives {shown}, past the model's {size:,}-token vocabulary "
            f"(transformers {installed('transformers')}); lmdeploy would crash on the first chat",
            _fix(folder),
        )


def check_tokenizer_in_child(folder: Path, trust_remote_code: bool, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """``check_tokenizer`` in a child process with the LLM server's environment (``child_env``): a tokenizer
    that is code runs there, never in teambot's process, and sees none of teambot's tokens."""
    command = [sys.executable, "-m", "inference.model_check", str(folder), *(["--trust-remote-code"] if trust_remote_code else [])]
    env = child_env(os.environ, {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"loading the tokenizer in {folder} took more than {timeout_s:.0f} s", "check that the model folder's disk answers") from None
    if done.returncode == CHECK_FAILED:
        reply = json.loads(done.stdout.strip().splitlines()[-1])
        raise ConfigError(reply["message"], reply["hint"])
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise ConfigError(f"the tokenizer check of {folder} ended with {describe_exit(done.returncode)}: {tail}", _fix(folder))


CHECK_FAILED = 3  # the child's exit code when check_tokenizer refused the folder (its last stdout line says why, as JSON)


def main(argv: list[str]) -> int:
    """`python -m inference.model_check FOLDER [--trust-remote-code]`: the child of ``check_tokenizer_in_child``."""
    try:
        check_tokenizer(Path(argv[0]), trust_remote_code="--trust-remote-code" in argv[1:])
    except ConfigError as exc:
        print(json.dumps({"message": exc.message, "hint": exc.hint}), flush=True)
        return CHECK_FAILED
    return 0


def _fix(folder: Path) -> str:
    config = read_json(folder / "config.json")
    if "InternLM2ForCausalLM" in (config.get("architectures") or []):
        return f"run `teambot quantize --model {folder}`: it converts the model to the Llama layout with a rebuilt tokenizer, then quantizes it"
    return "use the tokenizer files the model was published with, or a transformers version its remote code was written for"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
