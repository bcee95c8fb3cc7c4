"""One training job, as the CLI, the app's form, the /train API and the worker all describe it.

    {"spec": {...} | "<preset name>",           the model (a ModelSpec; vocab_size follows the tokenizer)
     "data": {"source": "builtin", "name": "stories"},           DataConfig
     "tokenizer": {"kind": "char"},                              TokenizerConfig
     "train": {"max_steps": 1000, "max_time": 300},              TrainConfig (empty = derived)
     "run_name": "my-run",
     "init_from": null,                          a run folder, exported folder or Hub id to start from
     "teacher": null | {"source": ..., "alpha": 0.5, "temperature": 2.0}}   distillation

`Job.from_dict` / `from_json` parse and validate in one pass and raise JobError listing every problem, each
with the field's path (`train.lr`, `data.hub_id`, `spec.blocks[2].attention.n_heads`) and the fix. The
`context` says who is asking: in the "app", data and tokenizers come only from the Hub by `owner/name` or
from the upload widget, never from a server path; the "cli" also takes local files and folders.
`Caps` are the limits an app owner sets; they are checked here (cheap, from the spec) and again once the
tokenizer has fixed the real vocabulary (run.prepare_run), before any model is allocated.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..model.spec import MAX_SPEC_BYTES, ModelSpec
from ..model.validate import SpecError
from .config import TrainConfig
from .data import DataConfig, is_hub_id
from .schema import Problem, SettingsError, label, parse_record, parse_value, setting, short
from .tokenization import BPE_MIN_VOCAB, TokenizerConfig

CONTEXTS = ("cli", "app")
MAX_JOB_BYTES = MAX_SPEC_BYTES  # a job is a spec plus a few settings: the same 64 KB bound


class JobError(SettingsError):
    """A job that cannot run; `.problems` lists every reason, each naming its field."""

    def __init__(self, problems: list[Problem]):
        super().__init__(problems, "training job")


@dataclass
class TeacherConfig:
    """Distillation from a bigger model (parsed and checked now; the training side comes later)."""

    source: str = setting("", label="Teacher", help="run folder, exported folder or Hub id of the teacher")
    alpha: float = setting(0.5, lo=0, hi=1, label="Distillation weight",
                           help="share of the loss that follows the teacher (the rest follows the data)")
    temperature: float = setting(2.0, lo=0, lo_open=True, hi=100, label="Distillation temperature",
                                 help="softens both distributions before they are compared")


@dataclass(frozen=True)
class Caps:
    """Limits of one app (None = no limit): checked from the spec at parse time and again on the real model."""

    max_params: int | None = None
    max_train_mb: float | None = None  # training memory from the estimate (weights, grads, AdamW, activations)
    max_steps: int | None = None
    max_time_s: float | None = None
    max_context: int | None = None  # longest max_seq_len (generation allocates a KV cache this long)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Job:
    spec: ModelSpec = field(default_factory=lambda: _preset("tiny-char"))
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_name: str = "run"
    init_from: str | None = None
    teacher: TeacherConfig | None = None

    FIELDS = ("spec", "data", "tokenizer", "train", "run_name", "init_from", "teacher")

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "data": self.data.to_dict(), "tokenizer": self.tokenizer.to_dict(),
                "train": self.train.to_dict(), "run_name": self.run_name, "init_from": self.init_from,
                "teacher": asdict(self.teacher) if self.teacher else None}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, text, context: str = "cli", caps: Caps | None = None) -> "Job":
        if not isinstance(text, (str, bytes)):
            raise JobError([Problem("", f"the job must be JSON text or an object, got {short(text)}")])
        size = len(text.encode("utf-8", "replace")) if isinstance(text, str) else len(text)
        if size > MAX_JOB_BYTES:
            raise JobError([Problem("", f"the job is larger than {MAX_JOB_BYTES // 1024} KB; a job is a spec and a "
                                    "few settings: send only those")])
        try:
            data = json.loads(text)
        except RecursionError:
            raise JobError([Problem("", "the job is nested too deeply to be a job")]) from None
        except ValueError as e:
            raise JobError([Problem("", f"the job is not valid JSON ({str(e)[:120]}); fix the JSON syntax")]) from None
        return cls.from_dict(data, context, caps)

    @classmethod
    def from_dict(cls, d, context: str = "cli", caps: Caps | None = None) -> "Job":
        """Parse, validate (every problem at once) and check against `caps`; raises JobError."""
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}")  # a caller's bug
        problems: list[Problem] = []
        if not isinstance(d, dict):
            raise JobError([Problem("", f"the job must be a JSON object, got {short(d)}")])
        try:
            if len(json.dumps(d, default=str)) > MAX_JOB_BYTES:
                raise JobError([Problem("", f"the job is larger than {MAX_JOB_BYTES // 1024} KB; a job is a spec "
                                        "and a few settings: send only those")])
        except RecursionError:
            raise JobError([Problem("", "the job is nested too deeply to be a job")]) from None
        for key in d:
            if key not in cls.FIELDS:
                problems.append(Problem(str(key)[:40], f"is not part of a job; remove it (known: "
                                        f"{', '.join(cls.FIELDS)})"))
        app = context == "app"
        spec = _parse_spec(d.get("spec", "tiny-char"), problems)
        data = parse_record(DataConfig, d.get("data", {}), "data", problems)
        tok = parse_record(TokenizerConfig, d.get("tokenizer", {}), "tokenizer", problems)
        train = parse_record(TrainConfig, d.get("train", {}), "train", problems)
        problems += data.problems("data", app) + tok.problems("tokenizer", app) + train.problems("train")
        _, run_name = parse_value(str, d.get("run_name", "run"), "run_name", {}, problems)
        _, init_from = parse_value(str | None, d.get("init_from"), "init_from", {}, problems)
        teacher = None
        if d.get("teacher") is not None:
            teacher = parse_record(TeacherConfig, d["teacher"], "teacher", problems)
            if not teacher.source.strip():
                problems.append(Problem("teacher.source", "is empty; name the teacher model (a Hub id 'owner/name'"
                                        + (")" if app else ", a run folder or an exported folder)")))
        if app:
            for path, value in (("init_from", init_from), ("teacher.source", teacher.source if teacher else None)):
                if value and not (is_hub_id(value) or _is_run_name(value)):
                    problems.append(Problem(path, f"{short(value)} is neither a Hub id 'owner/name' nor the name of "
                                            "one of this session's runs"))
        job = cls(spec or _preset("tiny-char"), data, tok, train, run_name or "run", init_from, teacher)
        if spec is not None and not problems and caps is not None:
            problems += job.cap_problems(caps)
        if problems:
            raise JobError(problems)
        return job

    def cap_problems(self, caps: Caps) -> list[Problem]:
        """The app's limits, checked before anything runs. The model's vocabulary follows the tokenizer, so the
        spec's own vocab_size means nothing here: byte and bpe tokenizers say their size, char and pretrained
        ones are counted only later (prepare_run checks the real model again)."""
        out = []
        t = self.train
        if caps.max_steps is not None and t.max_steps > caps.max_steps:
            out.append(Problem("train.max_steps", f"is {t.max_steps}; this app allows at most {caps.max_steps} steps "
                               "per run"))
        if caps.max_time_s is not None and t.max_time is not None and t.max_time > caps.max_time_s:
            out.append(Problem("train.max_time", f"is {t.max_time:g} s; this app allows at most "
                               f"{caps.max_time_s:g} s ({caps.max_time_s / 60:g} min) per run"))
        planned = {"byte": BPE_MIN_VOCAB, "bpe": self.tokenizer.vocab_size}.get(self.tokenizer.kind)
        why = (f"with the {self.tokenizer.kind} tokenizer's {planned:,}-token vocabulary, " if planned else
               "even before its vocabulary is counted, ")
        out += model_cap_problems(self.spec.copy(vocab_size=planned or 2), t, caps, why)
        return out


def model_cap_problems(spec: ModelSpec, train: TrainConfig, caps: Caps, why: str) -> list[Problem]:
    """Parameter and training-memory caps for the model `spec` describes (`why`: how its vocabulary came
    about, added to the message when the tokenizer made it bigger than the spec said)."""
    from ..model.estimate import estimate, human

    out = []
    if caps.max_context is not None and spec.max_seq_len > caps.max_context:
        out.append(Problem("spec.max_seq_len", f"is {spec.max_seq_len:,}; this app allows a context of at most "
                           f"{caps.max_context:,} tokens; make max_seq_len smaller"))
    e = estimate(spec, batch_size=train.batch_size, seq_len=train.seq_len or spec.max_seq_len)
    if caps.max_params is not None and e.params > caps.max_params:
        out.append(Problem("spec", f"{why}the model has {human(e.params)} parameters, over this app's cap of "
                           f"{human(caps.max_params)}; make d_model or the number of layers smaller"
                           + (", or choose a tokenizer with a smaller vocabulary" if "vocabulary is" in why
                              or "-token" in why else "")))
    if caps.max_train_mb is not None and e.train_total_bytes / 2**20 > caps.max_train_mb:
        out.append(Problem("train.batch_size", f"{why}training needs about {human(e.train_total_bytes, 'B')} of "
                           f"memory (estimate), over this app's {caps.max_train_mb:g} MiB; lower the batch size or "
                           "the sequence length, or make the model smaller"))
    return out


def _is_run_name(text: str) -> bool:
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}", text))


def _preset(name: str) -> ModelSpec:
    from ..model.presets import load_preset

    return load_preset(name)


def _parse_spec(raw, problems: list[Problem]) -> ModelSpec | None:
    """A spec object, its JSON text or a preset name; the spec's own problems keep their paths under `spec.`."""
    from ..model.presets import list_presets

    try:
        if isinstance(raw, str) and not raw.lstrip().startswith("{"):
            if raw in list_presets():
                return _preset(raw)
            problems.append(Problem("spec", f"{short(raw)} is neither a spec nor a preset name; use one of "
                                    f"{', '.join(list_presets())} or a spec object"))
            return None
        return ModelSpec.from_json(raw) if isinstance(raw, str) else ModelSpec.from_dict(raw)
    except SpecError as e:
        problems += [p.within("spec") for p in e.problems]
        return None


TOP_LABELS = {"spec": "Model spec", "run_name": "Run name", "init_from": "Start from", "teacher": "Teacher"}


def field_label(path: str) -> str:
    """How the form names a job field: 'train.lr' -> 'Learning rate', 'spec.blocks[2].d_model' -> 'Model spec'
    (the path itself when there is no label)."""
    records = {"train": TrainConfig, "data": DataConfig, "tokenizer": TokenizerConfig, "teacher": TeacherConfig}
    head, _, rest = path.partition(".")
    head = head.split("[", 1)[0]
    if head in records and rest and "." not in rest:
        try:
            return label(records[head], rest)
        except StopIteration:  # not a field of that record (an unknown key the parser reported)
            return path
    if head == "spec" or (head in TOP_LABELS and not rest):
        return TOP_LABELS[head]
    return path
