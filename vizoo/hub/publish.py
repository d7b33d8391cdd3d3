"""Uploading an export folder to the Hugging Face Hub, and downloading one, through ``huggingface_hub``.

``push_folder`` refuses any folder that does not load back exactly (:func:`vizoo.hub.loading.verify_folder`) and
fills the repository id into the model card's loading snippet. ``pull`` downloads a repository into the Hub cache
(or a folder), verifies it, and leaves no partial or corrupted file behind when something fails. The endpoint,
cache and offline switch are huggingface_hub's usual ones (``HF_ENDPOINT``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``,
the token from ``HF_TOKEN`` or ``huggingface-cli login``).
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from vizoo.hub.card import PLACEHOLDER_REPO
from vizoo.hub.folder import (
    CARD_NAME,
    CONFIG_NAME,
    OWN_FILES,
    WEIGHTS_NAME,
    check_output_folder,
    move_into_place,
)
from vizoo.hub.loading import remove_from_cache, verify_folder

_logger = logging.getLogger(__name__)


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Verify an export folder, then upload it to ``repo_id`` (created if needed).

    Args:
        folder: a folder written by ``vizoo hub export`` / ``vizoo convert``.
        repo_id: ``ORG/NAME`` on the Hub.
        token: a Hub token; None uses huggingface_hub's usual places (``HF_TOKEN``, the saved login).
        private: create the repository as private.
        revision: the branch to commit to (default: main).
        commit_message: the commit message.
        endpoint: the Hub endpoint; None uses ``HF_ENDPOINT`` / huggingface.co.

    Returns:
        The URL of the commit.

    Raises:
        ValueError / FileNotFoundError: the folder does not load back (nothing is uploaded).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must look like 'ORG/NAME', got {repo_id!r}.")
    try:
        verify_folder(folder)
    except (ValueError, FileNotFoundError) as err:
        raise type(err)(f"refusing to push {folder}: {err}") from err

    operations = []
    for name in OWN_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name == CARD_NAME:
            operations.append(CommitOperationAdd(name, path.read_text().replace(PLACEHOLDER_REPO, repo_id).encode()))
        else:
            operations.append(CommitOperationAdd(name, str(path)))
    extra = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in OWN_FILES)
    if extra:
        _logger.warning("not uploading files that are not part of an export: %s", extra)

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message or f"Upload {repo_id.split('/')[1]} (vizoo hub push)",
        revision=revision,
    )
    return info.commit_url


def _clean_incomplete(repo_id: str, cache_dir: str | Path | None) -> None:
    """Remove huggingface_hub's ``*.incomplete`` partial downloads of one repository from the cache."""
    from huggingface_hub import constants

    root = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "blobs"
    for partial in root.glob("*.incomplete") if root.is_dir() else ():
        partial.unlink(missing_ok=True)


def pull(
    repo_id: str,
    out_dir: str | Path | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Download a repository's export files into the Hub cache, verify them, and optionally copy them to a folder.

    Args:
        repo_id: ``ORG/NAME`` (``ORG/NAME@REV`` is accepted too).
        out_dir: copy the verified folder here (written atomically); None leaves it in the cache only.
        revision: branch, tag or commit.
        cache_dir: the Hub cache (default: ``HF_HUB_CACHE``).
        overwrite: replace an existing ``out_dir``.

    Returns:
        The folder holding the files (the cache snapshot, or ``out_dir``).

    Raises:
        FileNotFoundError: the repository or a file is missing (or not cached while offline).
        ValueError: a downloaded file is truncated or corrupted (it is removed from the cache), or the folder does
            not load back.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError


    if "@" in repo_id and revision is None:
        repo_id, revision = repo_id.split("@", 1)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        check_output_folder(out, overwrite)
    try:
        paths = {}
        for name in OWN_FILES:
            try:
                paths[name] = Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir))
            except LocalEntryNotFoundError:
                raise  # a subclass of EntryNotFoundError: not cached while offline, handled below
            except EntryNotFoundError:
                if name != CARD_NAME:
                    raise FileNotFoundError(f"{repo_id} has no {name}; is it a timm/vizoo export?") from None
        snapshot = paths[CONFIG_NAME].parent
    except LocalEntryNotFoundError as err:
        _clean_incomplete(repo_id, cache_dir)
        raise FileNotFoundError(
            f"{repo_id}: a file is not in the Hub cache and cannot be downloaded now (HF_HUB_OFFLINE=1, or the "
            f"Hub is unreachable): {str(err).splitlines()[0]}"
        ) from err
    except (HfHubHTTPError, OSError) as err:
        _clean_incomplete(repo_id, cache_dir)
        if isinstance(err, FileNotFoundError):
            raise
        raise FileNotFoundError(f"downloading {repo_id} failed and nothing partial was kept: {err}") from err
    try:
        verify_folder(snapshot)
    except ValueError as err:
        if "safetensors" in str(err):
            remove_from_cache(snapshot / WEIGHTS_NAME)
            raise ValueError(f"{err} The file was removed from the Hub cache.") from err
        raise
    if out is None:
        return snapshot
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for name in OWN_FILES:
            if (snapshot / name).is_file():
                shutil.copyfile(snapshot / name, tmp / name)
        move_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
