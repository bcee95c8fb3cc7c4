"""Publish an exported folder to the Hugging Face Hub.

The token is used for the calls and nothing else: it is never printed, logged, stored, written to disk or
put into an error message (every error text is scrubbed of it). A push reports success only after the
upload committed; any failure before that says so and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REQUIRED_FILES = ("config.json", "README.md")


class HubError(RuntimeError):
    """A push that did not complete; the message names the cause and the fix (never the token)."""


@dataclass
class PushResult:
    repo_id: str
    url: str
    private: bool
    commit: str | None


def _scrub(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    return text


def check_repo_id(repo_id: str) -> str:
    """'name' or 'user/name' with the Hub's allowed characters; HubError with the fix otherwise."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = (repo_id or "").strip()
    if not repo_id:
        raise HubError("repository name is empty; enter a name like 'my-tiny-llama' or 'your-name/my-tiny-llama'")
    if repo_id.count("/") > 1:
        raise HubError(f"repository name {repo_id!r} has more than one '/'; use 'your-name/model-name'")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(f"repository name {repo_id!r} is not valid: use letters, digits, '-', '_' or '.', at most 96 "
                       "characters, not starting or ending with '-' or '.'") from None
    return repo_id


def push_to_hub(export_dir: str | Path, repo_id: str, token: str | None, private: bool = True,
                api=None) -> PushResult:
    """create_repo + upload_folder for an exported folder. `api` is an HfApi (tests pass a fake)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    folder = Path(export_dir)
    repo_id = check_repo_id(repo_id)
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise HubError(f"{folder} is not a finished export (missing {', '.join(missing)}); export the model first")
    if not token:
        raise HubError("no Hugging Face token: sign in with Hugging Face (on Spaces) or paste a token with write "
                       "access (locally: HF_TOKEN or `hf auth login`)")
    api = api or HfApi()
    try:
        try:
            user = api.whoami(token=token)
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status in (401, 403):
                raise HubError("the Hugging Face token was rejected; create a new token with write access and "
                               "sign in again") from None
            raise
        name = user.get("name") if isinstance(user, dict) else None
        if "/" not in repo_id and name:
            repo_id = f"{name}/{repo_id}"
        try:
            url = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status in (401, 403):
                owner = repo_id.split("/")[0]
                raise HubError(f"no permission to create or write {repo_id!r}: the namespace {owner!r} belongs to "
                               "someone else or the token lacks write access; use your own name or a token "
                               "with write access") from None
            if status == 409:
                raise HubError(f"{repo_id!r} exists and cannot be written with this token; pick another name") from None
            raise
        try:
            commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), token=token,
                                       commit_message="Upload model exported with SLM Blocks")
        except RepositoryNotFoundError:
            raise
        except HfHubHTTPError as e:  # create_repo(exist_ok=True) lets a 403 through to here
            if getattr(getattr(e, "response", None), "status_code", None) in (401, 403):
                raise HubError(f"no permission to write {repo_id!r}: it belongs to someone else or the token lacks "
                               "write access; use your own name or a token with write access") from None
            raise
    except HubError as e:
        raise HubError(_scrub(str(e), token)) from None
    except RepositoryNotFoundError:
        raise HubError(_scrub(f"{repo_id!r} was not found or is not writable with this token; check the name",
                              token)) from None
    except Exception as e:  # network, offline mode, server errors: nothing is reported as published
        kind = type(e).__name__
        raise HubError(_scrub(f"could not reach the Hugging Face Hub ({kind}: {e}); check your connection and try "
                              "again — nothing was published", token)) from None
    return PushResult(repo_id, str(getattr(url, "url", url)), private, getattr(commit, "oid", None))
