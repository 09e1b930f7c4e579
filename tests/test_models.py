"""`teambot models pull` and `models list` against a local stand-in of the Hugging Face hub (tests/fake_hub.py,
chosen with HF_ENDPOINT): a tiny random-weight InternLM2 model and a GGUF are pulled, a cut connection
resumes, a pull stopped by an outage resumes in the next run, bad bytes are refused and removed, and a
machine without a route is told what to download by hand. Short names resolve for llama.cpp and quantize."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

from config.errors import ConfigError
from config.settings import load_settings
from inference.model_catalog import CATALOG, llamacpp_model, quantize_source
from inference.server import make_server
from tests.conftest import TEST_CONFIG, closed_port
from tests.fake_hub import FakeHub, FakeModelScope, sha256
from tests.test_internlm2 import internlm2_folder

TEAMBOT = str(Path(sys.executable).parent / "teambot")
GGUF = CATALOG["internlm2_5-1_8b-chat-q4_k_m"]
SAFETENSORS = CATALOG["internlm2_5-1_8b-chat"]
# huggingface_hub writes a download in chunks of this size: a cut resumes from the last whole chunk.
CHUNK = DOWNLOAD_CHUNK_SIZE
TOKEN = "hf_test_token_that_must_never_be_printed"


@pytest.fixture(scope="module")
def tiny_internlm2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder, _ = internlm2_folder(tmp_path_factory.mktemp("hub") / "internlm2_5-1_8b-chat")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def hub(tiny_internlm2: dict[str, bytes]) -> Iterator[FakeHub]:
    gguf = b"GGUF" + os.urandom(2 * CHUNK + 1234)  # more than one of huggingface_hub's write chunks
    fake = FakeHub({
        SAFETENSORS.huggingface: dict(tiny_internlm2),
        GGUF.huggingface: {GGUF.gguf_file: gguf, "README.md": b"# gguf\n", "internlm2_5-1_8b-chat-q8_0.gguf": b"GGUF" + bytes(64)},
    })  # fmt: skip
    yield fake
    fake.close()


def env_for(data_dir: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEAMBOT_", "HF_", "MODELSCOPE_"))}
    return env | {"TEAMBOT_DATA_DIR": str(data_dir), "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1"} | extra


def teambot(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TEAMBOT, *args], check=False, env=env, capture_output=True, text=True, timeout=180)


def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "models"


def test_pull_fetches_the_tiny_internlm2_model_verified_and_quantize_finds_it(
    tmp_path: Path, hub: FakeHub, tiny_internlm2: dict[str, bytes]
) -> None:
    env = env_for(tmp_path / "data", hub.url)
    before = teambot(["quantize", "--model", "internlm2_5-1_8b-chat"], env)
    assert before.returncode == 2 and "teambot models pull internlm2_5-1_8b-chat" in before.stderr, before.stderr

    pulled = teambot(["models", "pull", "internlm2_5-1_8b-chat"], env | {"TQDM_POSITION": "-1"})  # bars on, as in a terminal
    assert pulled.returncode == 0, pulled.stderr
    target = models_dir(tmp_path) / "internlm2_5-1_8b-chat"
    assert {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()} == tiny_internlm2
    assert not (models_dir(tmp_path) / ".pull").exists()  # nothing staged is left behind
    assert f"pulled {SAFETENSORS.huggingface} from huggingface" in pulled.stdout
    assert "B/s)" in pulled.stdout and "model.safetensors (" in pulled.stderr  # a line for each file, and the rate at the end
    assert "kB/s" in pulled.stderr or "MB/s" in pulled.stderr  # huggingface_hub's bar: size and rate
    # The listing at the pinned commit, then each file at that commit; LFS files through the CDN redirect.
    assert any(p.startswith(f"/api/models/{SAFETENSORS.huggingface}/revision/main") for _, p, _, _ in hub.requests)
    assert hub.ranges(sha256(tiny_internlm2["model.safetensors"])) == [None]

    again = teambot(["models", "pull", "internlm2_5-1_8b-chat"], env)
    assert again.returncode == 0 and "already pulled" in again.stdout
    assert quantize_source("internlm2_5-1_8b-chat", models_dir(tmp_path)) == target
    assert quantize_source(SAFETENSORS.huggingface, models_dir(tmp_path)) == target  # the default hub ID uses the pull too
    after = teambot(["quantize", "--model", "internlm2_5-1_8b-chat", "--group-size", "64"], env)  # the tiny model is 64 wide
    assert "models pull" not in after.stderr and "Traceback" not in after.stderr
    assert "lmdeploy is not installed" in after.stderr or "CUDA GPU" in after.stderr or after.returncode == 0


def test_a_cut_connection_resumes_with_a_range_request(tmp_path: Path, hub: FakeHub) -> None:
    content = hub.repos[GGUF.huggingface][GGUF.gguf_file]
    hub.cut_once[GGUF.gguf_file] = CHUNK + CHUNK // 2
    pulled = teambot(["models", "pull", GGUF.name], env_for(tmp_path / "data", hub.url))
    assert pulled.returncode == 0, pulled.stderr
    assert hub.ranges(sha256(content)) == [None, f"bytes={CHUNK}-"]  # the rest, not the whole file again
    path = models_dir(tmp_path) / GGUF.name / GGUF.gguf_file
    assert path.read_bytes() == content
    assert sorted(p.name for p in path.parent.iterdir()) == [GGUF.gguf_file]  # only the catalog's file, not the q8_0 or README
    assert llamacpp_model(GGUF.name, models_dir(tmp_path)) == path


def test_a_pull_stopped_by_an_outage_resumes_in_the_next_run(tmp_path: Path, hub: FakeHub) -> None:
    content = hub.repos[GGUF.huggingface][GGUF.gguf_file]
    hub.cut_once[GGUF.gguf_file] = CHUNK + CHUNK // 2
    hub.down_after_cut = True
    env = env_for(tmp_path / "data", hub.url)
    failed = teambot(["models", "pull", GGUF.name], env)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "next pull resumes" in failed.stderr and GGUF.gguf_file in failed.stderr
    target = models_dir(tmp_path) / GGUF.name
    assert not target.exists()  # nothing under the final name until it is whole and verified
    part = models_dir(tmp_path) / ".pull" / GGUF.name / (GGUF.gguf_file + ".part")
    assert part.stat().st_size == CHUNK  # what had arrived, in whole chunks

    hub.down = hub.down_after_cut = False
    resumed = teambot(["models", "pull", GGUF.name], env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at 10.5 MB" in resumed.stderr
    assert hub.ranges(sha256(content))[-1] == f"bytes={CHUNK}-"
    assert (target / GGUF.gguf_file).read_bytes() == content
    assert not (models_dir(tmp_path) / ".pull").exists()


def test_a_killed_pull_resumes_where_it_stopped(tmp_path: Path, hub: FakeHub) -> None:
    content = hub.repos[GGUF.huggingface][GGUF.gguf_file]
    hub.hold_at[GGUF.gguf_file] = CHUNK + 1000  # the transfer stalls past the first chunk
    env = env_for(tmp_path / "data", hub.url)
    part = models_dir(tmp_path) / ".pull" / GGUF.name / (GGUF.gguf_file + ".part")
    process = subprocess.Popen([TEAMBOT, "models", "pull", GGUF.name], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (part.is_file() and part.stat().st_size >= CHUNK):
            assert process.poll() is None and time.monotonic() < deadline, "the pull never wrote its first chunk"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)  # no chance to clean up
        process.wait(timeout=60)
    finally:
        hub.release.set()
        if process.poll() is None:
            process.kill()
    kept = part.stat().st_size
    assert kept >= CHUNK and not (models_dir(tmp_path) / GGUF.name).exists()

    resumed = teambot(["models", "pull", GGUF.name], env)
    assert resumed.returncode == 0, resumed.stderr
    assert hub.ranges(sha256(content)) == [None, f"bytes={kept}-"]
    assert (models_dir(tmp_path) / GGUF.name / GGUF.gguf_file).read_bytes() == content


def test_bytes_that_do_not_match_the_checksum_are_refused_and_removed(
    tmp_path: Path, hub: FakeHub, tiny_internlm2: dict[str, bytes]
) -> None:
    hub.corrupt = {"model.safetensors"}
    failed = teambot(["models", "pull", SAFETENSORS.huggingface], env_for(tmp_path / "data", hub.url))
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "model.safetensors" in failed.stderr and "do not match the hub's sha256" in failed.stderr
    assert sha256(tiny_internlm2["model.safetensors"]) in failed.stderr and "was removed" in failed.stderr
    assert not (models_dir(tmp_path) / "internlm2_5-1_8b-chat").exists()
    staged = models_dir(tmp_path) / ".pull" / "internlm2_5-1_8b-chat"
    assert not list(staged.glob("model.safetensors*"))  # the bad file is gone, not left to be resumed

    hub.corrupt = {"config.json"}  # a small (non-LFS) file is checked against its git blob id
    failed = teambot(["models", "pull", "internlm2_5-1_8b-chat"], env_for(tmp_path / "other-data", hub.url))
    assert failed.returncode == 1 and "config.json" in failed.stderr and "git blob id" in failed.stderr


def test_no_route_names_the_repository_the_file_and_the_folder(tmp_path: Path) -> None:
    failed = teambot(["models", "pull", GGUF.name], env_for(tmp_path / "data", f"http://127.0.0.1:{closed_port()}"))
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    target = models_dir(tmp_path) / GGUF.name
    for needed in (GGUF.huggingface, GGUF.gguf_file, f"put the files in {target}/", "HF_ENDPOINT", "modelscope"):
        assert needed in failed.stderr, needed
    assert not target.exists()


def test_a_gated_repository_takes_the_token_from_the_environment_and_never_shows_it(tmp_path: Path, hub: FakeHub) -> None:
    hub.token = TOKEN
    env = env_for(tmp_path / "data", hub.url)
    refused = teambot(["models", "pull", GGUF.name], env)
    assert refused.returncode == 1 and "gated" in refused.stderr and "set HF_TOKEN" in refused.stderr
    pulled = teambot(["models", "pull", GGUF.name], env | {"HF_TOKEN": TOKEN})
    assert pulled.returncode == 0, pulled.stderr
    assert TOKEN not in pulled.stdout + pulled.stderr + refused.stderr
    assert all(auth is None for _, p, _, auth in hub.requests if p.startswith("/cdn/"))  # the token stays on the hub, not its CDN
    assert any(auth == f"Bearer {TOKEN}" for _, p, _, auth in hub.requests if p.startswith("/api/"))
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "data" / "logs").glob("*"))
    assert TOKEN not in logs


def test_too_little_disk_is_said_before_anything_is_downloaded(tmp_path: Path, hub: FakeHub) -> None:
    hub.listed_size[GGUF.gguf_file] = 10**17  # 100 PB
    failed = teambot(["models", "pull", GGUF.name], env_for(tmp_path / "data", hub.url))
    assert failed.returncode == 1 and "not enough disk" in failed.stderr and "TEAMBOT_DATA_DIR" in failed.stderr
    assert not any(m == "GET" and p.startswith("/cdn/") for m, p, _, _ in hub.requests)


def test_a_catalog_file_the_repository_no_longer_has_is_named(tmp_path: Path, hub: FakeHub) -> None:
    del hub.repos[GGUF.huggingface][GGUF.gguf_file]
    failed = teambot(["models", "pull", GGUF.name], env_for(tmp_path / "data", hub.url))
    assert failed.returncode == 1 and f"has no file {GGUF.gguf_file}" in failed.stderr
    assert "internlm2_5-1_8b-chat-q8_0.gguf" in failed.stderr  # what it has instead


def test_unknown_names_and_repositories(tmp_path: Path, hub: FakeHub) -> None:
    env = env_for(tmp_path / "data", hub.url)
    unknown = teambot(["models", "pull", "llama-70b"], env)
    assert unknown.returncode == 2 and "internlm2_5-1_8b-chat-q4_k_m" in unknown.stderr
    outside = teambot(["models", "pull", "someone/.."], env)  # would name a folder outside <data_dir>/models
    assert outside.returncode == 2 and "neither a model teambot knows nor a repository ID" in outside.stderr
    assert not hub.requests
    missing = teambot(["models", "pull", "nobody/nothing"], env)
    assert missing.returncode == 1 and "has no repository nobody/nothing" in missing.stderr


def test_models_list_shows_the_shipped_model_and_what_is_pulled(tmp_path: Path, hub: FakeHub) -> None:
    env = env_for(tmp_path / "data", hub.url)
    assert teambot(["models", "pull", GGUF.name], env).returncode == 0
    listed = teambot(["models", "list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    import json

    rows = {row["name"]: row for row in json.loads(listed.stdout)["models"]}
    assert rows["smollm2-135m"]["path"] and rows["smollm2-135m"]["path"].endswith(".gguf")
    assert rows[GGUF.name]["path"] == str(models_dir(tmp_path) / GGUF.name / GGUF.gguf_file)
    assert (
        rows["internlm2_5-1_8b-chat"]["path"] is None
        and rows["internlm2_5-1_8b-chat"]["repository"] == f"huggingface:{SAFETENSORS.huggingface}"
    )
    on_modelscope = teambot(["models", "list", "--json"], env | {"TEAMBOT_MODELS__SOURCE": "modelscope"})
    rows = {row["name"]: row for row in json.loads(on_modelscope.stdout)["models"]}
    assert rows[GGUF.name]["repository"] == f"modelscope:{GGUF.modelscope}"


# --- short names in the settings ----------------------------------------------------------------


def test_a_short_name_in_inference_model_path_resolves_to_the_pulled_gguf(tmp_path: Path) -> None:
    settings = load_settings(TEST_CONFIG, data_dir=str(tmp_path / "data"), inference={"backend": "llamacpp", "model_path": GGUF.name})
    assert str(settings.inference.model_path) == GGUF.name  # kept as written, not taken for a file in the working directory
    with pytest.raises(ConfigError) as caught:
        make_server(settings)
    assert f"teambot models pull {GGUF.name}" in caught.value.hint
    path = settings.models_dir / GGUF.name / GGUF.gguf_file
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GGUF" + bytes(16))
    assert make_server(settings).model_path == path  # type: ignore[attr-defined]
    assert make_server(
        load_settings(TEST_CONFIG, data_dir=str(tmp_path / "data"), inference={"backend": "llamacpp"})
    ).model_path.name.endswith(".gguf")  # type: ignore[attr-defined]

    with pytest.raises(ConfigError, match="not a model teambot knows"):
        llamacpp_model("llama-70b", settings.models_dir)
    with pytest.raises(ConfigError, match="safetensors folder"):
        llamacpp_model("internlm2_5-1_8b-chat", settings.models_dir)


# --- ModelScope ------------------------------------------------------------------------------------


@pytest.fixture
def modelscope(hub: FakeHub) -> Iterator[FakeModelScope]:
    """The same GGUF and tiny InternLM2 model on a ModelScope stand-in, under ModelScope's repository IDs."""
    pytest.importorskip("modelscope")
    fake = FakeModelScope({
        GGUF.modelscope: dict(hub.repos[GGUF.huggingface]), SAFETENSORS.modelscope: dict(hub.repos[SAFETENSORS.huggingface]),
    })  # fmt: skip
    yield fake
    fake.close()


def modelscope_env(tmp_path: Path, hub: FakeHub, endpoint: str) -> dict[str, str]:
    return env_for(
        tmp_path / "data",
        hub.url,
        TEAMBOT_MODELS__SOURCE="modelscope",
        MODELSCOPE_ENDPOINT=endpoint,
        MODELSCOPE_CACHE=str(tmp_path / "ms-cache"),
    )


def test_modelscope_pulls_through_its_own_client_when_the_setting_says_so(tmp_path: Path, hub: FakeHub, modelscope: FakeModelScope) -> None:
    env = modelscope_env(tmp_path, hub, modelscope.url)
    pulled = teambot(["models", "pull", GGUF.name], env)
    assert pulled.returncode == 0, pulled.stderr
    target = models_dir(tmp_path) / GGUF.name
    assert (target / GGUF.gguf_file).read_bytes() == hub.repos[GGUF.huggingface][GGUF.gguf_file]
    assert [p.name for p in target.iterdir() if not p.name.startswith(".")] == [GGUF.gguf_file]
    assert f"pulled {GGUF.modelscope} from modelscope" in pulled.stdout
    assert ("GET", f"/api/v1/models/{GGUF.modelscope}/repo?Revision=master&FilePath={GGUF.gguf_file}") in modelscope.requests
    assert not hub.requests and not (models_dir(tmp_path) / ".pull").exists()
    assert llamacpp_model(GGUF.name, models_dir(tmp_path)) == target / GGUF.gguf_file

    by_option = teambot(
        ["models", "pull", "internlm2_5-1_8b-chat", "--source", "modelscope"], env | {"TEAMBOT_MODELS__SOURCE": "huggingface"}
    )
    assert by_option.returncode == 0, by_option.stderr
    assert (models_dir(tmp_path) / "internlm2_5-1_8b-chat" / "model.safetensors").read_bytes() == hub.repos[SAFETENSORS.huggingface][
        "model.safetensors"
    ]


def test_modelscope_bytes_that_do_not_match_are_refused(tmp_path: Path, hub: FakeHub, modelscope: FakeModelScope) -> None:
    modelscope.corrupt = {GGUF.gguf_file}
    failed = teambot(["models", "pull", GGUF.name], modelscope_env(tmp_path, hub, modelscope.url))
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "do not match ModelScope's sha256" in failed.stderr and GGUF.gguf_file in failed.stderr
    assert not (models_dir(tmp_path) / GGUF.name).exists()
    assert not list((models_dir(tmp_path) / ".pull").rglob("*.gguf"))


def test_modelscope_without_a_route_says_what_to_fetch(tmp_path: Path, hub: FakeHub) -> None:
    pytest.importorskip("modelscope")
    env = modelscope_env(tmp_path, hub, f"http://127.0.0.1:{closed_port()}")
    failed = teambot(["models", "pull", GGUF.name], env)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    target = models_dir(tmp_path) / GGUF.name
    for needed in (GGUF.modelscope, "ModelScope", GGUF.gguf_file, f"put the files in {target}/", "modelscope.cn/models/"):
        assert needed in failed.stderr, needed
    assert not target.exists()
    assert not hub.requests  # the Hugging Face stand-in was never asked
