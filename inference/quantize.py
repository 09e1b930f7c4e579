"""`teambot quantize`: W4A16 (AWQ, 4-bit weights in groups, 16-bit activations) through lmdeploy lite.

AWQ needs calibration text to see which weights matter. lmdeploy's own loaders download public
datasets (wikitext2, c4, ...); teambot uses the team's own indexed documents instead, so the
quantized model is tuned to the text it will read and nothing is downloaded. The documents are
tokenized with the model's tokenizer, joined, and cut into ``calib_samples`` windows of
``calib_seqlen`` tokens spread over the whole text.

Too little text (fewer than MIN_CALIB_SAMPLES windows): teambot says so and falls back to
data-free quantization (lmdeploy's ``calib_samples=0``: plain round-to-nearest per group, no
activation-aware scaling), which needs no text. ``--calib-dataset wikitext2`` (or another of
lmdeploy's names) uses lmdeploy's download instead, where there is network.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from config.errors import ConfigError, TeambotError
from config.settings import Settings
from inference import internlm2
from inference.lmdeploy import GPU_INSTALL, check_model, gpu_problem, lmdeploy_installed
from inference.model_catalog import quantize_source
from inference.model_check import check_remote_code, installed, known_trouble, needs_remote_code, read_config
from inference.process import child_env, describe_exit
from rag.ingest.documents import DocumentError, read_document
from rag.ingest.indexer import folder_of
from rag.store.manifest import Manifest

log = logging.getLogger(__name__)

DEFAULT_MODEL = "internlm/internlm2_5-1_8b-chat"
KNOWLEDGE = "knowledge"  # --calib-dataset: the indexed documents (the default)
DATA_FREE = "none"  # --calib-dataset: no calibration text at all
# lmdeploy.lite.apis.calibrate accepts only these names; teambot's samples go in under the first.
LMDEPLOY_DATASETS = ("wikitext2", "c4", "pileval", "gsm8k", "neuralmagic_calibration", "open-platypus", "openwebtext")
MIN_CALIB_SAMPLES = 4
PULL_NAME = "internlm2_5-1_8b-chat"  # the catalog's safetensors model (inference.model_catalog)
MODEL_HINT = f"give --model a Hugging Face-format model folder, {PULL_NAME} after `teambot models pull {PULL_NAME}`, or a hub ID like {DEFAULT_MODEL}"
TRUST_OPT_IN = "pass --trust-remote-code"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")

Progress = Callable[[str], None]


class QuantizeError(TeambotError):
    """Quantization could not run or did not finish."""


@dataclass(frozen=True)
class CalibrationPlan:
    dataset: str  # KNOWLEDGE, DATA_FREE or one of LMDEPLOY_DATASETS
    samples: list[Any]  # [1, seqlen] token tensors, for KNOWLEDGE
    seqlen: int
    note: str  # one line for the user: where the calibration text comes from


@dataclass(frozen=True)
class AwqJob:
    """What lmdeploy lite quantizes, and how: the part of `teambot quantize` that loads the model's tokenizer and weights."""

    model: Path  # the folder lmdeploy quantizes: the model, or its Llama-layout copy
    out: Path
    calib_dataset: str
    calib_samples: int
    calib_seqlen: int
    group_size: int
    batch_size: int
    trust_remote_code: bool


@dataclass(frozen=True)
class QuantizeResult:
    model: Path  # the source model folder
    out: Path
    bytes_before: int
    bytes_after: int
    seconds: float
    calibration: str


def knowledge_texts(manifest: Manifest, settings: Settings) -> list[str]:
    """The text of every indexed document, read again from its file (changed or gone files are skipped)."""
    texts = []
    for record in manifest.indexed():
        try:
            document = read_document(folder_of(settings, record.root) / record.path)
        except (DocumentError, OSError) as exc:
            log.info("calibration skips %s: %s", record.path, exc)
            continue
        texts.append("\n\n".join(part.text for part in document.parts))
    return texts


def calibration_windows(texts: Sequence[str], tokenizer: Any, samples: int, seqlen: int) -> tuple[list[list[int]], int]:
    """Up to ``samples`` windows of ``seqlen`` token ids spread evenly over the joined texts; also the token count."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"])
    fits = len(ids) // seqlen
    take = min(samples, fits)
    if take == 0:
        return [], len(ids)
    stride = fits / take  # spread the windows over the whole text rather than taking its start
    starts = [int(k * stride) * seqlen for k in range(take)]
    return [ids[s : s + seqlen] for s in starts], len(ids)


def check_dataset(dataset: str) -> None:
    if dataset not in (KNOWLEDGE, DATA_FREE, *LMDEPLOY_DATASETS):
        names = ", ".join((KNOWLEDGE, DATA_FREE, *LMDEPLOY_DATASETS))
        raise ConfigError(f"unknown calibration dataset --calib-dataset {dataset!r}", f"use one of {names}")


def plan_calibration(dataset: str, texts: Sequence[str], tokenizer: Any, samples: int, seqlen: int) -> CalibrationPlan:
    if dataset == DATA_FREE:
        return CalibrationPlan(DATA_FREE, [], seqlen, "data-free (no calibration text, as asked)")
    if dataset in LMDEPLOY_DATASETS:
        return CalibrationPlan(dataset, [], seqlen, f"lmdeploy's {dataset} dataset ({samples} x {seqlen} tokens; downloaded by lmdeploy)")
    check_dataset(dataset)
    windows, tokens = calibration_windows(texts, tokenizer, samples, seqlen)
    if len(windows) < MIN_CALIB_SAMPLES:
        return CalibrationPlan(
            DATA_FREE, [], seqlen,
            f"the knowledge base has {tokens:,} tokens in {len(texts)} indexed documents, too little for {MIN_CALIB_SAMPLES} "
            f"samples of {seqlen} tokens: falling back to data-free quantization (round-to-nearest, no activation-aware "
            f"scaling). Index more documents, lower --calib-seqlen, or pass --calib-dataset wikitext2 where there is network",
        )  # fmt: skip
    import torch

    tensors = [torch.tensor([window], dtype=torch.long) for window in windows]
    note = f"{len(tensors)} samples of {seqlen} tokens from {len(texts)} indexed documents ({tokens:,} tokens)"
    if len(tensors) < samples:
        note += f"; {samples} were asked for, the knowledge base fills {len(tensors)}"
    return CalibrationPlan(KNOWLEDGE, tensors, seqlen, note)


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def default_output(settings: Settings, model: str) -> Path:
    return settings.models_dir / f"{Path(model.rstrip('/')).name.lower()}-w4a16"


def local_model(model: str, models_dir: Path) -> Path | None:
    """The model folder ``model`` names (a folder, or a short name `teambot models pull` fetched), checked;
    None for a hub model ID (like internlm/internlm2_5-1_8b-chat)."""
    pulled = quantize_source(model, models_dir)
    path = pulled or Path(model).expanduser()
    if not path.exists() and model.count("/") == 1 and not model.startswith(("/", ".", "~")):
        return None
    check_model(path, MODEL_HINT)
    return path.resolve()


def download_model(model: str) -> Path:
    """A model ID fetched by lmdeploy (from the Hugging Face hub, or ModelScope with LMDEPLOY_USE_MODELSCOPE)."""
    from lmdeploy.utils import get_model

    try:
        return Path(get_model(model))
    except Exception as exc:  # the hub clients raise many kinds; all mean the same here
        raise QuantizeError(
            f"model {model} cannot be downloaded: {exc}",
            f"run `teambot models pull {model}` (it says what to fetch by hand where there is no route; models.source = \"modelscope\" "
            f"for ModelScope), then give --model {model.rstrip('/').split('/')[-1]}",
        ) from exc


def check_group_size(model: Path, group_size: int) -> None:
    """AWQ quantizes each weight row in groups: the layer widths must be multiples of the group size."""
    config = read_config(model)
    for key in ("hidden_size", "intermediate_size"):
        width = config.get(key)
        if isinstance(width, int) and width % group_size:
            smaller = [g for g in (64, 32) if width % g == 0 and g < group_size]
            hint = f"use --group-size {smaller[0]}" if smaller else "this model's widths do not suit group-wise 4-bit quantization"
            raise ConfigError(f"--group-size {group_size} does not divide {key} = {width} of {model.name}", hint)


def check_source(model: Path, group_size: int, trust_remote_code: bool) -> None:
    """The model suits --group-size, an InternLM2 config converts, and the model ships no code of its own
    unless --trust-remote-code (InternLM2's is converted away)."""
    config = read_config(model)
    if internlm2.is_internlm2(config):
        internlm2.llama_config(config, model / "config.json")  # a malformed config is refused before any work
    else:
        check_remote_code(model, trust_remote_code, TRUST_OPT_IN)
    check_group_size(model, group_size)


def check_can_quantize() -> None:
    if not lmdeploy_installed():
        raise ConfigError("lmdeploy is not installed, and `teambot quantize` runs lmdeploy lite", GPU_INSTALL)
    if (problem := gpu_problem()) is not None:
        raise ConfigError(f"quantization needs a CUDA GPU: {problem}", "run `teambot quantize` on a GPU machine and copy the output folder")


def quantize(
    settings: Settings,
    model: str,
    out: Path,
    *,
    group_size: int = 128,
    calib_samples: int = 128,
    calib_seqlen: int = 2048,
    calib_dataset: str = KNOWLEDGE,
    batch_size: int = 1,
    trust_remote_code: bool = False,
    progress: Progress = print,
) -> QuantizeResult:
    """W4A16 AWQ through lmdeploy lite's auto_awq, with calibration text from the knowledge base.

    A model that ships code of its own (``auto_map``) is refused unless ``trust_remote_code``; its
    code then runs in a child process with the LLM server's environment, never in this one."""
    started = time.monotonic()
    check_dataset(calib_dataset)
    source = local_model(model, settings.models_dir)
    if source is not None:
        check_source(source, group_size, trust_remote_code)
    check_can_quantize()
    if source is None:
        progress(f"fetching {model}")
        source = download_model(model)
        check_source(source, group_size, trust_remote_code)
    progress(f"model: {source}")
    if out.resolve() == source:
        raise ConfigError(f"--out {out} is the model folder itself", "give another folder; the source model is kept")
    out.mkdir(parents=True, exist_ok=True)
    texts: list[str] = []
    if calib_dataset == KNOWLEDGE:
        progress("reading the indexed documents for calibration text")
        manifest = Manifest(Manifest.database(settings.state_url, settings.data_dir))
        try:
            texts = knowledge_texts(manifest, settings)
        finally:
            manifest.close()
    working = source  # what lmdeploy quantizes: the model, or its Llama-layout copy
    converted: Path | None = None
    if internlm2.is_internlm2(read_config(source)):
        for line in known_trouble(installed("transformers"), installed("sentencepiece")):
            progress(line)
        # The copy sits beside the output (the same disk); it is removed when quantization ends.
        converted = working = internlm2.convert(source, out.parent / f".{out.name}.llama-layout", progress, check_texts=texts[:50])
    try:
        job = AwqJob(working, out, calib_dataset, calib_samples, calib_seqlen, group_size, batch_size, needs_remote_code(working))
        note = quantize_in_child(job, texts) if job.trust_remote_code else calibrate_and_quantize(job, texts, progress)
        if converted is not None:
            marker = json.loads((converted / internlm2.MARKER).read_text(encoding="utf-8"))
            (out / internlm2.MARKER).write_text(json.dumps({**marker, "quantized": f"AWQ W4A16, group size {group_size}"}, indent=2), encoding="utf-8")
    finally:
        if converted is not None:
            shutil.rmtree(converted, ignore_errors=True)
    before, after = weights_bytes(source), weights_bytes(out)
    return QuantizeResult(source, out, before, after, time.monotonic() - started, note)


def calibrate_and_quantize(job: AwqJob, texts: Sequence[str], progress: Progress) -> str:
    """Loads the model's tokenizer, cuts the calibration samples and runs auto_awq; returns the calibration note."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(job.model), trust_remote_code=job.trust_remote_code)
    plan = plan_calibration(job.calib_dataset, texts, tokenizer, job.calib_samples, job.calib_seqlen)
    progress(f"calibration: {plan.note}")
    _run_auto_awq(job.model, job.out, plan, job.calib_samples, job.group_size, job.batch_size, job.trust_remote_code, progress)
    return plan.note


def quantize_in_child(job: AwqJob, texts: Sequence[str]) -> str:
    """``calibrate_and_quantize`` in a child process with the LLM server's environment (``child_env``: none of
    teambot's tokens), for a model whose own code runs; its output goes to this terminal."""
    with tempfile.TemporaryDirectory(prefix="teambot-quantize-") as work:
        request, reply = Path(work) / "job.json", Path(work) / "reply.json"
        request.write_text(json.dumps({"job": asdict(job), "texts": list(texts)}, default=str), encoding="utf-8")
        env = child_env(os.environ, {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
        done = subprocess.run([sys.executable, "-m", "inference.quantize", str(request), str(reply)], env=env, check=False)
        answer = json.loads(reply.read_text(encoding="utf-8")) if reply.is_file() else {}
    if "note" in answer:
        return answer["note"]
    if "message" in answer:
        raise QuantizeError(answer["message"], answer["hint"])
    raise QuantizeError(f"quantizing {job.model} in a child process failed ({describe_exit(done.returncode)})", "see the output above")


def main(argv: list[str]) -> int:
    """`python -m inference.quantize JOB REPLY`: the child of ``quantize_in_child``."""
    request, reply = Path(argv[0]), Path(argv[1])
    given = json.loads(request.read_text(encoding="utf-8"))
    job = AwqJob(**{**given["job"], "model": Path(given["job"]["model"]), "out": Path(given["job"]["out"])})
    try:
        answer = {"note": calibrate_and_quantize(job, given["texts"], lambda line: print(line, flush=True))}
    except TeambotError as exc:
        answer = {"message": exc.message, "hint": exc.hint}
    reply.write_text(json.dumps(answer), encoding="utf-8")
    return 0 if "note" in answer else 1


def _run_auto_awq(
    source: Path, out: Path, plan: CalibrationPlan, calib_samples: int, group_size: int, batch_size: int, trust_remote_code: bool, progress: Progress
) -> None:
    import lmdeploy.lite.apis.calibrate as calibrate
    from lmdeploy.lite.apis.auto_awq import auto_awq

    dataset = plan.dataset
    samples = 0 if dataset == DATA_FREE else calib_samples
    own_loader = calibrate.get_calib_loaders
    if dataset == KNOWLEDGE:
        # lmdeploy asks get_calib_loaders for [1, seqlen] token tensors; ours come from the knowledge base.
        calibrate.get_calib_loaders = lambda *args, **kwargs: plan.samples
        dataset, samples = LMDEPLOY_DATASETS[0], len(plan.samples)
    progress(f"quantizing to 4-bit weights in groups of {group_size} (lmdeploy prints each layer)")
    try:
        auto_awq(
            str(source), work_dir=str(out), calib_dataset=dataset, calib_samples=samples, calib_seqlen=plan.seqlen,
            batch_size=batch_size, w_bits=4, w_group_size=group_size, trust_remote_code=trust_remote_code,
        )  # fmt: skip
    except (RuntimeError, ValueError, AssertionError, KeyError) as exc:
        raise QuantizeError(f"lmdeploy lite could not quantize {source}: {exc}", "see the output above; lmdeploy supports the models its docs list") from exc
    finally:
        calibrate.get_calib_loaders = own_loader


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
