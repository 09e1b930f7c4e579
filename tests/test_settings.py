from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import app
from config.errors import ConfigError
from config.settings import LMDeploySettings, load_settings


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.config_file is None
    assert settings.data_dir == tmp_path / "data"
    assert settings.inference.backend == "auto"
    assert settings.inference.kv_cache_type == "q8_0"
    assert settings.inference.lmdeploy.quant_policy == 8  # W4A16 weights with an int8 KV cache on a GPU
    assert settings.inference.lmdeploy.model_path == tmp_path / "data" / "models" / "internlm2_5-1_8b-chat-w4a16"
    assert settings.collection_dirs() == {"default": tmp_path / "knowledge"}


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "config/teambot.toml", '[rag]\ntop_k = 7\nmin_score = 0.4\n[rag.collections]\nhr = "hr-docs"\n')
    monkeypatch.setenv("TEAMBOT_RAG__TOP_K", "9")
    monkeypatch.setenv("TEAMBOT_DATA_DIR", str(tmp_path / "elsewhere"))
    settings = load_settings()
    assert settings.config_file == Path("config/teambot.toml")
    assert settings.rag.top_k == 9  # the environment wins
    assert settings.rag.min_score == 0.4  # the file fills the rest
    assert settings.data_dir == tmp_path / "elsewhere"
    assert settings.collection_dirs()["hr"] == tmp_path / "hr-docs"
    assert load_settings(config).rag.top_k == 9


@pytest.mark.parametrize(("text", "expected"), [("4", 4), ("0", 0), (" 8 ", 8)])
def test_kv_cache_policy_from_the_environment(monkeypatch: pytest.MonkeyPatch, text: str, expected: int) -> None:
    # The GPU run found this: an environment value is text, and "8" was refused as "not 0, 4 or 8".
    monkeypatch.setenv("TEAMBOT_INFERENCE__LMDEPLOY__QUANT_POLICY", text)
    assert load_settings().inference.lmdeploy.quant_policy == expected


@pytest.mark.parametrize(("text", "expected"), [("false", None), ("", None), ("~/models/m", Path("~/models/m").expanduser())])
def test_trust_remote_code_names_a_model_folder(monkeypatch: pytest.MonkeyPatch, text: str, expected: object) -> None:
    monkeypatch.setenv("TEAMBOT_INFERENCE__LMDEPLOY__TRUST_REMOTE_CODE", text)
    assert load_settings().inference.lmdeploy.trust_remote_code == expected
    assert LMDeploySettings().trust_remote_code is None  # by default no model's code runs


@pytest.mark.parametrize("text", ["auto", "true", "1"])
def test_trust_remote_code_for_any_folder_is_refused(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("TEAMBOT_INFERENCE__LMDEPLOY__TRUST_REMOTE_CODE", text)
    with pytest.raises(ConfigError, match="inference.lmdeploy.trust_remote_code") as caught:
        load_settings()
    assert "name the model folder whose own code may run" in str(caught.value)


def test_an_unknown_kv_cache_policy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAMBOT_INFERENCE__LMDEPLOY__QUANT_POLICY", "5")
    with pytest.raises(ConfigError, match="inference.lmdeploy.quant_policy"):
        load_settings()


def test_repository_config_file_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(repo)
    settings = load_settings()
    assert settings.config_file == Path("config/teambot.toml")
    assert settings.rag.knowledge_dir == repo / "examples" / "knowledge"


def test_wrong_value_names_key_value_and_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAMBOT_INFERENCE__BACKEND", "gpu")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "inference.backend" in message and "'gpu'" in message
    assert "'auto', 'llamacpp', 'lmdeploy' or 'external'" in message


def test_out_of_range_value_in_file(tmp_path: Path) -> None:
    config = write(tmp_path / "t.toml", "[rag]\nmin_score = 3\n")
    with pytest.raises(ConfigError, match=r"rag\.min_score' = 3 .*less than or equal to 1"):
        load_settings(config)


def test_misspelt_key_is_reported(tmp_path: Path) -> None:
    config = write(tmp_path / "t.toml", "[rag]\nchunk_sise = 100\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'rag\.chunk_sise'"):
        load_settings(config)


def test_external_backend_needs_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAMBOT_INFERENCE__BACKEND", "external")
    with pytest.raises(ConfigError, match="inference.base_url"):
        load_settings()


def test_secrets_are_refused_in_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "t.toml", 'slack_bot_token = "xoxb-123"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert "slack_bot_token" in str(caught.value) and "SLACK_BOT_TOKEN" in caught.value.hint
    config = write(tmp_path / "u.toml", '[inference]\napi_key = "sk-1"\n')
    with pytest.raises(ConfigError, match="inference.api_key"):
        load_settings(config)


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    config = write(tmp_path / "t.toml", "[rag]\ntop_k = = 3\n")
    with pytest.raises(ConfigError, match=r"t\.toml: not valid TOML.*line 2"):
        load_settings(config)


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_bad_collection_name_in_file(tmp_path: Path) -> None:
    config = write(tmp_path / "t.toml", '[rag.collections]\n"Bad Name!" = "x"\n')
    with pytest.raises(ConfigError, match="Bad Name!"):
        load_settings(config)


def test_config_command_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-very-secret-token")
    monkeypatch.setenv("TEAMBOT_LLM_API_KEY", "sk-also-secret")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    assert "very-secret" not in result.output and "also-secret" not in result.output
    shown = json.loads(result.stdout)
    assert shown["SLACK_BOT_TOKEN"] == "(set, hidden)"
    assert shown["DISCORD_BOT_TOKEN"] == "(not set)"
    assert shown["rag"]["top_k"] == 4


def test_config_command_hides_credentials_in_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_API_URL", "https://proxy-user:proxy-pass@slack-proxy.example/api/")
    monkeypatch.setenv("TEAMBOT_RAG__CHROMA_URL", "http://chroma-user:chroma-pass@chroma.example:8000")
    monkeypatch.setenv("TEAMBOT_INFERENCE__BACKEND", "external")
    monkeypatch.setenv("TEAMBOT_INFERENCE__BASE_URL", "http://llm-key@llm.example:23333/v1")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    for secret in ("proxy-pass", "proxy-user", "chroma-pass", "chroma-user", "llm-key"):
        assert secret not in result.output
    shown = json.loads(result.stdout)
    assert shown["slack_api_url"] == "https://(hidden)@slack-proxy.example/api/"
    assert shown["rag"]["chroma_url"] == "http://(hidden)@chroma.example:8000"
    assert shown["inference"]["base_url"] == "http://(hidden)@llm.example:23333/v1"


def test_cli_bad_config_exits_2_with_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAMBOT_RAG__TOP_K", "many")
    result = CliRunner().invoke(app, ["search", "anything"])
    assert result.exit_code == 2
    assert "rag.top_k" in result.stderr and "'many'" in result.stderr
    assert "Traceback" not in result.output


def test_with_values_sets_dotted_keys_checked_like_the_file() -> None:
    from config.settings import with_values

    settings = load_settings(None)
    varied = with_values(settings, {"inference.kv_cache_type": "f16", "inference.lmdeploy.quant_policy": "4", "rag.min_score": "0.45"})
    assert (varied.inference.kv_cache_type, varied.inference.lmdeploy.quant_policy, varied.rag.min_score) == ("f16", 4, 0.45)
    assert settings.inference.kv_cache_type == "q8_0"  # the original is untouched
    with pytest.raises(ConfigError, match=r"setting 'inference.kv_cache_type' = 'q2' is not allowed: Input should be 'f16', 'q8_0' or 'q4_0'"):
        with_values(settings, {"inference.kv_cache_type": "q2"})
    with pytest.raises(ConfigError, match="no such setting in this section: nope"):
        with_values(settings, {"rag.nope": "1"})


def test_models_source_from_the_file_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().models.source == "huggingface"
    config = write(tmp_path / "teambot.toml", '[models]\nsource = "modelscope"\n')
    assert load_settings(config).models.source == "modelscope"
    monkeypatch.setenv("TEAMBOT_MODELS__SOURCE", "huggingface")
    assert load_settings(config).models.source == "huggingface"
    monkeypatch.setenv("TEAMBOT_MODELS__SOURCE", "github")
    with pytest.raises(ConfigError, match="models.source"):
        load_settings(config)


def test_inference_model_path_keeps_a_short_name_and_resolves_a_path(tmp_path: Path) -> None:
    named = load_settings(inference={"model_path": "internlm2_5-1_8b-chat-q4_k_m"})
    assert str(named.inference.model_path) == "internlm2_5-1_8b-chat-q4_k_m"  # a model name, resolved by model_catalog
    for path in ("models/x.gguf", "x.gguf", "./internlm2_5-1_8b-chat-q4_k_m"):
        assert load_settings(inference={"model_path": path}).inference.model_path == (tmp_path / path).resolve()
