"""A run directory: the spec, data and tokenizer choices, the trained tokenizer and the checkpoints.

    runs/shakespeare/
      run.json            spec, train / data / tokenizer settings, MLflow run id
      tokenizer/          a transformers fast tokenizer (AutoTokenizer.from_pretrained works on it)
      checkpoints/step-*/ see checkpoint.py
      init/               the weights training starts from (fine-tuning, a pruned model), when not random
      teacher/            a frozen teacher to distill from (see distill.py)

Everything a run needs to resume or generate is inside it, so the CLI, the app and a later session can
all reopen it. The model's vocab_size always follows the tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import latest_checkpoint, load_checkpoint, load_weights
from .config import TrainConfig
from .data import Corpus, DataConfig, check_length, load_corpus
from ..model.spec import ModelSpec
from .tokenization import TokenizerConfig, build_tokenizer, encode, load_tokenizer, save_tokenizer, token_ids

__all__ = ["INIT_WEIGHTS", "Run", "TokenizerConfig", "open_run", "prepare_run", "read_history", "save_init_weights"]

INIT_WEIGHTS = "init/model.safetensors"  # in a run folder: the weights step 0 starts from (absent: random init)
ENDED = "ended.json"  # in a run folder: how its last training ended (absent while one runs, or after a crash)
END_STATES = ("done", "stopped", "error")


def record_end(run_dir: str | Path, status: str | None, message: str = "") -> None:
    """Write how a training of the run ended (done / stopped / error), or remove it when one starts (None), so
    whoever lists the run later (an app that restarted) tells a finished run from an interrupted one."""
    path = Path(run_dir) / ENDED
    try:
        if status in END_STATES and path.parent.is_dir():
            path.write_text(json.dumps({"status": status, "message": message}))
        elif status is None:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def save_init_weights(run_dir: str | Path, state: dict[str, torch.Tensor]) -> None:
    """The weights a run starts from instead of a random init (fine-tuning, pruning): step 0 is this model."""
    from safetensors.torch import save_file

    path = Path(run_dir) / INIT_WEIGHTS
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, path, metadata={"format": "pt"})


def read_history(run_dir: str | Path) -> list[dict]:
    """Logged step and eval metrics (metrics.jsonl), the last record per (kind, step): after a resume the
    steps trained again replace the ones logged before the checkpoint."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            records[(r["kind"], r["step"])] = r
    return sorted(records.values(), key=lambda r: (r["step"], r["kind"]))


@dataclass
class Run:
    dir: Path
    spec: ModelSpec
    train_config: TrainConfig
    data_config: DataConfig
    tokenizer_config: TokenizerConfig
    tokenizer: object
    corpus: Corpus
    train_tokens: torch.Tensor  # 1-D int64
    val_tokens: torch.Tensor
    meta: dict = field(default_factory=dict)  # e.g. mlflow_run_id
    is_main_writer: bool = True  # False on DDP ranks other than 0

    def history(self) -> list[dict]:
        """Logged step and eval metrics (metrics.jsonl), last record per (kind, step) after resumes."""
        return read_history(self.dir)

    @property
    def seq_len(self) -> int:
        return self.train_config.seq_len or self.spec.max_seq_len

    @property
    def tokens_per_char(self) -> float:
        """Validation tokens per character: turns nats/token into bits/char, comparable across tokenizers."""
        return len(self.val_tokens) / max(1, len(self.corpus.val_text))

    def token_ids(self) -> dict:
        return token_ids(self.tokenizer)

    def new_model(self):
        """The model step 0 trains: random (seeded by the caller), or the run's initial weights when it has them."""
        from ..model.modeling import build_model

        model = build_model(self.spec, **self.token_ids())
        if (self.dir / INIT_WEIGHTS).is_file():
            load_weights(self.dir / INIT_WEIGHTS, model)
        return model

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.dir)

    def load_model(self):
        """The model at the latest checkpoint (before any training: the weights it starts from), in eval mode."""
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            if (self.dir / INIT_WEIGHTS).is_file():
                return self.new_model().eval()
            raise FileNotFoundError(f"run {self.dir} has no checkpoint yet; train it first")
        model = self.new_model()
        load_checkpoint(ckpt, model)
        return model.eval()

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        record = {"spec": self.spec.to_dict(), "train": self.train_config.to_dict(),
                  "data": self.data_config.to_dict(), "tokenizer": self.tokenizer_config.to_dict(), **self.meta}
        tmp = self.dir / "run.json.tmp"
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self.dir / "run.json")

    # --- what the training loop shows while it learns --------------------------------
    @torch.no_grad()
    def sample(self, model, n_tokens: int, seed: int, prompt: str | None = None) -> str:
        """A sampled continuation (temperature 0.8, top-k 50) that leaves the global RNG untouched."""
        from ..model.generation import SamplingConfig, generate_text

        prompt = prompt if prompt is not None else self.train_config.sample_prompt or "\n"
        with torch.random.fork_rng(devices=[]):
            return generate_text(model, self.tokenizer, prompt,
                                 SamplingConfig(max_new_tokens=n_tokens, temperature=0.8, top_k=50, seed=seed))

    @torch.no_grad()
    def accuracy(self, model, limit: int = 100) -> float:
        """Exact-match accuracy of greedy answers on the algorithmic task's validation problems."""
        from ..model.generation import SamplingConfig, generate_text

        examples = self.corpus.eval_examples[:limit]
        right = 0
        for prompt, answer in examples:
            cfg = SamplingConfig(max_new_tokens=len(self.tokenizer(answer)["input_ids"]) + 1, temperature=0.0)
            got = generate_text(model, self.tokenizer, prompt, cfg)
            right += got.split("\n")[0].strip() == answer.strip()
        return right / max(1, len(examples))


def _encode_corpus(tokenizer, corpus: Corpus) -> tuple[torch.Tensor, torch.Tensor]:
    return encode(tokenizer, corpus.train_text), encode(tokenizer, corpus.val_text)


def prepare_run(out_dir: str | Path, spec: ModelSpec, data: DataConfig, tokenizer: TokenizerConfig,
                train: TrainConfig, caps=None, status=None, tokenizer_obj=None) -> Run:
    """Load the data, build the tokenizer on the training split, size the spec's vocabulary to it, check the
    model that vocabulary really gives against `caps` (job.Caps: before anything is encoded or allocated),
    encode, save. `status(text)` hears what it is doing.

    `tokenizer_obj`: an existing tokenizer to use instead of building one (a model the run starts from or a
    teacher brings its own); the spec's vocabulary then stays as it is (the weights' size), which must hold
    every token id of the tokenizer."""
    say = status or (lambda text: None)
    out = Path(out_dir)
    if latest_checkpoint(out) is not None:
        raise FileExistsError(f"{out.name} already holds a trained run; resume it or choose another run name")
    train.validated()
    say("loading the data")
    corpus = load_corpus(data)
    if tokenizer_obj is None:
        say("building the tokenizer")
        tok = build_tokenizer(tokenizer.kind, corpus.train_text, tokenizer.vocab_size, tokenizer.name_or_path)
        spec = spec.copy(vocab_size=len(tok))
    else:
        tok = tokenizer_obj
        if len(tok) > spec.vocab_size:
            raise ValueError(f"the tokenizer has {len(tok):,} tokens but the model only {spec.vocab_size:,} "
                             "embeddings; they do not belong together")
    spec = ModelSpec.from_dict(spec.to_dict())  # re-validate with the new vocabulary
    if caps is not None:
        check_model_caps(spec, train, tokenizer, caps)
    seq_len = train.seq_len or spec.max_seq_len
    if seq_len > spec.max_seq_len:
        raise ValueError(f"seq_len {seq_len} is longer than the model's max_seq_len {spec.max_seq_len}; lower it")
    say("encoding the data")
    train_tokens, val_tokens = _encode_corpus(tok, corpus)
    check_length(corpus, len(train_tokens), len(val_tokens), seq_len)
    run = Run(out, spec, train, data, tokenizer, tok, corpus, train_tokens, val_tokens)
    run.save()
    save_tokenizer(tok, out / "tokenizer")
    return run


def check_model_caps(spec: ModelSpec, train: TrainConfig, tokenizer: TokenizerConfig, caps) -> None:
    """JobError when the model with the tokenizer's real vocabulary is over the caps (the message says the
    vocabulary came from the tokenizer: a char tokenizer over text with many distinct characters, a big BPE
    vocabulary or a pretrained tokenizer can make a small spec several times bigger)."""
    from .job import JobError, model_cap_problems

    why = f"with the {tokenizer.kind} tokenizer the vocabulary is {spec.vocab_size:,} tokens, so "
    problems = model_cap_problems(spec, train, caps, why)
    if problems:
        raise JobError(problems)


def open_run(run_dir: str | Path, load_data: bool = True, train_overrides: dict | None = None) -> Run:
    """Reopen a run directory (to resume, or with load_data=False just to generate)."""
    d = Path(run_dir)
    if not (d / "run.json").is_file():
        raise FileNotFoundError(f"{d} is not a run directory (run.json is missing)")
    record = json.loads((d / "run.json").read_text())
    spec = ModelSpec.from_dict(record.pop("spec"))
    train = TrainConfig.from_saved({**record.pop("train"), **(train_overrides or {})})
    data = DataConfig.from_dict(record.pop("data"))
    tok_cfg = TokenizerConfig(**record.pop("tokenizer"))
    tok = load_tokenizer(d / "tokenizer")
    if load_data:
        corpus = load_corpus(data)
        train_tokens, val_tokens = _encode_corpus(tok, corpus)
    else:
        corpus, train_tokens, val_tokens = Corpus("", "", data.source), torch.empty(0), torch.empty(0)
    return Run(d, spec, train, data, tok_cfg, tok, corpus, train_tokens, val_tokens, meta=record)
