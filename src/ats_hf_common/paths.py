"""Telling local paths from Hub ids, and the policy for what a command writes (standard library only)."""

import importlib.util
import os
import re
from pathlib import Path

# What a Hub repo id can look like: "name" or "namespace/name" (letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def is_local_path(source: str | os.PathLike) -> bool:
    """Whether `source` names a local file or folder rather than a Hub repo id: it exists, or it cannot be a Hub id
    ('./x', '/x', '~/x', 'a/b/c'), or its parent folder exists ('outputs/model' where outputs/ exists)."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists() or not _HUB_ID.fullmatch(text):
        return True
    return "/" in text and path.parent.is_dir()


def check_source(source: str | os.PathLike, what: str = "model") -> None:
    """Raise `FileNotFoundError` naming `what` when `source` is a local path that does not exist (so that it is not
    reported as a malformed Hub id); Hub ids pass unchecked."""
    if is_local_path(source) and not Path(os.fspath(source)).expanduser().exists():
        raise FileNotFoundError(f"{what} folder {os.fspath(source)!r} does not exist")


def check_target(
    path: str | os.PathLike, what: str, overwrite: bool, *, is_file: bool = False, overwrite_option: str = "--overwrite"
) -> None:
    """The one policy for what a command writes: a folder target must be absent or empty, a file target absent,
    unless `overwrite`; a file where a folder is wanted (or the reverse) is always an error. Raises
    `FileExistsError` naming `what` and the way out (`overwrite_option`)."""
    target = Path(os.fspath(path)).expanduser()
    if not target.exists():
        return
    if is_file and target.is_dir():
        raise FileExistsError(f"{what} {os.fspath(path)!r} is a folder; give a file name")
    if not is_file and not target.is_dir():
        raise FileExistsError(f"{what} {os.fspath(path)!r} is a file; give a folder (empty or new)")
    if (is_file or any(target.iterdir())) and not overwrite:
        held = "exists" if is_file else "is not empty"
        raise FileExistsError(f"{what} {os.fspath(path)!r} {held}; pass {overwrite_option} to replace what is there")


def default_model_dir() -> Path:
    """The folder of the model embedded in the ats_hf package, found without importing ats_hf (which loads torch)."""
    spec = importlib.util.find_spec("ats_hf")
    return Path(spec.submodule_search_locations[0]) / "data" / "default_model"


__all__ = ["check_source", "check_target", "default_model_dir", "is_local_path"]
