"""Sequence-level distillation data from the frontier tier's served answers (paper 3.4 step 4-5).

Each selected query is sent to T4 (through the live server, POLICY always-t4: a real, billed call;
or, replayed, T4's recorded answer on the pack's router pool with its billed price) and its answer
becomes the training target of the cheapest tier that serves the task: T1's head for
structured tasks, T2 for generation tasks (the tiers whose gains move traffic off T4).

Only tasks where T4 is the better tier on the router pool (task metric, teacher vs student) are
distilled at all: on a task where the student already beats T4, T4's answers only teach mistakes.
Within those, a teacher answer to one of the cluster-targeted queries is kept only when it scores
better than the student's own answer on that query (the pool has references, which is how failures
were found in the first place); the random share is kept unfiltered, as a random replay of the
teacher's behaviour (filtering it would leave only the cases the student already gets wrong).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clients.served_eval import ServedAnswer, served_prediction
from export.stage_cache import fingerprint
from routenlp.metrics import example_score
from routenlp_core.answers import format_target, prompt_text
from routenlp_core.tasks import get_task

TEACHER = "t4"


def student_tier(task: str) -> str:
    """The cheapest tier that serves `task`: T1 heads exist for structured tasks only."""
    return "t1" if get_task(task).structured else "t2"


@dataclass(frozen=True)
class TeacherAnswer:
    """T4's answer to one selected query, however it was obtained (served or replayed)."""

    record: Mapping[str, Any]
    prediction: Any
    dollars: float
    error: str | None = None


def served_teacher(answers: Sequence[ServedAnswer]) -> list[TeacherAnswer]:
    """Served always-t4 answers as teacher answers (a failed call stays a failure)."""
    return [
        TeacherAnswer(a.record, None, 0.0, a.error)
        if a.error
        else TeacherAnswer(a.record, served_prediction(a), float(a.metadata.get("cost_usd", 0.0)))
        for a in answers
    ]


@dataclass(frozen=True)
class Example:
    """One distillation example: the query and the teacher's answer as its target."""

    record: Mapping[str, Any]  # the pool record with "target" replaced by the teacher's prediction
    student: str
    teacher_quality: float
    student_quality: float

    def prompt_pair(self) -> tuple[str, str]:
        """(prompt, answer text) for a decoder student, formatted as the build trains decoders."""
        return prompt_text(self.record), format_target(self.record)


@dataclass
class Distillation:
    """What one iteration distils, and which pool records each tier has now been trained on
    (cumulative over iterations: an answer of a tier on text it trained on is never a label)."""

    examples: list[Example] = field(default_factory=list)
    trained_on: dict[str, set[str]] = field(default_factory=dict)
    asked: int = 0  # queries sent to the teacher
    teacher_dollars: float = 0.0
    teacher_errors: int = 0
    unlearnable: int = 0  # teacher answers outside the student head's label set: no target
    skipped_tasks: tuple[str, ...] = ()  # tasks where T4 is not the better tier: nothing distilled

    def for_student(self, tier: str) -> list[Example]:
        return [e for e in self.examples if e.student == tier]

    def t1_records(self) -> dict[str, list[Mapping[str, Any]]]:
        """task -> records with the teacher's labels, for the T1 heads."""
        out: dict[str, list[Mapping[str, Any]]] = {}
        for example in self.for_student("t1"):
            out.setdefault(example.record["task"], []).append(example.record)
        return out

    def key(self) -> str:
        """Fingerprint of the training data (a stage-cache input of the distilled tiers)."""
        rows = sorted((e.student, e.record["id"], repr(e.record["target"])) for e in self.examples)
        return fingerprint({"examples": rows, "trained_on": {t: sorted(ids) for t, ids in sorted(self.trained_on.items())}})

    def summary(self) -> dict[str, Any]:
        by_student = {tier: len(self.for_student(tier)) for tier in ("t1", "t2")}
        by_task: dict[str, int] = {}
        for example in self.examples:
            by_task[example.record["task"]] = by_task.get(example.record["task"], 0) + 1
        return {
            "asked_teacher": self.asked,
            "kept": len(self.examples),
            "kept_by_student": by_student,
            "kept_by_task": dict(sorted(by_task.items())),
            "teacher_dollars": round(self.teacher_dollars, 4),
            "teacher_errors": self.teacher_errors,
            "unlearnable": self.unlearnable,
            "skipped_tasks": list(self.skipped_tasks),
        }


def head_can_learn(record: Mapping[str, Any], prediction: Any) -> bool:
    """Whether a T1 head can take `prediction` as its label: one of the task's labels, or for NER
    one known tag per word. T4 decodes free text, so its answer can fall outside the label set."""
    from routenlp_core.labels import task_labels
    from routenlp_core.t1_codec import is_token_task, record_words

    labels = set(task_labels(record["task"]))
    if is_token_task(record["task"]):
        words = record_words(record)
        return isinstance(prediction, list) and len(prediction) == len(words) and set(prediction) <= labels
    return isinstance(prediction, str) and prediction in labels


def teacher_better_tasks(student_rows: Mapping[str, Mapping[str, Mapping[str, Any]]], records: Sequence[Mapping[str, Any]]) -> dict[str, bool]:
    """task -> whether T4's answers beat the student tier's on the router pool (the task metric)."""
    from routenlp.metrics import corpus_score

    by_task: dict[str, list] = {}
    for record in records:
        rows = student_rows.get(record["id"], {})
        if TEACHER in rows and student_tier(record["task"]) in rows:
            by_task.setdefault(record["task"], []).append(record)
    better = {}
    for task, rows in by_task.items():
        score = {tier: corpus_score(task, [student_rows[r["id"]][tier]["prediction"] for r in rows], [r["target"] for r in rows]) for tier in (TEACHER, student_tier(task))}
        better[task] = score[TEACHER] > score[student_tier(task)]
    return better


def build_distillation(
    teacher_answers: Sequence[TeacherAnswer],
    student_rows: Mapping[str, Mapping[str, Mapping[str, Any]]],
    previously_trained: Mapping[str, set[str]],
    *,
    filtered: set[str] | frozenset[str] | None = None,
    teacher_better: Mapping[str, bool] | None = None,
) -> Distillation:
    """Distillation examples from T4's answers on the selected queries.

    `student_rows`: id -> tier -> the latest answer row of each tier on the pool (export.labeling
    rows: prediction, quality). `filtered`: the query ids whose teacher answer must beat the
    student's to be kept (None: all of them); the others are kept as they are, except an answer a T1
    head cannot take as a label (counted as unlearnable). `teacher_better`:
    task -> False skips the task. A query whose teacher call failed is skipped and counted."""
    skipped = tuple(sorted(task for task, ok in (teacher_better or {}).items() if not ok))
    distillation = Distillation(trained_on={tier: set(ids) for tier, ids in previously_trained.items()}, asked=len(teacher_answers), skipped_tasks=skipped)
    for answer in teacher_answers:
        if answer.error is not None:
            distillation.teacher_errors += 1
            continue
        distillation.teacher_dollars += answer.dollars
        record = answer.record
        if record["task"] in skipped:
            continue
        student = student_tier(record["task"])
        prediction = answer.prediction
        if student == "t1" and not head_can_learn(record, prediction):
            distillation.unlearnable += 1
            continue
        teacher_quality = example_score(record["task"], prediction, record["target"])
        student_quality = float(student_rows[record["id"]][student]["quality"])
        if (filtered is None or record["id"] in filtered) and teacher_quality <= student_quality:
            continue
        distillation.examples.append(Example({**record, "target": prediction}, student, round(teacher_quality, 6), student_quality))
        distillation.trained_on.setdefault(student, set()).add(record["id"])
    return distillation
