"""A model folder whose tokenizer is code of its own (``auto_map``), built in a temporary folder.

Importing its ``tokenization_probe.py`` writes a marker file: the process id and the environment
the code ran with. Tests set teambot's secrets in the environment and read the marker to see
whether the model's code ran at all, where, and what it could read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SECRETS = {
    "SLACK_BOT_TOKEN": "xoxb-probe-71c2",
    "DISCORD_BOT_TOKEN": "discord-probe-5e0a",
    "TEAMBOT_ADMIN_TOKEN": "admin-probe-3f9d1c0b",
}

PROBE_CODE = """
import json, os
from transformers import PreTrainedTokenizerFast

with open({marker!r}, "w") as f:
    json.dump({{"pid": os.getpid(), "environ": dict(os.environ)}}, f)


class ProbeTokenizer(PreTrainedTokenizerFast):
    pass
"""


def remote_code_folder(folder: Path, marker: Path) -> Path:
    """A model folder (config.json, tokenizer files) whose tokenizer class is tokenization_probe.ProbeTokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{chr(c): c - 94 for c in range(97, 123)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(str(folder))
    config_path = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config |= {"auto_map": {"AutoTokenizer": [None, "tokenization_probe.ProbeTokenizer"]}, "tokenizer_class": "ProbeTokenizer"}
    config_path.write_text(json.dumps(tokenizer_config))
    (folder / "tokenization_probe.py").write_text(PROBE_CODE.format(marker=str(marker)))
    config = {"architectures": ["ProbeForCausalLM"], "vocab_size": len(vocab), "hidden_size": 64, "intermediate_size": 128}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def read_marker(marker: Path) -> dict[str, Any]:
    return json.loads(marker.read_text())


def leaked(environ: dict[str, str]) -> list[str]:
    """The names of teambot's secrets (and platform or admin variables) the model's code could read."""
    return sorted(name for name, value in environ.items() if value in SECRETS.values() or name.startswith(("SLACK_", "DISCORD_", "TEAMBOT_")))
