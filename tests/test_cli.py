"""`python -m slm_blocks train / generate` end to end in subprocesses, and a 2-process DDP run with torchrun."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def cli(*args, env_extra=None, timeout=240, prefix=None):
    """Run the CLI; on a timeout it and every process it started (torchrun's workers too) are ended and the
    result has returncode None."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    cmd = (prefix or [sys.executable, "-m", "slm_blocks"]) + [str(a) for a in args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        import psutil

        # torchrun starts each worker in its own session: collect them first, then end torchrun and them
        workers = psutil.Process(proc.pid).children(recursive=True)
        proc.terminate()  # torchrun forwards SIGTERM to its workers
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        for w in workers:
            try:
                w.kill()
            except psutil.NoSuchProcess:
                pass
        out, err = proc.communicate()
        return subprocess.CompletedProcess(cmd, None, out, f"TIMED OUT after {timeout} s (killed)\n{err}")


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\n" \
                                   f"stderr:\n{result.stderr[-3000:]}"
    return result


def user_error(result, *needles):
    assert result.returncode == 2, f"exit {result.returncode}\nstderr:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    assert result.stderr.startswith("error: ") or "\nerror: " in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").iterdir()
                  if (p / "trainer_state.json").is_file())


FAST = ["--batch-size", "4", "--eval-batches", "2", "--sample-tokens", "20", "--device", "cpu"]


@pytest.fixture(scope="module")
def cli_env(mlflow_uri):
    return {"MLFLOW_TRACKING_URI": mlflow_uri}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shakespeare, cli_env):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = ok(cli("train", "--preset", "tiny-char", "--data", shakespeare, "--tokenizer", "char", "--max-steps", 30,
                    "--eval-every", 15, "--out", out, *FAST, env_extra=cli_env))
    return out, result


def test_train_writes_a_checkpoint_and_tracks(trained, mlflow_uri):
    out, result = trained
    assert 30 in steps(out)
    assert "reached max_steps 30" in result.stdout and "step-000030" in result.stdout
    assert "val loss" in result.stdout
    record = json.loads((out / "run.json").read_text())
    assert record["train"]["max_steps"] == 30 and record["train"]["eval_every"] == 15
    assert record["data"]["source"] == "files" and record["tokenizer"]["kind"] == "char"
    from mlflow.tracking import MlflowClient

    r = MlflowClient(tracking_uri=mlflow_uri).get_run(record["mlflow_run_id"])
    assert r.info.status == "FINISHED" and "val_loss" in r.data.metrics


def test_training_console_has_no_third_party_noise(trained):
    """torchao's CUDA-kernel "Failed to load" lines and torch's _pytree notes (slm_blocks/quiet.py) never reach a
    training's console; our own lines do."""
    _, result = trained
    console = result.stdout + result.stderr
    for noise in ("Failed to load", "_pytree", "register_constant", "Traceback"):
        assert noise not in console, (noise, console[-3000:])
    assert "training tokens" in console and "val loss" in console


def test_resume_continues_to_more_steps(trained, cli_env):
    out, _ = trained
    run_id = json.loads((out / "run.json").read_text())["mlflow_run_id"]
    result = ok(cli("train", "--out", out, "--resume", "--max-steps", 40, "--eval-every", 15, *FAST,
                    env_extra=cli_env))
    assert steps(out)[-1] == 40
    assert json.loads((out / "checkpoints/step-000040/trainer_state.json").read_text())["step"] == 40
    assert "reached max_steps 40" in result.stdout
    assert run_id in result.stdout  # the same MLflow run goes on


def test_training_into_a_trained_folder_without_resume_is_refused(trained, cli_env):
    out, _ = trained
    before = steps(out)
    result = cli("train", "--preset", "tiny-char", "--max-steps", 5, "--out", out, *FAST, env_extra=cli_env)
    user_error(result, "already holds a trained run", "resume")
    assert steps(out) == before


def test_resume_of_a_missing_folder_is_a_user_error(tmp_path):
    user_error(cli("train", "--out", tmp_path / "nope", "--resume", "--no-mlflow"), "run.json")


def test_generate_is_deterministic_at_temperature_0(trained):
    out, _ = trained
    args = ("generate", out, "--prompt", "ROMEO:", "--max-new-tokens", 20, "--temperature", 0)
    first, second = ok(cli(*args)), ok(cli(*args))
    assert first.stdout.startswith("ROMEO:")
    assert len(first.stdout) == len("ROMEO:") + 20 + 1  # 20 characters (char tokenizer; newlines count), then "\n"
    assert first.stdout == second.stdout


def test_generate_with_a_seed_is_reproducible(trained):
    out, _ = trained
    args = ("generate", out, "--prompt", "KING", "--max-new-tokens", 15, "--temperature", 1.0, "--seed", 7)
    assert ok(cli(*args)).stdout == ok(cli(*args)).stdout


def test_generate_from_a_folder_that_is_not_a_run(tmp_path):
    user_error(cli("generate", tmp_path), "not a run directory")


def test_bad_spec_file_is_a_spec_error(tmp_path):
    spec = json.loads((ROOT / "presets/tiny-char.json").read_text())
    spec["d_model"] = 130  # not divisible by 4 heads
    spec["blocks"][2]["attention"]["n_heads"] = 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(spec))
    result = cli("train", "--spec", bad, "--out", tmp_path / "run", "--no-mlflow", *FAST)
    user_error(result, "invalid training job", "spec.blocks[2].attention.n_heads")
    assert not (tmp_path / "run").exists()
    user_error(cli("train", "--spec", tmp_path / "missing.json", "--out", tmp_path / "r2", "--no-mlflow"))
    bad.write_text("{not json")
    user_error(cli("train", "--spec", bad, "--out", tmp_path / "r3", "--no-mlflow"), "not valid JSON")


def test_bad_preset_and_bad_setting_are_user_errors(tmp_path):
    user_error(cli("train", "--preset", "nope", "--out", tmp_path / "a", "--no-mlflow"), "tiny-char")
    user_error(cli("train", "--lr", "5", "--out", tmp_path / "b", "--no-mlflow"), "lr")


def test_builtin_addition(tmp_path):
    out = tmp_path / "add"
    result = ok(cli("train", "--data", "builtin:addition", "--max-chars", 24000, "--max-steps", 4,
                    "--eval-every", 4, "--out", out, "--no-mlflow", *FAST))
    assert "accuracy" in result.stdout
    assert json.loads((out / "run.json").read_text())["data"]["name"] == "addition"
    assert steps(out) == [4]


def test_bpe_tokenizer(tmp_path, shakespeare):
    out = tmp_path / "bpe"
    ok(cli("train", "--data", shakespeare, "--max-chars", 100000, "--tokenizer", "bpe", "--vocab-size", 300,
           "--max-steps", 3, "--eval-every", 3, "--out", out, "--no-mlflow", *FAST))
    record = json.loads((out / "run.json").read_text())
    assert record["tokenizer"] == {"kind": "bpe", "vocab_size": 300, "name_or_path": None}
    assert record["spec"]["vocab_size"] <= 300
    emb = load_file(out / "checkpoints/step-000003/model.safetensors")["model.embed_tokens.weight"]
    assert emb.shape[0] == record["spec"]["vocab_size"]
    ok(cli("generate", out, "--prompt", "ROMEO:", "--max-new-tokens", 5, "--temperature", 0))


# ----------------------------------------------------------------------------- DDP


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, shakespeare):
    if not TORCHRUN.is_file() and not shutil.which("torchrun"):
        pytest.skip("torchrun is not installed")
    out = tmp_path_factory.mktemp("ddp") / "run"
    result = cli("--nproc_per_node", 2, "-m", "slm_blocks", "train", "--data", shakespeare, "--max-chars", 200000,
                 "--max-steps", 20, "--eval-every", 10, "--out", out, "--no-mlflow", *FAST,
                 prefix=[str(TORCHRUN if TORCHRUN.is_file() else shutil.which("torchrun")), "--standalone"],
                 timeout=300)
    return out, result


def test_ddp_two_processes_on_cpu(ddp_run):
    out, result = ddp_run
    ok(result)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000020"]  # one folder, no leftovers
    state = json.loads((out / "checkpoints/step-000020/trainer_state.json").read_text())
    assert state["step"] == 20
    assert state["tokens_seen"] == 20 * 4 * 64 * 2  # both ranks' tokens count
    assert result.stdout.count("done: reached max_steps 20") == 1  # only rank 0 reports


def test_ddp_checkpoint_keeps_every_ranks_data_stream(ddp_run):
    """Resume must be exact under DDP too: each rank draws its own windows (seed + 1000 * rank), so each
    rank's data RNG state must be saved; otherwise after a resume every rank reads rank 0's batches."""
    out, result = ddp_run
    ok(result)
    rng = load_file(out / "checkpoints/step-000020/state.safetensors")
    assert {"data_rng_0", "data_rng_1"} <= set(rng), (
        f"the DDP checkpoint holds only {sorted(rng)}: on resume rank 1 gets rank 0's data stream")


SKEWED_CLOCK = """
import os, sys, time, types
sys.path.insert(0, {root!r})
import slm_blocks.training.loop as training
if os.environ.get("RANK") == "1":  # this rank's clock runs twice as fast as rank 0's
    t0 = time.perf_counter()
    training.time = types.SimpleNamespace(perf_counter=lambda: t0 + 2 * (time.perf_counter() - t0))
from slm_blocks.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ddp_max_time_ends_every_rank_at_the_same_step(tmp_path, shakespeare):
    """max_time must be one decision for all ranks. Each rank reads its own clock, so when the ranks' elapsed
    times straddle max_time one rank enters finish() (a barrier) while the other starts another step (a
    gradient all-reduce): a deadlock. Unskewed it happens in about 1 of 8 real runs here; a clock that runs
    fast on rank 1 makes it certain."""
    if not TORCHRUN.is_file():
        pytest.skip("torchrun is not installed")
    script = tmp_path / "skewed.py"
    script.write_text(SKEWED_CLOCK.format(root=str(ROOT)))
    out = tmp_path / "run"
    result = cli("train", "--data", shakespeare, "--max-chars", 200000, "--max-steps", 100000, "--max-time", 2,
                 "--eval-every", 0, "--out", out, "--no-mlflow", *FAST,
                 prefix=[str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script)], timeout=40)
    assert result.returncode is not None, "DDP run with --max-time deadlocked (killed after 40 s): " \
                                          f"{result.stderr[-1500:]}"
    ok(result)
    assert "reached max_time" in result.stdout


# ----------------------------------------------------------------------------- the job schema on the command line


def test_every_training_setting_has_a_flag_with_help():
    from dataclasses import fields

    from slm_blocks.training.config import TrainConfig

    text = ok(cli("train", "--help")).stdout
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, f"{flag} is missing from train --help"
    assert "--no-compile" in text and "linear warmup to the peak learning rate" in " ".join(text.split())
    assert "default: min(20, max_steps / 10)" in " ".join(text.split())


def test_job_file_flags_override_and_print_job(tmp_path):
    job = {"spec": "gpt2", "data": {"source": "builtin", "name": "addition"}, "tokenizer": {"kind": "char"},
           "train": {"max_steps": 50, "lr": 3e-4, "batch_size": 8}, "run_name": "from-file"}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    printed = ok(cli("train", "--job", path, "--lr", "1e-3", "--warmup-steps", "7", "--print-job"))
    resolved = json.loads(printed.stdout)
    assert resolved["train"]["lr"] == 1e-3 and resolved["train"]["warmup_steps"] == 7  # flags win
    assert resolved["train"]["max_steps"] == 50 and resolved["train"]["batch_size"] == 8  # the file's settings
    assert resolved["data"]["name"] == "addition" and resolved["run_name"] == "from-file"
    assert resolved["spec"]["name"] == "gpt2" and resolved["init_from"] is None and resolved["teacher"] is None
    assert "derived: warmup_steps=7" in printed.stderr
    # the printed job is a job file: reusing it resolves to the same job
    again = tmp_path / "again.json"
    again.write_text(printed.stdout)
    assert json.loads(ok(cli("train", "--job", again, "--print-job")).stdout) == resolved
    # 'auto' empties an optional setting the file had set
    assert json.loads(ok(cli("train", "--job", path, "--warmup-steps", "auto", "--print-job")).stdout)[
        "train"]["warmup_steps"] is None
    # problems name the field (file or flag alike), all at once
    result = cli("train", "--job", path, "--lr", "fast", "--batch-size", "0", "--print-job")
    user_error(result, "train.lr: must be a number", "train.batch_size")
    path.write_text("{nope")
    user_error(cli("train", "--job", path, "--print-job"), "--job", "not valid JSON")


def test_train_from_a_job_file_and_resume_with_extra_steps(tmp_path, cli_env):
    job = {"spec": "tiny-char", "data": {"source": "builtin", "name": "addition", "max_chars": 24000},
           "train": {"max_steps": 6, "batch_size": 4, "eval_every": 3, "eval_batches": 2, "sample_tokens": 8,
                     "device": "cpu"}, "run_name": "jobrun"}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    out = tmp_path / "jobrun"
    ok(cli("train", "--job", path, "--out", out, "--no-mlflow"))
    assert steps(out) == [6]
    record = json.loads((out / "run.json").read_text())
    assert record["train"]["eval_every"] == 3 and record["data"]["name"] == "addition"
    result = ok(cli("train", "--out", out, "--resume", "--extra-steps", 4, "--no-mlflow"))
    assert "reached max_steps 10" in result.stdout and steps(out)[-1] == 10
    record = json.loads((out / "run.json").read_text())
    assert record["train"]["max_steps"] == 10 and record["schedule"]["start_step"] == 6
    user_error(cli("train", "--out", out, "--resume", "--extra-steps", "lots", "--no-mlflow"), "--extra-steps")
    user_error(cli("train", "--extra-steps", 3, "--out", tmp_path / "x", "--no-mlflow"), "--resume")
    user_error(cli("train", "--out", tmp_path / "g", "--init-from", "someone/model", "--no-mlflow"),
               "init_from")  # offline here: the Hub id cannot be read, and the message names the field
    assert not (tmp_path / "g").exists()
