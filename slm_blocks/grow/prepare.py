"""Prepare a run that starts from trained weights (`init_from`) and/or learns from a teacher (`teacher`).

The driver calls `prepare_grown_run` instead of `prepare_run` for such jobs when the entry point hands it in
(training/driver.py, `growth_hook`: the CLI, the app's grow worker, `drive` below). Everything that can be refused is checked first (where the sources are, their size against
the cap, whether student and teacher read the same tokens), so a refused job writes nothing. Then the run
folder is prepared like any other, with two additions the training loop reads on its own:

    init/model.safetensors     the weights step 0 starts from (the run keeps the source's architecture and tokenizer)
    teacher/                   a frozen copy of the teacher (distill.py), so resuming is exact
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..training.distill import TEACHER_DIR, save_teacher
from ..training.job import Job
from ..training.run import INIT_WEIGHTS, Run, prepare_run, save_init_weights
from ..training.tokenization import token_ids
from .source import Source, locate, problem


def same_tokenizer(a, b) -> bool:
    """Two tokenizers that give every text the same ids (the same vocabulary, token for token)."""
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


def _check_tokenizer_choice(job: Job, teacher: Source, teacher_kind: str) -> None:
    """A student learns the teacher's distribution over the teacher's tokens: it takes the teacher's tokenizer.
    A tokenizer chosen explicitly that is another one is refused rather than silently replaced."""
    t = job.tokenizer
    other = (t.kind in ("byte", "bpe") and t.kind != teacher_kind) or \
        (t.kind == "pretrained" and (t.name_or_path or "") not in ("", teacher.text, teacher.label))
    if other:
        raise problem("teacher.source", f"{teacher.label} reads text with its own tokenizer ({teacher_kind}), but "
                      f"this job asks for the {t.kind} tokenizer; a student must use its teacher's tokenizer (it gets "
                      "it automatically): leave the tokenizer at its default")


def prepare_grown_run(job: Job, run_dir: str | Path, caps=None, status=None) -> Run:
    """The run folder for a fine-tuning and/or distillation job; see the module docstring. JobError (naming
    `init_from` or `teacher.source`) for anything refused, before anything is written."""
    say = status or (lambda text: None)
    say("finding the models to start from / learn from")
    init = locate(job.init_from, "init_from", caps) if job.init_from else None
    teacher = locate(job.teacher.source, "teacher.source", caps) if job.teacher else None
    if init and teacher and init.spec.vocab_size != teacher.spec.vocab_size:
        raise problem("teacher.source", f"{teacher.label} scores {teacher.spec.vocab_size:,} tokens but the student "
                      f"({init.label}) {init.spec.vocab_size:,}; distillation needs one tokenizer for both")
    w_init = init.load(say) if init else None
    w_teacher = teacher.load(say) if teacher else None
    if w_init and w_teacher and not same_tokenizer(w_init.tokenizer, w_teacher.tokenizer):
        raise problem("teacher.source", f"{teacher.label} uses another tokenizer than the student ({init.label}): "
                      f"their vocabularies differ ({len(w_teacher.tokenizer):,} vs {len(w_init.tokenizer):,} tokens"
                      " or other tokens); distill from a teacher that reads the same tokens")
    if teacher and not init:
        _check_tokenizer_choice(job, teacher, getattr(w_teacher.tokenizer_config, "kind", "pretrained"))
    # the run keeps the source's architecture; a distilled student from scratch is the job's spec, with the
    # teacher's vocabulary (its logits must line up with the teacher's)
    spec = init.spec if init else job.spec.copy(vocab_size=teacher.spec.vocab_size)
    given = w_init or w_teacher
    out = Path(run_dir)
    existed = out.exists()
    run = prepare_run(out, spec, job.data, given.tokenizer_config, job.train, caps=caps, status=say,
                      tokenizer_obj=given.tokenizer)
    unk = getattr(given.tokenizer, "unk_token_id", None)
    if unk is not None and len(run.train_tokens):
        share = float((run.train_tokens == unk).float().mean())
        if share > 0.01:  # e.g. a char tokenizer from other text: those characters all read as one token
            say(f"note: {share:.0%} of this data's tokens are unknown to {(init or teacher).label}'s tokenizer "
                "(characters it never saw); the model cannot learn them")
    try:
        if w_init:
            say(f"copying the weights of {init.label}")
            save_init_weights(run.dir, w_init.state)
            run.meta["init_from"] = init.record()
        if w_teacher:
            say(f"freezing the teacher {teacher.label}")
            record = {**teacher.record(), "alpha": job.teacher.alpha, "temperature": job.teacher.temperature}
            save_teacher(run.dir, teacher.spec, w_teacher.state, token_ids(w_teacher.tokenizer), record)
            run.meta["teacher"] = record
        run.save()
        run.new_model()  # the initial weights must fit the spec now, not at step 0 in a worker
        if w_teacher:
            from ..training.distill import Teacher

            Teacher.from_run(run.dir, "cpu")
    except Exception:
        for part in (INIT_WEIGHTS, TEACHER_DIR):  # a half-prepared run must not train
            target = run.dir / part
            shutil.rmtree(target.parent if part == INIT_WEIGHTS else target, ignore_errors=True)
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return run


def drive(job: Job | None, run_dir: str | Path, **kw) -> int:
    """`training.driver.drive` with this layer's preparer: runs that start from weights or learn from a teacher
    (what the CLI and the app's grow worker run; see training/driver.py, growth_hook)."""
    from ..training.driver import drive as _drive

    return _drive(job, run_dir, grow_prepare=prepare_grown_run, **kw)
