"""Hugging Face hub ids as checkpoints: ``OWNER/NAME``, ``hf-hub:OWNER/NAME`` and ``OWNER/NAME@REVISION``.

An id is resolved by huggingface_hub to the few files the weight door reads (the weights, ``config.json``; the EMA
file only when asked), all from one commit, in huggingface_hub's cache: ``HF_HOME`` / ``HF_HUB_CACHE`` say where
it is and ``HF_HUB_OFFLINE=1`` keeps it to the cache. The result is the snapshot directory
(``models--OWNER--NAME/snapshots/<commit>/``), which the door then reads like any model directory. A local path
of the same name always wins (the door looks there first). huggingface_hub is imported only when an id is used.
This module imports nothing of the project: the door (checkpoint.py) calls it and turns a HubError into its
CheckpointError.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

HUB_PREFIX = "hf-hub:"
HF_CONFIG_FILE = "config.json"
# a name ending like this is a file someone meant to give, never a hub repository
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".pkl", ".npz", ".json", ".tar", ".zip")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class HubError(RuntimeError):
    """A Hugging Face id that cannot be used; the message says why and how to fix it."""


@dataclass(frozen=True)
class HubRef:
    """A repository on the hub and the revision asked for (None: the default branch)."""

    repo_id: str
    revision: Optional[str] = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class HubCheckpoint:
    """What an id resolved to: the commit, its snapshot directory in the cache and the files taken from it."""

    ref: HubRef
    commit: str
    directory: Path
    files: tuple[str, ...]

    def describe(self) -> str:
        """One line for the load report: the id, the revision, the commit and the files."""
        return (f"Hugging Face hub model {self.ref.repo_id}, revision {self.ref.revision or 'main'} "
                f"(commit {self.commit[:12]}): {', '.join(self.files)} from {self.directory}")


def parse_hub_id(spec: str) -> Optional[HubRef]:
    """The hub reference `spec` names, or None when it reads as a local path instead.

    ``hf-hub:`` marks an id explicitly (then ``hf-hub:NAME`` without an owner is allowed too). Without it a spec
    is an id only when it is ``OWNER/NAME`` or ``OWNER/NAME@REVISION`` and does not end like a file (.pth, ...).
    """
    s = str(spec)
    explicit = s.startswith(HUB_PREFIX)
    if explicit:
        s = s[len(HUB_PREFIX):]
    repo, at, revision = s.partition("@")
    if at and not revision:
        if explicit:
            raise HubError(f"{spec}: empty revision after '@' (write OWNER/NAME@REVISION, e.g. @main)")
        return None
    if _ID.fullmatch(repo) is None and not (explicit and _NAME.fullmatch(repo)):
        if explicit:
            raise HubError(f"{spec}: not a Hugging Face model id (expected hf-hub:OWNER/NAME or "
                                  "hf-hub:OWNER/NAME@REVISION; letters, digits, '-', '_' and '.')")
        return None
    if not explicit and repo.lower().endswith(FILE_SUFFIXES):
        return None
    if "--" in repo or ".." in repo or repo.endswith(".git"):
        if explicit:
            raise HubError(f"{spec}: not a valid Hugging Face repository name ('--', '..' and a '.git' "
                                  "ending are not allowed)")
        return None
    return HubRef(repo, revision or None)


def fetch_command(ref: HubRef, files: tuple[str, ...]) -> str:
    """The `hf download` command that puts `files` of `ref` into the cache."""
    rev = f" --revision {ref.revision}" if ref.revision else ""
    return f"hf download {ref.repo_id} {' '.join(files)}{rev}"


class _NotCached(Exception):
    """hf_hub_download found no copy in the cache and may not (offline) or cannot (no network) download one."""


def resolve(ref: HubRef, weights: tuple[str, ...], hint: str = "") -> HubCheckpoint:
    """Bring the files the door needs for `ref` into the cache (or find them there) and return where they are.

    Weights: the first of `weights` (in the door's order, e.g. model.safetensors, pytorch_model.bin; or the EMA
    file) the repository has (offline: the cache has); then config.json from the same commit. `hint` ends the
    error when the repository has none of them. Each call asks huggingface_hub (its cache first, nothing kept
    here): a run's read asks once (`checkpoint.CheckpointReads`), and its run record once more, to name the
    snapshot it started from.
    """
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as e:  # a dependency of timm, and of ours; absent only in a stripped install
        raise HubError(f"{ref}: a Hugging Face model id needs the huggingface_hub package "
                              "(pip install huggingface_hub), or give a local directory") from e
    path, not_cached = None, []
    for name in weights:  # the first the repository has, as the door reads a directory
        try:
            path = _download(ref, name, ref.revision)
        except _NotCached:
            not_cached.append(name)
            continue
        if path is not None:
            break
    if path is None and not_cached:
        raise _not_cached_error(ref, not_cached[0], (HF_CONFIG_FILE, not_cached[0]))
    if path is None:
        raise HubError(f"{ref}: the Hugging Face repository has none of the weight files {', '.join(weights)}"
                       + (f" ({hint})" if hint else ""))
    directory, commit = path.parent, path.parent.name
    files = [path.name]
    # config.json from the same commit; a repository may lack it (our own .safetensors carry their config)
    try:
        config = _download(ref, HF_CONFIG_FILE, commit)
    except _NotCached:
        from huggingface_hub import try_to_load_from_cache

        # absent, not merely uncached, when hf_hub_download once recorded it under .no_exist/<commit>/
        cached = try_to_load_from_cache(ref.repo_id, HF_CONFIG_FILE, revision=commit)
        if cached is None or isinstance(cached, str):
            raise _not_cached_error(ref, HF_CONFIG_FILE, (HF_CONFIG_FILE, path.name)) from None
        config = None
    if config is not None:
        files.insert(0, HF_CONFIG_FILE)
    return HubCheckpoint(ref, commit, directory, tuple(files))


def _not_cached_error(ref: HubRef, filename: str, needed: tuple[str, ...]) -> HubError:
    """What to do when `filename` of `ref` is neither in the cache nor downloadable now."""
    from huggingface_hub import constants

    where = constants.HF_HUB_CACHE
    if constants.is_offline_mode():
        why = f"is not in the Hugging Face cache ({where}) and HF_HUB_OFFLINE is set, so nothing is downloaded"
        fix = f"fetch it once with network: {fetch_command(ref, needed)} (or unset HF_HUB_OFFLINE)"
    else:
        why = f"is not in the Hugging Face cache ({where}) and the hub cannot be reached"
        fix = f"check the connection, or fetch it where there is one: {fetch_command(ref, needed)}"
    return HubError(f"{ref}: {filename} {why}; {fix}. HF_HOME / HF_HUB_CACHE choose the cache; a local "
                           "model directory works too.")


def _download(ref: HubRef, filename: str, revision: Optional[str]) -> Optional[Path]:
    """One file through hf_hub_download (the cache first); None when the repository does not have it, _NotCached
    when there is no copy to be had now, a HubError naming the fix for everything else."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    try:
        return Path(hf_hub_download(ref.repo_id, filename, revision=revision))
    except RemoteEntryNotFoundError:
        return None
    except LocalEntryNotFoundError:
        raise _NotCached(filename) from None
    except GatedRepoError as e:
        raise HubError(f"{ref}: a gated Hugging Face repository: accept its terms on huggingface.co and log "
                              f"in (hf auth login), or give a local directory ({_first_line(e)})") from None
    except RepositoryNotFoundError:
        raise HubError(f"{ref}: no local file or directory of that name, and no Hugging Face model "
                              f"{ref.repo_id} you can access (a typo? a private repository needs hf auth login)"
                              ) from None
    except RevisionNotFoundError:
        raise HubError(f"{ref}: the Hugging Face repository {ref.repo_id} has no revision "
                              f"{ref.revision!r} (a branch, tag or commit)") from None
    except HfHubHTTPError as e:
        raise HubError(f"{ref}: the Hugging Face hub refused {filename}: {_first_line(e)}") from None
    except OSError as e:  # a full disk, a read-only cache...
        raise HubError(f"{ref}: cannot store {filename} in the Hugging Face cache ({e})") from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
