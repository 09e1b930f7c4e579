"""Prepare, on this machine, what the lent GPU machine needs for bench/gpu/pipeline.py.

    .venv/bin/python -m bench.gpu.prepare [--internlm2-files DIR]   # writes .gpu/part1 ... .gpu/partN

The GPU machine has no network and takes at most 64 MiB per device call, and its Python is
3.12 with PyTorch, transformers, sentence-transformers and friends already there. So:
- cp312 wheels of what teambot's `ask` path and lmdeploy import and the image lacks, pinned
  (teambot's at the versions this venv runs, lmdeploy's at the versions known to work there);
- lmdeploy's wheel without TurboMind's CUDA 12 library and a static library (107 MB -> 9 MB;
  that machine is CUDA 13, so TurboMind cannot run there anyway; the PyTorch engine does);
- jieba as a wheel built here (PyPI has only its sdist);
- the MiniLM embedder in float16 (87 MB -> 44 MB; the benchmark's index is built with it);
- for the InternLM2 run: the transformers that `pip install -e '.[gpu]'` resolves (TRANSFORMERS_USER,
  installed apart from the image's own, which builds the reference through the remote code) and
  InternLM2's third-party remote code and tokenizer.model from DIR (bench/gpu/internlm2_files.sh
  writes DIR from clones of InternLM's public repositories; nothing of it is committed);
split into folders of at most PART_BYTES each, one per device call (bench/gpu/stage.sh).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / ".gpu"
PART_BYTES = 56 * 1024 * 1024  # the working tree travels too; a call carries 64 MiB in all
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64",
             "manylinux_2_24_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64", "manylinux_2_5_x86_64"]  # fmt: skip

# What `teambot ask` imports that the GPU image lacks (found by importing it here and subtracting
# the image's package list, /work/.library/device/KINDS.md); versions: this venv's.
TEAMBOT_NEEDS = [
    "Deprecated", "SQLAlchemy", "annotated-types", "banks", "beautifulsoup4", "bm25s", "chromadb", "dataclasses-json",
    "filetype", "googleapis-common-protos", "greenlet", "griffecli", "griffelib", "jsonschema", "jsonschema-specifications",
    "llama-index-core", "llama-index-embeddings-huggingface", "llama-index-instrumentation", "llama-index-vector-stores-chroma",
    "llama-index-workflows", "markdownify", "marshmallow", "opentelemetry-api", "opentelemetry-exporter-otlp-proto-common",
    "opentelemetry-exporter-otlp-proto-grpc", "opentelemetry-proto", "opentelemetry-sdk", "opentelemetry-semantic-conventions",
    "orjson", "overrides", "pybase64", "pydantic", "pydantic-settings", "pydantic_core", "pypdf", "python-docx",
    "python-dotenv", "python-multipart", "referencing", "rpds-py", "snowballstemmer", "soupsieve", "tenacity",
    "tinytag", "truststore", "typing-inspection", "watchfiles", "platformdirs", "sniffio", "uvicorn",
    "opentelemetry-exporter-otlp-common", "nltk",
    "APScheduler", "tzlocal", "slack_bolt", "slack_sdk", "discord.py",  # missing from the image (found by the 2026-11-26 run)
]  # fmt: skip
# lmdeploy's own needs on that image (../shared/notes/gpu-lmdeploy.md): fastapi 0.115 with starlette 0.46
# (newer fastapi imports more), openai 2.x (3.x imports httpx2).
LMDEPLOY_NEEDS = [
    "lmdeploy==0.18.0", "fastapi==0.115.12", "starlette==0.46.2", "openai==2.8.1", "fire", "termcolor", "mmengine-lite", "addict",
    "yapf", "distro", "jiter", "partial-json-parser", "shortuuid", "pyzmq", "xgrammar", "apache-tvm-ffi==0.1.11",
]  # fmt: skip
# What a user's `pip install -e '.[gpu]'` resolves today (lmdeploy 0.18 allows it); the image has 5.17.
# sentencepiece: the image's 0.2.2 cannot read InternLM2's tokenizer.model; a user gets 0.2.3.
TRANSFORMERS_USER = ["transformers==5.24.0", "einops", "sentencepiece==0.2.3"]
LMDEPLOY_DROP = ("lmdeploy/turbomind/_turbomind", "lmdeploy/turbomind/lib64/libxgrammar.a")


def pip_download(requirement: str, dest: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", "-d", str(dest), requirement]  # fmt: skip
    for platform in PLATFORMS:
        command[-1:-1] = ["--platform", platform]
    subprocess.run(command, check=True)


def trim_lmdeploy(wheels: Path) -> None:
    wheel = next(wheels.glob("lmdeploy-*.whl"))
    trimmed = wheel.with_suffix(".trimmed")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if not item.filename.startswith(LMDEPLOY_DROP):
                dst.writestr(item, src.read(item.filename))
    trimmed.replace(wheel)  # RECORD still lists the dropped files; pip installs what is there


def jieba_wheel(wheels: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), f"jieba=={md.version('jieba')}"], check=True)


def embedder_fp16(dest: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from rag.ingest.embedder import model_location

    source = Path(model_location(""))
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("model.safetensors", "*.onnx", "onnx", "openvino"))
    weights = load_file(source / "model.safetensors")
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in weights.items()}, dest / "model.safetensors")


def split(items: list[Path], out: Path) -> list[Path]:
    parts: list[list[Path]] = [[]]
    size = 0
    for item in sorted(items, key=_size, reverse=True):
        if size + _size(item) > PART_BYTES and parts[-1]:
            parts.append([])
            size = 0
        parts[-1].append(item)
        size += _size(item)
    folders = []
    for k, members in enumerate(parts, start=1):
        folder = out / f"part{k}"
        folder.mkdir()
        for item in members:
            shutil.move(str(item), folder / item.name)
        folders.append(folder)
    return folders


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--internlm2-files", type=Path, help="a folder with InternLM2's remote code and tokenizer.model (bench/gpu/internlm2_files.sh)")
    args = parser.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    staging = OUT / "staging"
    wheels = staging / "wheels"
    wheels.mkdir(parents=True)
    for name in TEAMBOT_NEEDS:
        print("wheel", name, flush=True)
        pip_download(f"{name}=={md.version(name)}", wheels)
    for requirement in LMDEPLOY_NEEDS:
        print("wheel", requirement, flush=True)
        pip_download(requirement, wheels)
    trim_lmdeploy(wheels)
    jieba_wheel(wheels)
    embedder_fp16(staging / "minilm-fp16")
    items = list(wheels.iterdir()) + [staging / "minilm-fp16"]
    if args.internlm2_files:
        user = staging / "transformers-user"
        user.mkdir()
        for requirement in TRANSFORMERS_USER:
            pip_download(requirement, user)
        shutil.copytree(args.internlm2_files, staging / "internlm2-files")
        items += [user, staging / "internlm2-files"]
    for folder in split(items, OUT):
        print(f"{folder.relative_to(REPO)}: {_size(folder) / 1024 / 1024:.1f} MiB, {len(list(folder.iterdir()))} items")
    shutil.rmtree(staging)


if __name__ == "__main__":
    main()
