"""`teambot quantize` without a GPU: calibration text from the knowledge base, and the clear errors.
(The quantization itself runs on the GPU: bench/gpu/, docs/benchmarks.md.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from config.errors import ConfigError
from config.settings import Settings
from inference.lmdeploy import gpu_problem, lmdeploy_installed
from inference.quantize import DATA_FREE, KNOWLEDGE, MIN_CALIB_SAMPLES, default_output, knowledge_texts, plan_calibration, quantize
from rag.ingest.embedder import model_location
from rag.store.manifest import Manifest
from tests.conftest import EXAMPLES, make_settings

TEAMBOT = str(Path(sys.executable).parent / "teambot")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """A real tokenizer that ships offline (MiniLM's WordPiece); the model's own is used on the GPU."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_location(""))


def texts_of(settings: Settings) -> list[str]:
    manifest = Manifest(settings.data_dir / "index.sqlite")
    try:
        return knowledge_texts(manifest, settings)
    finally:
        manifest.close()


def model_folder(folder: Path, hidden_size: int = 2048, intermediate_size: int = 8192) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"hidden_size": hidden_size, "intermediate_size": intermediate_size}))
    return folder


def test_calibration_samples_come_from_the_indexed_documents(indexed_settings: Settings, tokenizer: Any) -> None:
    texts = texts_of(indexed_settings)
    assert len(texts) == len(list(EXAMPLES.iterdir()))
    assert any("primary on-call" in t for t in texts) and any("报销" in t for t in texts)  # Chinese documents too
    plan = plan_calibration(KNOWLEDGE, texts, tokenizer, samples=8, seqlen=128)
    assert plan.dataset == KNOWLEDGE and len(plan.samples) == 8
    assert all(tuple(s.shape) == (1, 128) and str(s.dtype) == "torch.int64" for s in plan.samples)
    windows = [tuple(s[0].tolist()) for s in plan.samples]
    assert len(set(windows)) == 8  # distinct windows, spread over the text
    joined = [i for t in texts for i in tokenizer(t + "\n\n", add_special_tokens=False)["input_ids"]]
    assert list(windows[0]) == joined[:128] and list(windows[-1]) != joined[128:256]
    assert "8 samples of 128 tokens from 7 indexed documents" in plan.note


def test_a_small_knowledge_base_gives_what_it_has_and_then_falls_back_to_data_free(indexed_settings: Settings, tokenizer: Any) -> None:
    texts = texts_of(indexed_settings)
    tokens = sum(len(tokenizer(t + "\n\n", add_special_tokens=False)["input_ids"]) for t in texts)
    fills = tokens // 128
    assert MIN_CALIB_SAMPLES <= fills < 128, "the sample knowledge base should fill a few 128-token windows"
    partial = plan_calibration(KNOWLEDGE, texts, tokenizer, samples=128, seqlen=128)
    assert len(partial.samples) == fills and f"128 were asked for, the knowledge base fills {fills}" in partial.note
    too_little = plan_calibration(KNOWLEDGE, texts, tokenizer, samples=128, seqlen=tokens // 2)
    assert too_little.dataset == DATA_FREE and not too_little.samples
    assert f"{tokens:,} tokens in 7 indexed documents" in too_little.note and "data-free" in too_little.note
    assert "--calib-seqlen" in too_little.note and "wikitext2" in too_little.note
    assert plan_calibration(KNOWLEDGE, [], tokenizer, samples=16, seqlen=64).dataset == DATA_FREE  # nothing indexed yet


def test_other_calibration_choices(tokenizer: Any) -> None:
    assert plan_calibration("none", ["text"], tokenizer, 16, 64).dataset == DATA_FREE
    wikitext = plan_calibration("wikitext2", [], tokenizer, 16, 64)
    assert wikitext.dataset == "wikitext2" and "downloaded by lmdeploy" in wikitext.note
    with pytest.raises(ConfigError, match="unknown calibration dataset"):
        plan_calibration("my-corpus", [], tokenizer, 16, 64)


def test_changed_away_or_deleted_documents_are_skipped(tmp_path: Path, indexed_settings: Settings) -> None:
    data = Path(shutil.copytree(indexed_settings.data_dir, tmp_path / "data"))
    knowledge = Path(shutil.copytree(indexed_settings.rag.knowledge_dir, tmp_path / "knowledge"))
    settings = make_settings(data, knowledge)
    manifest = Manifest(data / "index.sqlite")
    try:
        with manifest._write() as db:  # the copied manifest still names the original folder
            db.execute("UPDATE files SET root = ?", (str(knowledge),))
        next(knowledge.glob("*.md")).unlink()
        assert len(knowledge_texts(manifest, settings)) == len(list(EXAMPLES.iterdir())) - 1
    finally:
        manifest.close()
    assert default_output(settings, "internlm/internlm2_5-1_8b-chat") == data / "models" / "internlm2_5-1_8b-chat-w4a16"


def test_bad_models_are_refused_before_any_work(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as caught:
        quantize(settings, str(tmp_path / "nowhere"), tmp_path / "out")
    assert "--model" in (caught.value.hint or "")
    gguf = tmp_path / "smol.gguf"
    gguf.write_bytes(b"GGUF" + bytes(16))
    with pytest.raises(ConfigError, match="GGUF file"):
        quantize(settings, str(gguf), tmp_path / "out")
    narrow = model_folder(tmp_path / "smollm2", hidden_size=576, intermediate_size=1536)  # SmolLM2-135M's widths
    with pytest.raises(ConfigError, match="--group-size 128 does not divide hidden_size = 576") as caught:
        quantize(settings, str(narrow), tmp_path / "out")
    assert caught.value.hint == "use --group-size 64"
    with pytest.raises(ConfigError, match="unknown calibration dataset"):
        quantize(settings, str(narrow), tmp_path / "out", group_size=64, calib_dataset="wiki")


@pytest.mark.skipif(lmdeploy_installed() and gpu_problem() is None, reason="this machine can quantize")
def test_the_command_says_what_is_missing(settings: Settings, tmp_path: Path) -> None:
    model = model_folder(tmp_path / "internlm2_5-1_8b-chat")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEAMBOT_")} | {"TEAMBOT_DATA_DIR": str(settings.data_dir)}
    result = subprocess.run([TEAMBOT, "quantize", "--model", str(model)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    expected = "lmdeploy is not installed" if not lmdeploy_installed() else "quantization needs a CUDA GPU"
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (settings.data_dir / "models" / "internlm2_5-1_8b-chat-w4a16").exists()  # nothing half-made is left


# Stands in for lmdeploy lite (it needs a CUDA GPU): records what auto_awq was asked, writes a weights file.
FAKE_CALIBRATE = "def get_calib_loaders(*args, **kwargs):\n    raise RuntimeError('teambot supplies the samples')\n"
FAKE_AUTO_AWQ = """
import json, os
from pathlib import Path

def auto_awq(model, work_dir, **options):
    Path(work_dir, "model.safetensors").write_bytes(b"0" * 10)
    Path(work_dir, "auto_awq.json").write_text(json.dumps({"model": model, "pid": os.getpid(), **options}))
"""


def test_a_model_folders_code_runs_only_with_trust_remote_code_and_only_in_a_child(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inference.quantize
    from tests.remote_code import SECRETS, leaked, read_marker, remote_code_folder

    site = tmp_path / "site"
    (site / "lmdeploy" / "lite" / "apis").mkdir(parents=True)
    for package in ("lmdeploy", "lmdeploy/lite", "lmdeploy/lite/apis"):
        (site / package / "__init__.py").write_text("")
    (site / "lmdeploy" / "lite" / "apis" / "calibrate.py").write_text(FAKE_CALIBRATE)
    (site / "lmdeploy" / "lite" / "apis" / "auto_awq.py").write_text(FAKE_AUTO_AWQ)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    monkeypatch.setattr(inference.quantize, "check_can_quantize", lambda: None)  # this machine may have no GPU; nothing here uses one
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    model, marker, out = tmp_path / "model", tmp_path / "ran.json", tmp_path / "out"
    remote_code_folder(model, marker)

    with pytest.raises(ConfigError, match="ships Python code of its own") as caught:
        quantize(settings, str(model), out, group_size=64, calib_dataset="none", progress=lambda line: None)
    assert not marker.exists() and not out.exists()  # refused before anything of the model was loaded
    assert f"{model / 'tokenizer_config.json'} (auto_map)" in caught.value.message and "--trust-remote-code" in caught.value.hint

    result = quantize(settings, str(model), out, group_size=64, calib_dataset="none", trust_remote_code=True, progress=lambda line: None)
    ran = read_marker(marker)
    assert ran["pid"] != os.getpid() and leaked(ran["environ"]) == []  # the tokenizer's code ran in a child without the secrets
    asked = json.loads((out / "auto_awq.json").read_text())
    assert asked["trust_remote_code"] is True and asked["pid"] == ran["pid"] and asked["w_group_size"] == 64
    assert result.bytes_after == 10 and "data-free" in result.calibration
