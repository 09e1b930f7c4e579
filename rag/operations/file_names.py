"""The names teambot writes files under in a knowledge folder, whoever gives them: an upload's
name (made safe, ``safe_name``) and a name read back from the shared uploads in PostgreSQL
(accepted only if it is already safe, ``stored_name_problem``): anyone who can write that
database must not be able to write outside a collection's folder on the replicas."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import PurePosixPath

from config.errors import TeambotError
from config.settings import COLLECTION_NAME, COLLECTION_NAME_RULE
from rag.ingest.documents import SUPPORTED_SUFFIXES

# File systems allow 255 bytes a name (ext4, XFS, APFS, NTFS's 255 UTF-16 units), and UTF-8 takes 3 a
# Chinese character. Longer names are cut to this, with a tag of the full name's hash so that two
# long names stay two files.
MAX_NAME_BYTES = 200
_UNSAFE = re.compile(r"[^\w.\- ()\u3400-\u9fff]+")
SAFE_NAME_RULE = f"letters, digits, spaces and . - _ ( ), not starting with a dot, at most {MAX_NAME_BYTES} bytes"


class UploadError(TeambotError):
    """An uploaded file or an admin request was refused; nothing was changed."""


def safe_name(filename: str) -> str:
    """A file name that stays inside its folder: no directories, no leading dots, tame characters,
    at most MAX_NAME_BYTES in UTF-8 (cut at a character, the extension kept, a hash tag added)."""
    name = _UNSAFE.sub("_", PurePosixPath(filename.replace("\\", "/")).name).strip(" .")
    if not name:
        raise UploadError(f"{filename!r} is not a usable file name", "rename the file and upload it again")
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    stem, suffix = os.path.splitext(name)
    suffix = suffix[:16]  # a longer one is no type teambot reads, and is refused as such
    tag = "~" + hashlib.sha256(name.encode()).hexdigest()[:8]
    room = MAX_NAME_BYTES - len(suffix.encode()) - len(tag)
    return stem.encode()[:room].decode(errors="ignore").rstrip(" .") + tag + suffix


def stored_name_problem(collection: str, name: str) -> str | None:
    """Why a shared upload's collection and name may not be written into a folder (None: they may).
    The name is a path relative to the collection's folder ("sub/nested.md", as `teambot state
    migrate` stores a subfolder's file) whose every part is one ``safe_name`` leaves unchanged,
    and whose type teambot reads."""
    if not COLLECTION_NAME.match(collection):
        return f"the collection name is not {COLLECTION_NAME_RULE}"
    parts = name.split("/")
    for part in parts:
        try:
            if safe_name(part) != part:
                return f"{part!r} is not a safe file or folder name ({SAFE_NAME_RULE})"
        except UploadError:
            return f"{part!r} is not a safe file or folder name ({SAFE_NAME_RULE})"
    suffix = PurePosixPath(parts[-1]).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        return f"teambot does not read '{suffix or 'files without an extension'}'"
    return None
