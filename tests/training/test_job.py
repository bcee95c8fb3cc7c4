"""The job schema: one parser for CLI, worker, API and form; every problem named by its field path and fix; app vs
CLI context; caps; growth fields parsed now; derived settings identical wherever the job comes from."""

import json
from dataclasses import fields

import pytest

from slm_blocks import load_preset
from slm_blocks.training.config import TrainConfig
from slm_blocks.training.data import DataConfig, is_hub_id
from slm_blocks.training.job import Caps, Job, JobError, TeacherConfig, field_label
from slm_blocks.training.schema import flatten, parse_number
from slm_blocks.training.tokenization import BPE_MIN_VOCAB, TokenizerConfig


def problems(d, context="cli", caps=None) -> dict[str, str]:
    with pytest.raises(JobError) as e:
        Job.from_dict(d, context, caps)
    return {p.path: p.message for p in e.value.problems}


def test_defaults_and_round_trip():
    job = Job()
    assert job.spec == load_preset("tiny-char") and job.data == DataConfig() and job.train == TrainConfig()
    full = Job.from_dict({"spec": "llama", "data": {"source": "hub", "hub_id": "owner/set", "split": "train[:1%]"},
                          "tokenizer": {"kind": "bpe", "vocab_size": 512},
                          "train": {"max_steps": 300, "max_time": 60, "lr": "3e-4", "warmup_steps": None},
                          "run_name": "r1", "init_from": "owner/model",
                          "teacher": {"source": "owner/big", "alpha": 0.3}})
    assert full.train.lr == 3e-4 and full.teacher == TeacherConfig("owner/big", 0.3, 2.0)
    again = Job.from_dict(json.loads(full.to_json()))
    assert again == full and again.to_dict() == full.to_dict()
    assert Job.from_json(full.to_json()) == full


def test_every_problem_at_once_with_its_path():
    got = problems({"spec": {"d_model": 130, "blocks": [{"type": "embedding"}, {"type": "transformer",
                                                                                 "attention": {"n_heads": 3}},
                                                        {"type": "lm_head"}]},
                    "data": {"source": "ftp", "val_fraction": 1.5, "paths": "a.txt"},
                    "tokenizer": {"kind": "bpe", "vocab_size": 10},
                    "train": {"lr": 0, "beta2": 1.0, "batch_size": [1], "max_steps": "x", "bogus": 1, "precision": 16},
                    "teacher": {"alpha": 2}, "extra": 1})
    assert set(got) >= {"spec.blocks[1].attention.n_heads", "data.source", "data.val_fraction", "data.paths",
                        "tokenizer.vocab_size", "train.lr", "train.beta2", "train.batch_size", "train.max_steps",
                        "train.bogus", "train.precision", "teacher.alpha", "teacher.source", "extra"}, got
    assert "greater than 0" in got["train.lr"] and "less than 1" in got["train.beta2"]
    assert "at least 259" in got["tokenizer.vocab_size"] and "remove it" in got["train.bogus"]
    assert "divisible" in got["spec.blocks[1].attention.n_heads"]


@pytest.mark.parametrize("value, why", [("abc", "must be a whole number"), ([1], "a list"), (float("inf"), "finite"),
                                        (float("nan"), "finite"), (1e400, "finite"), (True, "must be a whole number"),
                                        (2.5, "whole number"), (10**40, "at most"), ({"a": 1}, "an object")])
def test_numbers_refused_with_the_field(value, why):
    got = problems({"train": {"max_steps": value}})
    assert why in got["train.max_steps"], got
    assert len(got["train.max_steps"]) < 300  # a huge value is summarized, never echoed whole


def test_number_parser_accepts_forms_and_json():
    assert parse_number("1e-3") == (True, 1e-3, "")
    assert parse_number(" 12 ", int) == (True, 12, "")
    assert parse_number(12.0, int) == (True, 12, "")
    assert parse_number("", int, optional=True) == (True, None, "")
    assert parse_number(None, int)[0] is False
    assert parse_number("1e400")[0] is False and parse_number("nan")[0] is False


def test_json_text_errors_are_problems():
    for text, word in [("{not json", "not valid JSON"), ("[1]", "JSON object"), ("x" * 70_000, "64 KB"),
                       ("[" * 100_000 + "]" * 100_000, "64 KB"), (b"\xff\xfe", "JSON")]:
        with pytest.raises(JobError, match=word):
            Job.from_json(text)
    with pytest.raises(JobError, match="nested too deeply|64 KB"):
        Job.from_json("[" * 5000 + "]" * 5000)
    with pytest.raises(JobError, match="JSON text or an object"):
        Job.from_json(12)


def test_spec_can_be_a_preset_name_or_json_text():
    assert Job.from_dict({"spec": "gpt2"}).spec == load_preset("gpt2")
    assert Job.from_dict({"spec": load_preset("llama").to_json()}).spec == load_preset("llama")
    assert "tiny-char" in problems({"spec": "nope"})["spec"]


def test_app_context_takes_only_hub_ids_and_uploads():
    hub = {"source": "hub"}
    for bad in ["../x", "/etc/passwd", "~/data", "./set", "a/b/c", "owner/..", "..", "C:\\data", "owner/",
                "owner/.", "./x/y", "owner/name\n", ".hidden/x", "owner/-x", "owner\\name", "~user/x", "owner/name/",
                "owner/../..", "C:/Users/x", "%2e%2e/x", "owner/ name", "/owner/name"]:
        assert "not a Hub id" in problems({"data": {**hub, "hub_id": bad}}, "app")["data.hub_id"], bad
        assert not is_hub_id(bad)
        msg = problems({"tokenizer": {"kind": "pretrained", "name_or_path": bad}}, "app")["tokenizer.name_or_path"]
        assert "Hub id" in msg
    assert "upload" in problems({"data": {"source": "files", "paths": ["/srv/other-user/data.txt"]}}, "app")[
        "data.paths"]
    # the CLI keeps local paths and folders
    job = Job.from_dict({"data": {"source": "files", "paths": ["/srv/data.txt"]},
                         "tokenizer": {"kind": "pretrained", "name_or_path": "./my-tokenizer"}}, "cli")
    assert job.data.paths == ["/srv/data.txt"] and job.tokenizer.name_or_path == "./my-tokenizer"
    assert Job.from_dict({"data": {**hub, "hub_id": "owner/name.v2"}}, "app").data.hub_id == "owner/name.v2"
    for key, value in (("init_from", "/srv/run"), ("teacher", {"source": "../run"})):
        got = problems({key: value}, "app")
        assert any("Hub id" in m for m in got.values()), got


def test_a_hub_id_that_is_also_a_local_folder_is_refused_in_the_app(tmp_path, monkeypatch):
    """The app's own process resolves names for the preview, and the Hub libraries read a local folder of that
    name first: 'owner/name' relative to the server's working directory must not reach a file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "someone" / "uploads").mkdir(parents=True)
    assert not is_hub_id("someone/uploads") and is_hub_id("someone/other")
    assert "not a Hub id" in problems({"data": {"source": "hub", "hub_id": "someone/uploads"}}, "app")["data.hub_id"]
    got = problems({"tokenizer": {"kind": "pretrained", "name_or_path": "someone/uploads"}}, "app")
    assert "Hub id" in got["tokenizer.name_or_path"]
    assert Job.from_dict({"tokenizer": {"kind": "pretrained", "name_or_path": "someone/uploads"}}, "cli")


def test_tokenizer_fields_must_fit_the_kind():
    assert "bpe" in problems({"tokenizer": {"kind": "char", "vocab_size": 1024}})["tokenizer.vocab_size"]
    assert "pretrained" in problems({"tokenizer": {"kind": "byte", "name_or_path": "x/y"}})["tokenizer.name_or_path"]
    assert problems({"tokenizer": {"kind": "pretrained"}})["tokenizer.name_or_path"].startswith("is empty")
    assert BPE_MIN_VOCAB == 259
    assert Job.from_dict({"tokenizer": {"kind": "bpe", "vocab_size": 259}}).tokenizer == TokenizerConfig("bpe", 259)


def test_caps_name_the_field():
    caps = Caps(max_params=100_000, max_train_mb=10_000, max_steps=500, max_time_s=60)
    got = problems({"train": {"max_steps": 501, "max_time": 61}}, "app", caps)
    assert "at most 500" in got["train.max_steps"] and "60 s" in got["train.max_time"]
    assert "over this app's cap" in problems({}, "app", caps)["spec"]
    mem = problems({"train": {"batch_size": 4096}}, "app", Caps(max_train_mb=100))
    assert "memory" in mem["train.batch_size"]
    spec = load_preset("tiny-char").to_dict()
    spec["max_seq_len"] = 8192
    assert "at most 4,096" in problems({"spec": spec}, "app", Caps(max_context=4096))["spec.max_seq_len"]


def test_derived_settings_live_in_train_config():
    d = TrainConfig(max_steps=1000).derived(max_seq_len=64)
    assert (d.warmup_steps, d.log_every, d.eval_every, d.checkpoint_every, d.sample_tokens) == (20, 10, 100, 250, 128)
    assert d.first_eval == 25  # the app's first sample comes early
    assert d.eval_every_s is None and d.checkpoint_every_s is None
    timed = TrainConfig(max_steps=20_000, max_time=300).derived(256)
    assert timed.eval_every_s == 30 and timed.checkpoint_every_s == 75 and timed.sample_tokens == 128
    assert timed.first_eval_s == 10 and TrainConfig(max_time=30).derived(64).first_eval_s == 1.5
    explicit = TrainConfig(max_steps=1000, max_time=300, eval_every=7, warmup_steps=0).derived(64)
    assert explicit.eval_every == 7 and explicit.eval_every_s is None and explicit.warmup_steps == 0
    assert explicit.first_eval == 0 and explicit.first_eval_s is None  # an explicit interval is kept exactly
    assert "more than max_steps" in problems({"train": {"max_steps": 10, "warmup_steps": 20}})["train.warmup_steps"]


def test_app_form_and_cli_give_the_same_run(tmp_path):
    """The same job from the app's form and from the CLI's --job file: the same settings, the same derived
    intervals (the app used to derive warmup / log / checkpoint itself)."""
    import argparse

    from slm_blocks.cli import _parser, resolve_job
    from slm_blocks.ui.train_form import collect, default_of, paths

    values = [{"run_name": "same", "train.max_steps": 300, "train.max_time": "5"}.get(p, default_of(p)
                                                                                        if p != "run_name" else "")
              for p in paths()]
    values = ["" if v is None else v for v in values]
    from_form = Job.from_dict(collect(load_preset("tiny-char").to_json(), *values), "app")
    job_file = tmp_path / "job.json"
    job_file.write_text(from_form.to_json())
    args = _parser().parse_args(["train", "--job", str(job_file)])
    assert isinstance(args, argparse.Namespace)
    from_cli = resolve_job(args)
    assert from_cli == from_form
    assert from_cli.train.max_time == 300 and from_cli.train.warmup_steps is None
    assert from_cli.train.derived(64) == from_form.train.derived(64)


def test_labels_for_messages():
    assert field_label("train.lr") == "Learning rate"
    assert field_label("data.hub_id") == "Hub dataset id"
    assert field_label("spec.blocks[2].attention.n_heads") == "Model spec"
    for cls in (TrainConfig, DataConfig, TokenizerConfig, TeacherConfig):
        for f in fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


def test_flatten_is_the_one_flattener():
    flat = flatten({"a": {"b": 1, "c": None}, "hf_token": "x"}, skip_none=True)
    assert flat == {"a.b": "1", "hf_token": "***"}
