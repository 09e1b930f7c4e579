"""`teambot models pull` beside huggingface_hub's own ``hf_hub_download``, against the local hub stand-in
(tests/fake_hub.py, over loopback): a GGUF the size of the course model's Q4_K_M (1.2 GB by default).

    .venv/bin/python -m bench.model_pull [--mb 1200] [--kill-at 0.6]

For each side, in a child process each (as a user runs them):
- a whole download: seconds and MB/s (teambot's includes its sha256 check of the file);
- a download killed (SIGKILL) once ``--kill-at`` of the file has reached the disk, then run again:
  the bytes the hub sends in the second run, and its seconds.
Writes bench/results/model-pull.json.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import save
from inference.model_catalog import CATALOG
from tests.fake_hub import FakeHub

GGUF = CATALOG["internlm2_5-1_8b-chat-q4_k_m"]
TEAMBOT = str(Path(sys.executable).parent / "teambot")
BASELINE = (
    "import sys; from huggingface_hub import hf_hub_download; "
    "print(hf_hub_download(sys.argv[1], sys.argv[2], local_dir=sys.argv[3]))"
)  # fmt: skip


def teambot_command(work: Path) -> list[str]:
    return [TEAMBOT, "models", "pull", GGUF.name]


def baseline_command(work: Path) -> list[str]:
    return [sys.executable, "-c", BASELINE, GGUF.huggingface, GGUF.gguf_file, str(work / "hf-local")]


def partial_bytes(work: Path) -> int:
    """Bytes of the file on disk so far: teambot's .part, or huggingface_hub's .incomplete."""
    found = [p for p in work.rglob("*") if p.is_file() and p.name.endswith((".part", ".incomplete"))]
    return max((p.stat().st_size for p in found), default=0)


def env_for(work: Path, hub: FakeHub) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEAMBOT_", "HF_"))}
    return env | {"TEAMBOT_DATA_DIR": str(work / "data"), "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_CACHE": str(work / "hf-cache")}


def whole(hub: FakeHub, command: Callable[[Path], list[str]], size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        work = Path(tmp)
        sent = hub.body_bytes
        started = time.monotonic()
        done = subprocess.run(command(work), env=env_for(work, hub), capture_output=True, text=True, check=False)
        seconds = time.monotonic() - started
        assert done.returncode == 0, done.stderr[-2000:]
        return {"seconds": round(seconds, 2), "mb_per_s": round(size / 1e6 / seconds, 1), "bytes_sent": hub.body_bytes - sent}


def killed_then_again(hub: FakeHub, command: Callable[[Path], list[str]], size: int, kill_at: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        work = Path(tmp)
        env = env_for(work, hub)
        hub.release.clear()
        hub.hold_at[GGUF.gguf_file] = int(size * kill_at) + 16 * 1024 * 1024  # the transfer stalls past the kill point
        process = subprocess.Popen(command(work), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while partial_bytes(work) < size * kill_at:
            assert process.poll() is None and time.monotonic() < deadline, "the download never got that far"
            time.sleep(0.05)
        on_disk = partial_bytes(work)
        process.send_signal(signal.SIGKILL)
        process.wait()
        hub.release.set()
        sent = hub.body_bytes
        started = time.monotonic()
        again = subprocess.run(command(work), env=env, capture_output=True, text=True, check=False)
        seconds = time.monotonic() - started
        assert again.returncode == 0, again.stderr[-2000:]
        return {"on_disk_when_killed": on_disk, "second_run_bytes_sent": hub.body_bytes - sent, "second_run_seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1200, help="size of the GGUF, MB")
    parser.add_argument("--kill-at", type=float, default=0.6, help="share of the file on disk when the first run is killed")
    args = parser.parse_args()
    size = args.mb * 1_000_000
    content = b"GGUF" + os.urandom(size - 4)
    hub = FakeHub({GGUF.huggingface: {GGUF.gguf_file: content}})
    hub.warm()  # the stand-in's own hashing stays out of the timings
    try:
        results: dict[str, Any] = {"file_mb": args.mb, "kill_at": args.kill_at}
        for name, command in (("huggingface_hub", baseline_command), ("teambot", teambot_command)):  # baseline first, then teambot
            results[name] = {"whole": whole(hub, command, size), "killed": killed_then_again(hub, command, size, args.kill_at)}
            print(name, results[name], flush=True)
    finally:
        hub.release.set()
        hub.close()
    print(save("model-pull", results))


if __name__ == "__main__":
    main()
