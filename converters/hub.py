"""Thin wrappers over huggingface_hub to publish and fetch a model's blueprint.

`push` uploads `blueprint.json` and `README.md` of a local model folder (after `embed`) with
`HfApi.upload_file`; `pull` downloads those two files with `hf_hub_download` and reads the
blueprint the way a local model folder is read. A local folder passed as the repository is read
directly, with no network. With `local_files_only=True` (or HF_HUB_OFFLINE=1) only the local
Hugging Face cache is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blueprint_format import Blueprint
from blueprint_format.errors import BlueprintIOError, make_error
from converters.base import BLUEPRINT_FILE
from converters.model_folder import CARD_FILE, ModelFolderConverter

PUBLISHED_FILES = (BLUEPRINT_FILE, CARD_FILE)


def push(
    folder: Path,
    repo_id: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = "Add gradient blueprint",
    api: Any = None,
) -> list[str]:
    """Upload the folder's blueprint.json and README.md to `repo_id`; returns the paths uploaded."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    files = [folder / name for name in PUBLISHED_FILES if (folder / name).is_file()]
    if not (folder / BLUEPRINT_FILE).is_file():
        raise BlueprintIOError(
            make_error("io-error", f"{folder}: no {BLUEPRINT_FILE}; run `blueprint embed` first")
        )
    uploaded = []
    for path in files:
        try:
            api.upload_file(
                path_or_fileobj=str(path),
                path_in_repo=path.name,
                repo_id=repo_id,
                repo_type=repo_type,
                revision=revision,
                commit_message=commit_message,
            )
        except Exception as exc:  # network and Hub errors of every kind
            raise BlueprintIOError(
                make_error("io-error", f"upload of {path.name} to {repo_id} failed: {exc}")
            ) from None
        uploaded.append(path.name)
    return uploaded


def pull(
    repo: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    token: str | None = None,
) -> Blueprint | None:
    """The blueprint of a Hub repository (or of a local folder given as `repo`), or None."""
    local = Path(repo)
    if local.is_dir():
        return ModelFolderConverter().read(local)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    snapshot: Path | None = None
    unreachable: list[str] = []
    for name in PUBLISHED_FILES:
        try:
            fetched = hf_hub_download(
                repo_id=repo,
                filename=name,
                repo_type=repo_type,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                token=token,
            )
        except LocalEntryNotFoundError as exc:  # not in the cache and the Hub is offline or unreachable
            unreachable.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            continue
        except EntryNotFoundError:  # the repository has no such file
            continue
        except Exception as exc:  # network, auth, unknown repository
            raise BlueprintIOError(
                make_error("io-error", f"download of {name} from {repo} failed: {exc}")
            ) from None
        snapshot = Path(fetched).parent
    if snapshot is None:
        if unreachable:
            raise BlueprintIOError(
                make_error(
                    "io-error",
                    f"{repo}: not in the local cache and the Hub cannot be reached ({unreachable[0]})",
                )
            )
        return None
    # A cache snapshot's files are symlinks into the cache's blob store, outside the snapshot
    # folder: links this program's download made, so they are followed.
    return ModelFolderConverter(trusted_links=True).read(snapshot)
