import os
import sys
from contextlib import contextmanager
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if os.environ.get("PYTEST_XDIST_WORKER"):  # one test process per core (pytest -n 2): one thread each, children too
    os.environ["OMP_NUM_THREADS"] = "1"
    # Gradio names an upload's cached copy by its content, and an app deletes its cached files when it shuts
    # down: two workers' apps sharing /tmp/gradio would delete each other's identical uploads mid-test.
    import tempfile

    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix=f"gradio-{os.environ['PYTEST_XDIST_WORKER']}-")


# ----------------------------------------------------------------------------- running in parallel (pytest-xdist)

import pytest  # noqa: E402

# Test files that share an expensive session fixture run in one worker, so it is built once.
SHARED_FIXTURE_GROUPS = ("trained_exports", "trained_tiny_char")
# The longest units start first, so no worker is left with a long one at the end while the other idles. The
# browser tests are one unit: two chromiums and two apps at once on two cores time out.
SLOW_FIRST = ("browser", "ui/test_load.py", "ui/test_app_api.py", "trained_tiny_char", "test_cli.py",
              "training/test_faults.py")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """With `--dist loadgroup`, every file is one unit of work (module fixtures such as a launched app are built
    once) and the files that use one of SHARED_FIXTURE_GROUPS share a unit."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
    by_file: dict[str, list] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::")[0], []).append(item)
    for path, file_items in by_file.items():
        used = set().union(*(getattr(i, "fixturenames", ()) for i in file_items))
        group = next((f for f in SHARED_FIXTURE_GROUPS if f in used), path)
        if Path(path).name.startswith("test_browser"):
            group = "browser"
        for item in file_items:
            item.add_marker(pytest.mark.xdist_group(group))

    def rank(item):
        group = next(item.iter_markers("xdist_group")).args[0].removeprefix("tests/")
        return SLOW_FIRST.index(group) if group in SLOW_FIRST else len(SLOW_FIRST)
    items.sort(key=rank)  # stable: the order within a file is kept


# ----------------------------------------------------------------------------- training fixtures

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare.txt"


def small_spec(dropout: float = 0.0, tie: bool = True, seq: int = 32, d_model: int = 32, layers: int = 2):
    """A tiny GPT-2-like spec (vocab is resized to the tokenizer by prepare_run)."""
    from slm_blocks import ModelSpec

    return ModelSpec.from_dict({
        "vocab_size": 65, "d_model": d_model, "max_seq_len": seq, "tie_embeddings": tie, "dropout": dropout,
        "blocks": [{"type": "embedding"}, {"type": "positional", "kind": "learned"},
                   {"type": "transformer", "repeat": layers,
                    "attention": {"n_heads": 2, "dropout": dropout},
                    "mlp": {"activation": "gelu", "hidden": 2 * d_model, "bias": True},
                    "norm": {"kind": "layernorm", "bias": True}},
                   {"type": "final_norm", "norm": {"kind": "layernorm"}}, {"type": "lm_head"}]})


def app_job(run_name: str, max_steps: int, spec=None, builtin: str = "stories", **train) -> dict:
    """A /train payload: `spec` (a ModelSpec, JSON text or preset name; default tiny-char) on a built-in data set
    with the char tokenizer, batch 4, an eval every 10 steps, a 300 s budget; `train` overrides settings."""
    if spec is not None and not isinstance(spec, str):
        spec = spec.to_dict()
    return {"spec": "tiny-char" if spec is None else spec, "data": {"source": "builtin", "name": builtin},
            "tokenizer": {"kind": "char"}, "run_name": run_name,
            "train": {"max_steps": max_steps, "batch_size": 4, "lr": 1e-3, "max_time": 300, "seed": 1,
                      "eval_every": 10, **train}}


@contextmanager
def running_app(store):
    """The app launched in-process on a free port; on exit, unfinished trainings are stopped and it closes."""
    from slm_blocks.ui import build_app

    demo = build_app(store).queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=None, quiet=True)
    try:
        yield demo, url
    finally:
        for session in list(store.sessions.values()):
            for r in session.runs.values():
                if r.job and not r.job.finished:
                    store.queue.cancel(r.job)
        store.queue.wait_idle(60)
        demo.close()


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is missing")
    return SHAKESPEARE


@pytest.fixture
def make_run(tmp_path):
    """make_run(name, spec=None, data=None, tokenizer="char", **train) -> a prepared Run in tmp_path/name.
    Defaults: a tiny spec, the first 120k chars of tinyshakespeare (builtin stories if it is missing),
    fp32 on the CPU, no samples, no periodic checkpoints."""
    from slm_blocks.training.data import DataConfig
    from slm_blocks.training.run import TokenizerConfig, prepare_run
    from slm_blocks.training.config import TrainConfig

    def make(name="run", spec=None, data=None, tokenizer="char", vocab_size=None, **train):
        if data is None:
            data = (DataConfig(source="files", paths=[str(SHAKESPEARE)], max_chars=120_000) if SHAKESPEARE.is_file()
                    else DataConfig(max_chars=120_000))
        cfg = dict(max_steps=10, batch_size=4, lr=1e-3, warmup_steps=2, log_every=1, eval_every=0, eval_batches=2,
                   sample_tokens=0, checkpoint_every=0, device="cpu", precision="fp32", seed=1234)
        cfg.update(train)
        return prepare_run(tmp_path / name, spec or small_spec(), data, TokenizerConfig(tokenizer, vocab_size),
                           TrainConfig(**cfg))

    return make


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """ONE SQLite MLflow store per test session (creating the schema takes seconds)."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the schema now
    return uri


@pytest.fixture
def one_thread():
    """Run torch on one thread: on shared, busy cores OpenMP's spinning threads slow tiny models 50x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- export fixtures

EXPORT_PROMPT = "ROMEO:\nWhat "  # characters present in tinyshakespeare and in the builtin stories
EXPORT_GREEDY = 32


def export_specs() -> dict:
    """name -> (spec, tokenizer kind, expected model class): every preset plus two custom-code specs."""
    from slm_blocks import ModelSpec, load_preset

    specs = {name: (load_preset(name), "char", cls) for name, cls in (
        ("tiny-char", "GPT2LMHeadModel"), ("gpt2", "GPT2LMHeadModel"), ("llama", "LlamaForCausalLM"),
        ("mistral", "MistralForCausalLM"), ("qwen3", "Qwen3ForCausalLM"), ("gemma3", "Gemma3ForCausalLM"))}
    alibi = load_preset("llama").to_dict()
    alibi["blocks"][1] = {"type": "positional", "kind": "alibi"}
    alibi["name"] = "alibi-llama"
    specs["alibi"] = (ModelSpec.from_dict(alibi), "byte", "SLMForCausalLM")
    free = {"name": "free-order", "vocab_size": 65, "d_model": 128, "max_seq_len": 128, "blocks": [
        {"type": "embedding"}, {"type": "positional", "kind": "rope"},
        {"type": "attention", "attention": {"n_heads": 4, "n_kv_heads": 2}},
        {"type": "mlp", "mlp": {"activation": "silu", "gated": True, "hidden": 256}},
        {"type": "mlp", "mlp": {"activation": "gelu", "hidden": 256, "bias": True}},
        {"type": "attention", "attention": {"n_heads": 4}},
        {"type": "final_norm"}, {"type": "lm_head"}]}
    specs["free-order"] = (ModelSpec.from_dict(free), "byte", "SLMForCausalLM")
    return specs


class Exported:
    """One trained + exported model: run folder, export folder, ExportResult, reference outputs."""

    def __init__(self, name, run_dir, out_dir, result, expected_class, refs):
        self.name, self.run_dir, self.out_dir, self.result = name, run_dir, out_dir, result
        self.expected_class, self.refs = expected_class, refs  # refs: path to reference safetensors

    @property
    def custom(self) -> bool:
        return self.expected_class == "SLMForCausalLM"


def reference_outputs(model, tokenizer, seed: int = 0) -> dict:
    """Logits on a fixed batch (full context, longer than every sliding window), a 32-token greedy
    continuation of EXPORT_PROMPT, and the 8-token greedy continuation a text-generation pipeline shows."""
    import torch

    spec = model.config.model_spec()
    ids = torch.randint(0, spec.vocab_size, (2, spec.max_seq_len), generator=torch.Generator().manual_seed(seed))
    prompt = torch.tensor([tokenizer(EXPORT_PROMPT, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits.float()
        greedy = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=EXPORT_GREEDY,
                                min_new_tokens=EXPORT_GREEDY, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        short = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return {"ids": ids, "prompt": prompt, "logits": logits.contiguous(), "greedy": greedy, "short": short}


@pytest.fixture(scope="session")
def trained_exports(tmp_path_factory) -> dict:
    """Every preset and two custom-code specs: trained 3 steps (batch 2, full context) on tinyshakespeare
    (builtin stories if missing), exported with export_run, reference outputs saved. ~1 minute in all."""
    import torch
    from safetensors.torch import save_file

    from slm_blocks.training.data import DataConfig
    from slm_blocks.sharing.export import export_run
    from slm_blocks.training.run import TokenizerConfig, open_run, prepare_run
    from slm_blocks.training.config import TrainConfig
    from slm_blocks.training.loop import train

    root = tmp_path_factory.mktemp("exports")
    data = (DataConfig(source="files", paths=[str(SHAKESPEARE)], max_chars=120_000) if SHAKESPEARE.is_file()
            else DataConfig(max_chars=120_000))
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # the verification subprocesses too: the cores are shared
    out = {}
    try:
        for name, (spec, tok_kind, cls) in export_specs().items():
            cfg = TrainConfig(max_steps=3, batch_size=2, lr=1e-3, warmup_steps=1, log_every=1, eval_every=3,
                              eval_batches=1, sample_tokens=0, checkpoint_every=0, device="cpu", precision="fp32",
                              seed=1234)
            run = prepare_run(root / "runs" / name, spec, data, TokenizerConfig(tok_kind), cfg)
            for _ in train(run):
                pass
            result = export_run(run.dir, root / "exports" / name)
            reopened = open_run(run.dir, load_data=False)
            refs = root / "refs" / f"{name}.safetensors"
            refs.parent.mkdir(exist_ok=True)
            save_file(reference_outputs(reopened.load_model(), reopened.tokenizer), refs)
            out[name] = Exported(name, run.dir, root / "exports" / name, result, cls, refs)
    finally:
        torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp
    return out


# ----------------------------------------------------------------------------- a trained tiny-char (compress)


@pytest.fixture(scope="session")
def trained_tiny_char(tmp_path_factory, shakespeare):
    """The tiny-char preset trained 250 steps on the first 300k chars of tinyshakespeare (one thread, about a
    minute), shared by every test that needs a model that has learned something (quantization, GGUF, table)."""
    import torch

    from slm_blocks import load_preset
    from slm_blocks.training.config import TrainConfig
    from slm_blocks.training.data import DataConfig
    from slm_blocks.training.loop import train
    from slm_blocks.training.run import TokenizerConfig, open_run, prepare_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(max_steps=250, batch_size=16, lr=3e-3, warmup_steps=20, log_every=50, eval_every=250,
                          eval_batches=4, sample_tokens=0, checkpoint_every=0, device="cpu", precision="fp32", seed=7)
        run = prepare_run(tmp_path_factory.mktemp("tiny-char") / "run", load_preset("tiny-char"),
                          DataConfig(source="files", paths=[str(shakespeare)], max_chars=300_000),
                          TokenizerConfig("char"), cfg)
        for _ in train(run):
            pass
    finally:
        torch.set_num_threads(threads)
    return open_run(run.dir)
