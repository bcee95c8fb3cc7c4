"""Where a grown model comes from: a run folder, an exported or native transformers folder, or a Hub id.

    src = locate("runs/teacher", "teacher.source", max_params)   # reads only a spec or a config: nothing big
    w = src.load()                                                # weights (our names), tokenizer, its settings

`locate` finds the architecture and checks the parameter cap from the run's spec, the folder's config and
its safetensors headers, or for a Hub id from `config.json` and the safetensors headers the Hub serves, before
any weights are downloaded or allocated. Downloads take only config, safetensors and tokenizer files: never
code, never pickles. Every refusal is a JobError naming the job field it came from (`init_from`,
`teacher.source`), and messages show a run's or folder's name, never a server path.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..model.estimate import estimate, human
from ..model.spec import ModelSpec
from ..model.validate import SpecError
from ..training.data import is_hub_id
from ..training.job import JobError
from ..training.schema import Problem, short

# the only files taken from a Hub repository (top level): config, weights as safetensors, tokenizer
HUB_FILES = ("config.json", "generation_config.json", "slm_spec.json", "model.safetensors.index.json",
             "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
             "merges.txt", "tokenizer.model")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_HEADER_BYTES = 100 * 2**20  # a safetensors header is a few KB per hundred tensors


def problem(path: str, message: str) -> JobError:
    return JobError([Problem(path, message)])


def max_params_from(caps) -> int | None:
    """The parameter cap: the app's (caps.max_params), else SLM_MAX_PARAMS when set, else none."""
    if caps is not None and getattr(caps, "max_params", None) is not None:
        return caps.max_params
    try:
        return int(os.environ["SLM_MAX_PARAMS"])
    except (KeyError, ValueError):
        return None


@dataclass
class Weights:
    """A loaded source: weights named like our model's, its tokenizer and how that tokenizer was made."""

    state: dict[str, torch.Tensor]
    tokenizer: object
    tokenizer_config: object  # TokenizerConfig
    data_config: object | None = None  # a run's DataConfig (what it was trained on), else None


@dataclass
class Source:
    text: str  # what the user gave
    field: str  # the job field it came from, for messages
    kind: str  # "run" | "folder" | "hub"
    label: str  # how messages name it: a run's or folder's name, or the Hub id
    spec: ModelSpec
    params: int
    folder: Path | None = None  # local folder (None for a Hub id not downloaded yet)
    files: list[str] = field(default_factory=list)  # a Hub repo's files to download

    def record(self) -> dict:
        """What a grown run remembers of its source (run.json, MLflow params, the app's tables)."""
        return {"source": self.label, "kind": self.kind, "params": self.params, "architecture": self.spec.summary()}

    def load(self, status=None) -> Weights:
        """Download (Hub) and read the weights and the tokenizer; JobError naming the field when they do not load."""
        say = status or (lambda text: None)
        if self.kind == "run":
            return self._load_run()
        if self.kind == "hub" and self.folder is None:
            say(f"downloading {self.label} (config, safetensors and tokenizer files)")
            self.folder = _download(self.text, self.files, self.field)
        say(f"reading {self.label}")
        return self._load_folder()

    def _load_run(self) -> Weights:
        from safetensors.torch import load_file

        from ..training.checkpoint import latest_checkpoint
        from ..training.run import INIT_WEIGHTS, open_run

        run = open_run(self.folder, load_data=False)
        ckpt = latest_checkpoint(self.folder)
        weights = ckpt / "model.safetensors" if ckpt else self.folder / INIT_WEIGHTS
        return Weights(dict(load_file(weights)), run.tokenizer, run.tokenizer_config, run.data_config)

    def _load_folder(self) -> Weights:
        from ..sharing.importer import ImportFailed, import_hf
        from ..training.tokenization import TokenizerConfig

        try:
            model, tok, spec = import_hf(self.folder)
        except (ImportFailed, SpecError) as e:
            raise problem(self.field, f"{self.label}: {_no_paths(str(e), self.folder, self.label)}") from None
        if tok is None:
            raise problem(self.field, f"{self.label} has no tokenizer files (tokenizer.json, tokenizer_config.json); "
                          "a model is trained and distilled with the tokenizer it was made with, so add them")
        state = {k: v for k, v in model.state_dict().items()
                 if not (k == "lm_head.weight" and spec.tie_embeddings)}  # tied: the embedding holds it
        return Weights(state, tok, TokenizerConfig("pretrained", None, self.label))


def locate(text: str, field_path: str, caps=None, hub_only: bool = False) -> Source:
    """The source `text` names (a run folder, a model folder or a Hub id), its architecture read and checked
    against the parameter cap; nothing big is read, downloaded or allocated. JobError names `field_path`.
    `hub_only`: `text` is a Hub id and never a local path (the app process: a relative path could otherwise
    name a folder in its working directory)."""
    if not isinstance(text, str) or not text.strip():
        raise problem(field_path, "is empty; name a run, a model folder or a Hub id 'owner/name'")
    text = text.strip()
    cap = max_params_from(caps)
    path = Path(text).expanduser()
    if hub_only and not is_hub_id(text):
        raise problem(field_path, f"{short(text)} is not a Hub id 'owner/name'")
    if not hub_only and path.is_dir():
        src = _locate_run(text, path, field_path) if (path / "run.json").is_file() else \
            _locate_folder(text, path, field_path)
    elif is_hub_id(text):
        src = _locate_hub(text, field_path)
    else:
        raise problem(field_path, f"{short(text)} is neither a run folder, a model folder (with config.json) nor a "
                      "Hub id 'owner/name'")
    if cap is not None and src.params > cap:
        raise problem(field_path, f"{src.label} has {human(src.params)} parameters, over this app's cap of "
                      f"{human(cap)}; pick a smaller model")
    return src


def _locate_run(text: str, path: Path, field_path: str) -> Source:
    from ..training.checkpoint import latest_checkpoint
    from ..training.run import INIT_WEIGHTS

    try:
        spec = ModelSpec.from_dict(json.loads((path / "run.json").read_text())["spec"])
    except (ValueError, KeyError, OSError):
        raise problem(field_path, f"{path.name}'s run.json is not readable; pick another run") from None
    if latest_checkpoint(path) is None and not (path / INIT_WEIGHTS).is_file():
        raise problem(field_path, f"run {path.name} has no checkpoint yet; train it first (or wait until it has "
                      "saved one)")
    if not (path / "tokenizer" / "tokenizer_config.json").is_file():
        raise problem(field_path, f"run {path.name} has no tokenizer folder; it is not a complete run")
    return Source(text, field_path, "run", path.name, spec, estimate(spec).params, path)


def _locate_folder(text: str, path: Path, field_path: str) -> Source:
    label = path.name
    if not (path / "config.json").is_file():
        raise problem(field_path, f"{label} is neither a run (run.json) nor a model folder (config.json)")
    names = [p.name for p in path.iterdir()]
    if not any(n.endswith(".safetensors") for n in names):
        pickles = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
        raise problem(field_path, f"{label} has no .safetensors weights" + (f" (only {', '.join(sorted(pickles)[:3])})"
                      if pickles else "") + "; only safetensors are loaded, because unpickling .bin / .pt files can "
                      "run code: convert them to safetensors (save_pretrained(..., safe_serialization=True))")
    spec = _spec_of(path / "config.json", path / "slm_spec.json", label, field_path)
    counted = _header_params([path / n for n in names if n.endswith(".safetensors")], label, field_path)
    return Source(text, field_path, "folder", label, spec, max(estimate(spec).params, counted), path)


def _locate_hub(repo: str, field_path: str) -> Source:
    """config.json (and slm_spec.json) and the safetensors headers only: the weights wait until the cap is checked."""
    from huggingface_hub import HfApi, hf_hub_download

    from ..training.hub_access import read_token

    token = read_token()  # the visitor's, never the server's own (hub_access.py)
    api = HfApi(token=token)
    try:
        files = api.list_repo_files(repo, token=token)
        if not any(f.endswith(".safetensors") and "/" not in f for f in files):
            pickles = [f for f in files if f.lower().endswith(PICKLE_SUFFIXES)]
            raise problem(field_path, f"{repo} has no .safetensors weights" + (" (only .bin / .pt files)" if pickles
                          else "") + "; only safetensors are loaded, because unpickling can run code")
        if "config.json" not in files:
            raise problem(field_path, f"{repo} has no config.json; it is not a transformers model repository")
        config = Path(hf_hub_download(repo, "config.json", token=token))
        spec_file = Path(hf_hub_download(repo, "slm_spec.json", token=token)) if "slm_spec.json" in files else None
        spec = _spec_of(config, spec_file, repo, field_path)
        try:
            counted = sum(api.get_safetensors_metadata(repo, token=token).parameter_count.values())
        except Exception:  # no parsable header on the Hub: the config's count stands
            counted = 0
    except JobError:
        raise
    except Exception as e:  # offline, unknown or gated repository, no network
        raise problem(field_path, f"could not read {repo} from the Hugging Face Hub ({type(e).__name__}: "
                      f"{' '.join(str(e).split())[:160]}); check the id and your connection, or use a local "
                      "folder") from None
    wanted = [f for f in files if "/" not in f and (f in HUB_FILES or f.endswith(".safetensors"))]
    return Source(repo, field_path, "hub", repo, spec, max(estimate(spec).params, counted), None, wanted)


def _download(repo: str, files: list[str], field_path: str) -> Path:
    from huggingface_hub import snapshot_download

    from ..training.hub_access import read_token

    try:  # exact file names: never *.py, *.bin, *.pt or anything else the repository holds
        return Path(snapshot_download(repo, allow_patterns=files, token=read_token()))
    except Exception as e:
        raise problem(field_path, f"could not download {repo} ({type(e).__name__}: {' '.join(str(e).split())[:160]}); "
                      "check your connection and try again") from None


def _spec_of(config: Path, spec_file: Path | None, label: str, field_path: str) -> ModelSpec:
    from ..sharing.importer import ImportFailed, spec_from_native_config

    try:
        if spec_file is not None and spec_file.is_file():
            return ModelSpec.from_json(spec_file.read_text())
        cfg = json.loads(config.read_text())
        if cfg.get("model_type") == "slm_blocks" and isinstance(cfg.get("spec"), dict):
            return ModelSpec.from_dict(cfg["spec"])
        return spec_from_native_config(cfg)
    except (ImportFailed, SpecError, KeyError, ValueError, TypeError) as e:
        raise problem(field_path, f"{label}'s config cannot be read as a model SLM Blocks builds "
                      f"({type(e).__name__}: {str(e)[:200]})") from None


def _header_params(files: list[Path], label: str, field_path: str) -> int:
    """Parameters counted from the safetensors headers (8-byte length + JSON), without reading any weights."""
    total = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > MAX_HEADER_BYTES:
                    raise ValueError("header too large")
                header = json.loads(fh.read(n))
        except (OSError, ValueError, struct.error):
            raise problem(field_path, f"{label}: {f.name} is not a valid safetensors file; re-export or re-download "
                          "it") from None
        for name, info in header.items():
            if name != "__metadata__" and isinstance(info, dict):
                count = 1
                for d in info.get("shape", []):
                    count *= int(d)
                total += count
    return total


def _no_paths(message: str, folder: Path, label: str) -> str:
    return message.replace(str(folder.resolve()), label).replace(str(folder), label)
