"""Publishing to the Hub, tested at the HfApi boundary with a recording fake: success, every failure a user
can hit (token, repo id, permissions, network, a folder that is not an export), and the token never leaks
into an exception, the console, the logs or a file. A live push runs only with HF_TOKEN and SLM_TEST_REPO_ID."""

import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

from slm_blocks.sharing.hub import HubError, PushResult, check_repo_id, push_to_hub

CANARY = "hf_CANARYtoken123456"
REPO = Path(__file__).resolve().parents[2]


class FakeResponse:
    def __init__(self, status_code: int):
        self.status_code = status_code
        self.headers = {"x-request-id": "req-1"}
        self.request = None
        self.text = f"error {status_code} for token {CANARY}"  # a server echoing the token must not leak it


def http_error(status: int, cls=HfHubHTTPError):
    return cls(f"{status} Client Error for url https://huggingface.co/api (token {CANARY})",
               response=FakeResponse(status))


class RepoUrl(str):
    @property
    def url(self):
        return str(self)


class Commit:
    oid = "abc123"


class FakeApi:
    """Records whoami / create_repo / upload_folder; `fail` maps a method name to the exception it raises."""

    def __init__(self, name="alice", **fail):
        self.name, self.fail, self.calls = name, fail, []

    def _call(self, method, **kw):
        self.calls.append((method, kw))
        if method in self.fail:
            raise self.fail[method]

    def whoami(self, token=None):
        self._call("whoami", token=token)
        return {"name": self.name, "type": "user"}

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kw):
        self._call("create_repo", repo_id=repo_id, token=token, private=private, exist_ok=exist_ok, **kw)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id=None, folder_path=None, token=None, **kw):
        self._call("upload_folder", repo_id=repo_id, folder_path=folder_path, token=token, **kw)
        return Commit()

    def methods(self):
        return [m for m, _ in self.calls]


@pytest.fixture
def export_dir(tmp_path):
    d = tmp_path / "export"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (d / "README.md").write_text("---\nlibrary_name: transformers\n---\n# tiny\n")
    (d / "model.safetensors").write_bytes(b"not really weights")
    return d


@pytest.fixture
def no_leak(tmp_path, capsys, caplog):
    """After the test: the canary is in no output, no log record (DEBUG) and no file under tmp_path."""
    caplog.set_level(logging.DEBUG)
    yield
    out, err = capsys.readouterr()
    assert CANARY not in out and CANARY not in err
    assert CANARY not in caplog.text
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert CANARY.encode() not in p.read_bytes(), f"token written to {p}"


def push_fails(export_dir, repo_id, token=CANARY, api=None, match=None) -> HubError:
    with pytest.raises(HubError) as info:
        push_to_hub(export_dir, repo_id, token, api=api)
    e = info.value
    shown = "".join(traceback.format_exception(e))  # what any console / UI would print
    assert CANARY not in str(e) and CANARY not in repr(e) and CANARY not in shown
    assert e.__cause__ is None
    if match:
        assert match in str(e), str(e)
    return e


# ----------------------------------------------------------------------------- success


def test_push_success_private_by_default(export_dir, no_leak):
    api = FakeApi()
    r = push_to_hub(export_dir, "my-tiny-model", CANARY, api=api)
    assert isinstance(r, PushResult)
    assert r.repo_id == "alice/my-tiny-model" and r.private is True
    assert r.url == "https://huggingface.co/alice/my-tiny-model" and r.commit == "abc123"
    assert api.methods() == ["whoami", "create_repo", "upload_folder"]
    (_, who), (_, create), (_, upload) = api.calls
    assert who["token"] == CANARY
    assert create["repo_id"] == "alice/my-tiny-model" and create["private"] is True and create["token"] == CANARY
    assert upload["repo_id"] == "alice/my-tiny-model" and Path(upload["folder_path"]) == export_dir
    assert upload["token"] == CANARY
    assert sorted(p.name for p in export_dir.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_push_public_into_an_explicit_namespace(export_dir, no_leak):
    api = FakeApi()
    r = push_to_hub(export_dir, "  my-org/model.v2  ", CANARY, private=False, api=api)
    assert r.repo_id == "my-org/model.v2" and r.private is False
    assert api.calls[1][1]["repo_id"] == "my-org/model.v2" and api.calls[1][1]["private"] is False


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token(export_dir, no_leak, token):
    api = FakeApi()
    push_fails(export_dir, "my-model", token=token, api=api, match="no Hugging Face token")
    assert api.calls == []


@pytest.mark.parametrize("status", [401, 403])
def test_bad_token(export_dir, no_leak, status):
    api = FakeApi(whoami=http_error(status))
    e = push_fails(export_dir, "my-model", api=api, match="token was rejected")
    assert "write access" in str(e)
    assert api.methods() == ["whoami"]


@pytest.mark.parametrize("repo_id, hint", [
    ("", "empty"), ("   ", "empty"), ("a/b/c", "more than one '/'"), ("-bad-", "not valid"),
    ("my model", "not valid"), ("x" * 97, "not valid"), ("alice/" + "y" * 97, "not valid"),
    ("bad--name", "not valid"), ("name.", "not valid"), ("alice/", "not valid"), ("/name", "not valid"),
    ("über", "not valid"),
])
def test_bad_repo_ids(export_dir, no_leak, repo_id, hint):
    api = FakeApi()
    push_fails(export_dir, repo_id, api=api, match=hint)
    assert api.calls == [], "a bad name must be refused before any network call"
    with pytest.raises(HubError):
        check_repo_id(repo_id)


@pytest.mark.parametrize("repo_id", ["m", "my-tiny-llama", "alice/my_model.v2", "A1/b-2", "x" * 96])
def test_good_repo_ids(repo_id):
    assert check_repo_id(f" {repo_id} ") == repo_id


def test_no_permission_on_someone_elses_namespace(export_dir, no_leak):
    api = FakeApi(create_repo=http_error(403))
    e = push_fails(export_dir, "openai-community/gpt2", api=api, match="no permission")
    assert "'openai-community'" in str(e)
    assert "upload_folder" not in api.methods()


def test_name_taken_conflict(export_dir, no_leak):
    api = FakeApi(create_repo=http_error(409))
    push_fails(export_dir, "my-model", api=api, match="exists")
    assert "upload_folder" not in api.methods()


def test_forbidden_upload_is_reported_as_permission_not_network(export_dir, no_leak):
    """The real HfApi.create_repo(exist_ok=True) swallows a 403 when the repo already exists (someone else's
    public model), so the 403 arrives from upload_folder; it must still read as a permission problem."""
    api = FakeApi(upload_folder=http_error(403))
    e = push_fails(export_dir, "openai-community/gpt2", api=api)
    assert "nothing was published" in str(e) or "permission" in str(e)
    assert "permission" in str(e) and "connection" not in str(e), str(e)


def test_repository_not_found(export_dir, no_leak):
    api = FakeApi(upload_folder=http_error(404, RepositoryNotFoundError))
    push_fails(export_dir, "my-model", api=api, match="not found")


@pytest.mark.parametrize("where", ["whoami", "create_repo", "upload_folder"])
@pytest.mark.parametrize("exc", [ConnectionError(f"connection refused (token {CANARY})"),
                                 OfflineModeIsEnabled("offline mode is enabled"), TimeoutError("read timed out"),
                                 "http500"], ids=["connection", "offline", "timeout", "server-500"])
def test_network_failures(export_dir, no_leak, where, exc):
    api = FakeApi(**{where: http_error(500) if exc == "http500" else exc})
    e = push_fails(export_dir, "my-model", api=api, match="nothing was published")
    assert "could not reach the Hugging Face Hub" in str(e)


@pytest.mark.parametrize("missing", ["config.json", "README.md"])
def test_not_an_export_folder(export_dir, no_leak, missing):
    (export_dir / missing).unlink()
    api = FakeApi()
    push_fails(export_dir, "my-model", api=api, match="not a finished export")
    assert api.calls == []


def test_folder_that_does_not_exist(tmp_path, no_leak):
    api = FakeApi()
    push_fails(tmp_path / "nope", "my-model", api=api, match="export the model first")
    assert api.calls == []


@pytest.mark.parametrize("fail", [{"create_repo": http_error(403)}, {"create_repo": http_error(409)},
                                  {"upload_folder": http_error(404, RepositoryNotFoundError)},
                                  {"upload_folder": ConnectionError("reset")}], ids=["403", "409", "404", "network"])
def test_messages_quoting_the_repo_id_are_scrubbed(export_dir, no_leak, fail):
    """A token pasted into the repo-id box must not come back in an error message that quotes the name."""
    api = FakeApi(**fail)
    e = push_fails(export_dir, f"alice/{CANARY}-model", api=api)
    assert "***" in str(e) or "could not reach" in str(e)


# ----------------------------------------------------------------------------- CLI


def _cli_push(export_dir, tmp_path, repo_id="alice/tiny", **env_over):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_TOKEN")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **env_over)
    return subprocess.run([sys.executable, "-m", "slm_blocks", "push", str(export_dir), "--repo-id", repo_id],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _no_canary_under(folder: Path):
    for p in folder.rglob("*"):
        if p.is_file():
            assert CANARY.encode() not in p.read_bytes(), f"token written to {p}"


def test_cli_push_offline_fails_cleanly(export_dir, tmp_path):
    proc = _cli_push(export_dir, tmp_path, HF_TOKEN=CANARY)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert CANARY not in out
    assert "error:" in proc.stderr and "nothing was published" in proc.stderr and "Traceback" not in out
    assert "published alice" not in out
    _no_canary_under(tmp_path)


def test_cli_push_without_token(export_dir, tmp_path):
    proc = _cli_push(export_dir, tmp_path)
    assert proc.returncode == 2
    assert "no Hugging Face token" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_push_bad_repo_id(export_dir, tmp_path):
    proc = _cli_push(export_dir, tmp_path, repo_id="a/b/c", HF_TOKEN=CANARY)
    assert proc.returncode == 2 and "more than one '/'" in proc.stderr
    assert CANARY not in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- live (opt-in)


LIVE = r'''
import json, sys
from huggingface_hub import HfApi
from slm_blocks.sharing.hub import push_to_hub
folder, repo_id, token = sys.argv[1], sys.argv[2], __import__("os").environ["HF_TOKEN"]
r = push_to_hub(folder, repo_id, token, private=True)
api = HfApi()
files = api.list_repo_files(r.repo_id, token=token)
info = api.model_info(r.repo_id, token=token)
print(json.dumps({"repo_id": r.repo_id, "files": files, "private": info.private, "commit": r.commit}))
'''


def _live_export(folder: Path):
    from slm_blocks import ModelSpec, build_model
    from slm_blocks.sharing.export import export_hf
    from slm_blocks.training.tokenization import build_tokenizer

    tok = build_tokenizer("char", "hello world, a tiny test of publishing\n")
    spec = ModelSpec.from_dict({"vocab_size": len(tok), "d_model": 32, "max_seq_len": 48, "blocks": [
        {"type": "embedding"}, {"type": "positional", "kind": "rope"},
        {"type": "transformer", "repeat": 1, "attention": {"n_heads": 2},
         "mlp": {"activation": "silu", "gated": True, "hidden": 64}, "norm": {"kind": "rmsnorm"}},
        {"type": "final_norm", "norm": {"kind": "rmsnorm"}}, {"type": "lm_head"}]})
    return export_hf(build_model(spec, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id), tok, folder)


@pytest.mark.skipif(not (os.environ.get("HF_TOKEN") and os.environ.get("SLM_TEST_REPO_ID")),
                    reason="live Hub push needs HF_TOKEN and SLM_TEST_REPO_ID")
def test_live_push_to_the_hub(tmp_path):
    token, repo_id = os.environ["HF_TOKEN"], os.environ["SLM_TEST_REPO_ID"]
    folder = tmp_path / "export"
    assert _live_export(folder).verified
    (tmp_path / "live.py").write_text(LIVE)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    proc = subprocess.run([sys.executable, str(tmp_path / "live.py"), str(folder), repo_id], cwd=REPO,
                          env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert token not in proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"config.json", "README.md", "model.safetensors", "tokenizer.json"} <= set(got["files"])
    assert got["commit"]
    _no_canary_under(tmp_path)
