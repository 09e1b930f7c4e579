"""`teambot models pull`: a model downloaded from the Hugging Face hub or ModelScope into <data_dir>/models/.

Nothing half-written is ever seen under the final name: files arrive in
``<data_dir>/models/.pull/NAME/`` (a stable place, so a pull that was cut or killed resumes where
it stopped), each as ``FILE.part`` until its bytes match the hub's checksum, and the folder is
renamed to ``<data_dir>/models/NAME`` once every file is there and verified.

Hugging Face (``models.source = "huggingface"``): the file list, sizes and checksums come from
the hub's API (``model_info`` with ``files_metadata``: sha256 for LFS files, the git blob id for
the others); each file is fetched with huggingface_hub's ``http_get`` (Range requests from the
``.part`` file's length, its own retries on a cut connection, a tqdm bar with size and rate),
then checked by teambot: huggingface_hub checks only the length. ``HF_ENDPOINT`` picks a mirror;
``HF_TOKEN`` opens gated repositories (read from the environment only, never shown).

ModelScope (``models.source = "modelscope"``): modelscope's own ``snapshot_download`` (which
checks each file's sha256 itself) into the same staging folder; ``MODELSCOPE_ENDPOINT`` and
``MODELSCOPE_API_TOKEN`` are read by that client.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config.errors import ConfigError, TeambotError
from config.settings import Settings
from inference.model_catalog import CATALOG, find, pulled_folder

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

STAGING = ".pull"  # <data_dir>/models/.pull/NAME: downloads in progress
PART = ".part"  # a file still arriving, or not yet verified
COMMIT_MARK = ".commit"  # the commit the staged files belong to; another one starts the staging afresh
DISK_MARGIN = 64 * 1024 * 1024  # free space kept beside a download
HF_WEB = "https://huggingface.co"
MODELSCOPE_WEB = "https://modelscope.cn"
MODELSCOPE_INSTALL = "pip install modelscope"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as both hubs spell them


class PullError(TeambotError):
    """A model could not be downloaded, or its files did not verify."""


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the repository root
    size: int | None  # None: the hub did not say (then only the checksum is checked)
    sha256: str | None  # LFS files: the sha256 of the content
    blob_id: str | None  # other files: git's blob id, sha1 of "blob SIZE\0" + content


@dataclass(frozen=True)
class PullRequest:
    """What one `teambot models pull` fetches, and from where."""

    name: str  # the folder under <data_dir>/models/
    source: str  # huggingface or modelscope
    repository: str
    patterns: tuple[str, ...]  # empty: every file
    revision: str
    target: Path

    @property
    def staging(self) -> Path:
        return self.target.parent / STAGING / self.target.name

    def by_hand(self, files: list[str] | None = None) -> str:
        """What to download without teambot, and where to put it."""
        web = (
            f"{MODELSCOPE_WEB}/models/{self.repository}/files"
            if self.source == "modelscope"
            else f"{HF_WEB}/{self.repository}/tree/{self.revision}"
        )
        wanted = ", ".join(files or self.patterns) or "every file of the repository"
        return f"download {wanted} from {web} (or a mirror) on a machine with a route, and put the files in {self.target}/"


@dataclass(frozen=True)
class PullResult:
    request: PullRequest
    files: int
    bytes: int
    seconds: float
    already: bool  # the model was already pulled: nothing was downloaded


def plan(settings: Settings, name_or_repo: str, source: str | None = None, revision: str = "main") -> PullRequest:
    """A catalog short name or a repository ID (``owner/name``) as a download request."""
    source = source or settings.models.source
    models_dir = settings.models_dir
    model = find(name_or_repo)
    if model is not None:
        return PullRequest(model.name, source, model.repository(source), model.files, revision, pulled_folder(models_dir, model.name))
    repository = name_or_repo.strip().strip("/")
    parts = repository.split("/")
    if not REPO_ID.match(repository) or any(part.startswith(".") for part in parts):
        names = ", ".join(CATALOG)
        raise ConfigError(
            f"{name_or_repo!r} is neither a model teambot knows nor a repository ID (owner/name)",
            f"use one of {names}, or e.g. internlm/internlm2_5-1_8b-chat",
        )
    return PullRequest(parts[1], source, repository, (), revision, pulled_folder(models_dir, parts[1]))


def pull(request: PullRequest, progress: Progress = print) -> PullResult:
    started = time.monotonic()
    if request.target.exists():
        files = [p for p in request.target.rglob("*") if p.is_file()]
        return PullResult(request, len(files), sum(p.stat().st_size for p in files), 0.0, already=True)
    request.staging.mkdir(parents=True, exist_ok=True)
    if request.source == "modelscope":
        count, size = _pull_modelscope(request, progress)
    else:
        count, size = _pull_huggingface(request, progress)
    os.replace(request.staging, request.target)  # the one step that makes the model visible under its name
    _remove_if_empty(request.staging.parent)
    return PullResult(request, count, size, time.monotonic() - started, already=False)


# --- Hugging Face ---------------------------------------------------------------------------


def _pull_huggingface(request: PullRequest, progress: Progress) -> tuple[int, int]:
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not at huggingface_hub's import
    token = os.environ.get("HF_TOKEN") or False  # the environment only: False keeps a stored login out of it
    where = endpoint or HF_WEB
    progress(f"asking {where} for {request.repository} ({request.revision})")
    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(request.repository, revision=request.revision, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 (the hub client raises many kinds; each is told apart below)
        raise _hub_error(request, exc, where) from None
    commit = info.sha or request.revision
    files = _wanted(request, [RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None, s.blob_id) for s in info.siblings or []])
    _start_staging(request.staging, commit)
    _check_disk(request, files)
    total = sum(f.size or 0 for f in files)
    progress(f"pulling {len(files)} files ({size_text(total)}) of {request.repository} at {commit[:12]} into {request.target}")
    headers = build_hf_headers(token=token)
    for remote in files:
        final = request.staging / remote.path
        if final.is_file():
            continue  # fetched and verified by an earlier run
        part = final.with_name(final.name + PART)
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.is_file() else 0
        if remote.size is not None and have > remote.size:
            part.unlink()
            have = 0
        size = size_text(remote.size) if remote.size is not None else "size not listed"
        progress(f"{remote.path}: resuming at {size_text(have)} of {size}" if have else f"{remote.path} ({size})")
        url = hf_hub_url(request.repository, remote.path, revision=commit, endpoint=endpoint)
        try:
            with part.open("ab") as f:
                http_get(url, f, resume_size=have, headers=headers, expected_size=remote.size, displayed_filename=remote.path)
        except KeyboardInterrupt:
            raise PullError(
                f"interrupted: {size_text(part.stat().st_size)} of {remote.path} are kept in {part}", "run the same pull again to resume"
            ) from None
        except Exception as exc:  # noqa: BLE001
            raise _hub_error(request, exc, where, remote.path, kept=part) from None
        _verify(request, remote, part)
        part.rename(final)
    (request.staging / COMMIT_MARK).unlink()
    return len(files), total


def _wanted(request: PullRequest, files: list[RemoteFile]) -> list[RemoteFile]:
    for remote in files:  # a listing is written by the server: no path may leave the model's folder
        if remote.path.startswith("/") or ".." in remote.path.split("/"):
            raise PullError(f"{request.repository} lists a file outside its folder: {remote.path!r}", "nothing was downloaded; use another mirror")
    if not request.patterns:
        return [f for f in files if f.path != ".gitattributes"]
    chosen = [f for f in files if any(fnmatch.fnmatch(f.path, p) for p in request.patterns)]
    missing = [p for p in request.patterns if not any(fnmatch.fnmatch(f.path, p) for f in files)]
    if missing:
        similar = [f.path for f in files if Path(f.path).suffix == Path(missing[0]).suffix] or [f.path for f in files]
        raise PullError(
            f"{request.repository} has no file {missing[0]} (it has {', '.join(similar[:12]) or 'no files'})",
            f"the repository changed: download the file you want from it by hand into {request.target}/, "
            "or give inference.model_path a GGUF file you have",
        )
    return chosen


def _verify(request: PullRequest, remote: RemoteFile, part: Path) -> None:
    """The file's bytes against the hub's checksum; a file that does not match is removed."""
    if remote.sha256:
        kind, expected, actual = "sha256", remote.sha256, _sha256(part)
    elif remote.blob_id:
        kind, expected, actual = "git blob id", remote.blob_id, _git_blob_id(part)
    else:
        log.warning("%s of %s: the hub gave no checksum; only its length was checked", remote.path, request.repository)
        return
    if actual != expected:
        part.unlink()
        raise PullError(
            f"{remote.path} of {request.repository}: the downloaded bytes do not match the hub's {kind} "
            f"(expected {expected}, got {actual}); the file was removed",
            "run the pull again; if it fails the same way, the mirror (HF_ENDPOINT) serves other bytes than the hub lists",
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _git_blob_id(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _start_staging(staging: Path, commit: str) -> None:
    """Files staged for another commit cannot be resumed: they are dropped."""
    mark = staging / COMMIT_MARK
    if mark.is_file() and mark.read_text(encoding="utf-8").strip() != commit:
        shutil.rmtree(staging)
        staging.mkdir(parents=True)
    mark.write_text(commit, encoding="utf-8")


def _check_disk(request: PullRequest, files: list[RemoteFile]) -> None:
    needed = 0
    for remote in files:
        final = request.staging / remote.path
        part = final.with_name(final.name + PART)
        if not final.is_file() and remote.size is not None:
            needed += remote.size - (part.stat().st_size if part.is_file() else 0)
    free = shutil.disk_usage(request.staging).free
    if needed + DISK_MARGIN > free:
        raise PullError(
            f"not enough disk for {request.repository}: {size_text(needed)} to download, {size_text(free)} free in {request.staging.parent}",
            "free some space there, or set data_dir (TEAMBOT_DATA_DIR) to a disk with more room",
        )


def _hub_error(request: PullRequest, exc: Exception, where: str, file: str | None = None, kept: Path | None = None) -> PullError:
    from huggingface_hub.errors import GatedRepoError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, OfflineModeIsEnabled):
        return PullError("HF_HUB_OFFLINE is set, so the hub is not asked", "unset HF_HUB_OFFLINE for `teambot models pull`")
    if isinstance(exc, GatedRepoError) or status in (401, 403):
        hint = (
            "HF_TOKEN is set but is not granted access: accept the model's terms on its page"
            if os.environ.get("HF_TOKEN")
            else "set HF_TOKEN to a token of an account granted access"
        )
        return PullError(f"{request.repository} is gated or private at {where}", hint)
    if isinstance(exc, RevisionNotFoundError):
        return PullError(
            f"{request.repository} has no revision {request.revision!r} at {where}", "use --revision main or a commit that exists"
        )
    if isinstance(exc, RepositoryNotFoundError) or status == 404:
        return PullError(
            f"{where} has no repository {request.repository}" + (f" file {file}" if file else ""), "check the name (`teambot models list`)"
        )
    what = f"{file} of {request.repository}" if file else request.repository
    resume = (
        f"; the {size_text(kept.stat().st_size)} already downloaded are kept in {kept} and the next pull resumes there"
        if kept and kept.is_file()
        else ""
    )
    return PullError(
        f"cannot download {what} from {where}: {type(exc).__name__}: {_short(exc)}{resume}",
        f'check the route to {where} (a mirror: HF_ENDPOINT=https://hf-mirror.com; or models.source = "modelscope"), '
        f"or {request.by_hand([file] if file else None)}",
    )


# --- ModelScope -----------------------------------------------------------------------------


def _pull_modelscope(request: PullRequest, progress: Progress) -> tuple[int, int]:
    if importlib.util.find_spec("modelscope") is None:
        raise ConfigError(
            'models.source is "modelscope" but the modelscope client is not installed',
            f'run `{MODELSCOPE_INSTALL}`, or set models.source = "huggingface"',
        )
    from modelscope import snapshot_download

    where = os.environ.get("MODELSCOPE_ENDPOINT") or MODELSCOPE_WEB
    progress(f"pulling {request.repository} ({request.revision}) from {where} into {request.target}")
    try:
        snapshot_download(
            request.repository, revision=None if request.revision == "main" else request.revision,
            local_dir=str(request.staging), allow_patterns=list(request.patterns) or None,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 (modelscope raises many kinds; only a checksum failure is told apart)
        if "hash mismatch" in str(exc).lower():
            raise PullError(
                f"{request.repository} from ModelScope ({where}): the downloaded bytes do not match ModelScope's sha256 "
                f"({_short(exc)}); modelscope removed the file",
                "run the pull again; if it fails the same way, the server at MODELSCOPE_ENDPOINT serves other bytes than it lists",
            ) from None
        raise PullError(
            f"cannot download {request.repository} from ModelScope ({where}): {type(exc).__name__}: {_short(exc)}",
            f'check the route to {where} (MODELSCOPE_ENDPOINT; MODELSCOPE_API_TOKEN for a private model), or models.source = "huggingface", '
            f"or {request.by_hand()}",
        ) from None
    files = [p for p in request.staging.rglob("*") if p.is_file() and not _is_client_state(p, request.staging)]
    if not files:
        wanted = ", ".join(request.patterns) or "any file"
        raise PullError(
            f"ModelScope's {request.repository} has no {wanted}",
            "the repository changed: " + request.by_hand(),
        )
    return len(files), sum(p.stat().st_size for p in files)


def _is_client_state(path: Path, root: Path) -> bool:
    """modelscope's own bookkeeping beside the files (.msc, ._____temp, .mdl)."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


# --- helpers --------------------------------------------------------------------------------


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def size_text(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _short(exc: Exception) -> str:
    """The first lines of an error, on one line (hub clients put the cause on the second)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return "; ".join(lines[:3])[:400]
