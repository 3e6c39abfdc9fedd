"""LiveCodeBench: release-file decoding (compressed private tests), date selection, the
base-model prompt, code extraction, the official stdout comparison, and sandboxed grading of
correct / wrong / timing-out / crashing programs on stdin and functional problems."""

import base64
import json
import pickle
import zlib

import pytest

from zen_code_jax.config import base_config
from zen_code_jax.eval import lcb_harness, livecodebench
from zen_code_jax.eval.base import EvalContext
from zen_code_jax.eval.registry import check_task_options, data_overrides, get_task
from zen_code_jax.eval.sandbox import SandboxLimits

LIMITS = SandboxLimits(timeout_s=20.0)


def fence(code: str) -> str:
    return f"Here it is.\n```python\n{code}\n```\n"


def tc(inp: str, out: str, kind: str = "stdin") -> dict:
    return {"input": inp, "output": out, "testtype": kind}


def row(qid, date, content, public, private, *, starter="", func=None, diff="easy", plat=None):
    """A row as the code_generation_lite release files have it (private tests compressed)."""
    return {
        "question_title": qid,
        "question_content": content,
        "platform": plat or ("leetcode" if func else "atcoder"),
        "question_id": qid,
        "contest_id": "c" + qid,
        "contest_date": f"{date}T00:00:00",
        "starter_code": starter,
        "difficulty": diff,
        "public_test_cases": json.dumps(public),
        "private_test_cases": livecodebench.encode_test_cases(private),
        "metadata": json.dumps({"func_name": func} if func else {}),
    }


STARTER = "class Solution:\n    def addAll(self, nums: List[int], k: int) -> List[int]:\n        "
ROWS = [
    # stdin, several test cases in one input, answers on several lines
    row(
        "abc001_a",
        "2024-05-04",
        "First line T, then T lines of two integers a b. Print a+b for each.",
        [tc("2\n1 2\n3 4\n", "3\n7\n")],
        [tc("1\n10 -3\n", "7\n"), tc("3\n0 0\n5 5\n1 1\n", "0\n10\n2")],
    ),
    # stdin with a float answer
    row(
        "abc002_b",
        "2024-06-15",
        "Print a/b.",
        [tc("1 2\n", "0.5000\n")],
        [tc("3 4\n", "0.75\n")],
        diff="medium",
    ),
    # functional (LeetCode): JSON arguments one per line, JSON result
    row(
        "3001",
        "2024-07-20",
        "Add k to every element.",
        [tc("[1, 2]\n3", "[4, 5]", "functional")],
        [tc("[]\n1", "[]", "functional"), tc("[-1]\n1", "[0]", "functional")],
        starter=STARTER,
        func="addAll",
        diff="hard",
    ),
]

SOLUTIONS = {
    "abc001_a": "t = int(input())\nfor _ in range(t):\n    a, b = map(int, input().split())\n"
    "    print(a + b)\n",
    "abc002_b": "import sys\na, b = map(int, sys.stdin.buffer.readline().split())\nprint(a / b)\n",
    "3001": "class Solution:\n    def addAll(self, nums: List[int], k: int) -> List[int]:\n"
    "        return tuple(x + k for x in nums)\n",
}


@pytest.fixture
def release(tmp_path):
    f = tmp_path / "test.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return f


def options(path, **kw):
    return livecodebench.LcbOptions(path=str(path), **kw)


# ------------------------------------------------------------------------- loading, selection
def test_compressed_private_tests_decode_as_the_release_files_encode_them():
    tests = [tc("1\n", "2\n")]
    enc = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()
    assert livecodebench.decode_test_cases(enc) == tests
    assert livecodebench.decode_test_cases(json.dumps(tests)) == tests


def test_a_pickle_that_names_a_class_is_refused():
    evil = base64.b64encode(zlib.compress(pickle.dumps(SandboxLimits()))).decode()
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        livecodebench.decode_test_cases(evil)


def test_rows_load_with_public_then_private_tests_sorted_by_question_id(release):
    probs = livecodebench.load_problems(options(release))
    assert [p["task_id"] for p in probs] == ["3001", "abc001_a", "abc002_b"]
    a = probs[1]
    assert [t["output"] for t in a["tests"]] == ["3\n7\n", "7\n", "0\n10\n2"]
    assert probs[0]["func_name"] == "addAll" and a["func_name"] == ""


def test_a_directory_of_release_files_loads_every_file(tmp_path):
    (tmp_path / "test.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    (tmp_path / "test2.jsonl").write_text(json.dumps(ROWS[2]) + "\n")
    (tmp_path / "predictions.jsonl").write_text('{"not": "a problem"}\n')  # not a release file
    probs = livecodebench.load_problems(options(tmp_path))
    assert sorted(p["task_id"] for p in probs) == ["3001", "abc001_a"]


def test_selection_by_contest_date_is_inclusive_and_a_config_line(release):
    def ids(**kw):
        return [p["task_id"] for p in livecodebench.load_problems(options(release, **kw))]

    assert ids(since="2024-06-15") == ["3001", "abc002_b"]
    assert ids(until="2024-06-15") == ["abc001_a", "abc002_b"]
    assert ids(since="2024-05-05", until="2024-07-19") == ["abc002_b"]
    assert ids(difficulties=("hard",)) == ["3001"]
    assert ids(platforms=("atcoder",)) == ["abc001_a", "abc002_b"]
    c = base_config()
    c.eval.task_options = {"livecodebench": dict(path=str(release), since="2024-07-01")}
    task = get_task("livecodebench")
    assert [p["task_id"] for p in task.problems(EvalContext(config=c))] == ["3001"]


def test_bad_options_fail_early_with_the_fix():
    for bad, msg in [
        (dict(since="June"), "YYYY-MM-DD"),
        (dict(since="2024-08-01", until="2024-07-01"), "after"),
        (dict(difficulties=("extreme",)), "choose from"),
        (dict(extract="xml"), "choose from"),
        (dict(numbers="fuzzy"), "choose from"),
    ]:
        with pytest.raises(ValueError, match=msg):
            check_task_options({"task_options": {"livecodebench": bad}})
    assert data_overrides(["livecodebench"], "/d") == {"eval.task_options.livecodebench.path": "/d"}


# ------------------------------------------------------------------------- prompt, extraction
def test_base_model_prompt_zero_and_one_shot(release, tmp_path):
    probs = {p["task_id"]: p for p in livecodebench.load_problems(options(release))}
    stdin_p, func_p = probs["abc001_a"], probs["3001"]
    assert stdin_p["prompt"] == f"### Question\n{stdin_p['question']}\n\n### Answer\n\n"
    assert func_p["prompt"] == (
        f"### Question\n{func_p['question']}\n\n### Starter Code\n{STARTER}\n\n### Answer\n\n"
    )
    shots = tmp_path / "shots"
    shots.mkdir()
    (shots / "func.json").write_text(
        json.dumps([{"question": "Q1", "sample_code": "S1", "answer": "A1"}])
    )
    (shots / "stdin.json").write_text(json.dumps([{"question": "Q2", "answer": "A2"}]))
    fewshot = livecodebench.load_fewshot(str(shots))
    assert livecodebench.build_prompt(func_p, fewshot).startswith(
        "### Question\nQ1\n\n### Starter Code\nS1\n\n### Answer\n\nA1\n\n### Question\n"
    )
    assert livecodebench.build_prompt(stdin_p, fewshot) == (
        "### Question\nQ2\n\n### Answer\n\nA2\n\n" + stdin_p["prompt"]
    )


def test_code_is_taken_between_the_first_two_fence_lines():
    assert livecodebench.extract_code("x\n```python\na=1\nb=2\n```\n```\nc\n```") == "a=1\nb=2"
    assert livecodebench.extract_code("```python\nunclosed") == ""
    assert livecodebench.extract_code("  print(1)\n", "raw") == "print(1)"


# ------------------------------------------------------------------------- comparison rules
@pytest.mark.parametrize(
    "got,want,ok",
    [
        ("3\n7\n", "3\n7\n", True),
        ("3   \n7\t\n\n\n", "3\n7", True),  # trailing whitespace, blank lines at the end
        ("  3\n  7", "3\n7\n", True),  # leading whitespace per line
        ("3 7", "3\n7", False),  # line structure matters
        ("0.5", "0.5000", True),  # tokens compare as decimals
        ("1 2.50 3", "1 2.5 3.000", True),
        ("0.333", "0.3333", False),  # no tolerance: equal decimals only
        ("1e3", "1000", True),
        ("Yes", "yes", False),
        ("3\n\n7", "3\n7", False),  # an inner blank line is a line
    ],
)
def test_stdout_comparison_follows_livecodebench(got, want, ok):
    assert lcb_harness.stdout_matches(got, want)[0] is ok


@pytest.mark.parametrize(
    "got,want,ok",
    [
        ("0.333333", "0.3333333", True),  # within rtol 1e-5
        ("0.3333", "0.3333333", False),
        ("1000000.1", "1000000", True),
        ("2 0.5", "2 0.500001", True),
        ("2 0.5", "2 0.50001", False),
        ("2", "2 0", False),
        ("yes", "no", False),
    ],
)
def test_stdout_comparison_with_float_tolerance(got, want, ok):
    assert lcb_harness.stdout_matches(got, want, "allclose")[0] is ok
    assert lcb_harness.close_floats(got, want) is ok


def test_the_number_rule_reaches_the_sandboxed_harness(release):
    p = {q["task_id"]: q for q in livecodebench.load_problems(options(release))}["abc002_b"]
    near = fence("a, b = map(int, input().split())\nprint(a / b + 1e-7)\n")
    strict = graded([p], {"abc002_b": [near]})
    loose = graded([p], {"abc002_b": [near]}, numbers="allclose")
    assert (strict.records[0]["result"], loose.records[0]["result"]) == ("wrong_answer", "passed")


# ------------------------------------------------------------------------- sandboxed grading
def graded(problems, outputs, **kw):
    return livecodebench.score(problems, outputs, limits=LIMITS, workers=2, timeout_s=2.0, **kw)


def test_correct_wrong_timeout_and_crash_on_stdin_and_functional(release):
    probs = livecodebench.load_problems(options(release))
    by_id = {p["task_id"]: p for p in probs}
    outputs = {
        "abc001_a": [
            fence(SOLUTIONS["abc001_a"]),
            fence("t = int(input())\nfor _ in range(t):\n    print(0)\n"),  # wrong
            fence("while True:\n    pass\n"),  # times out on test 1
            fence("raise ValueError('boom')\n"),  # crashes
        ],
        "abc002_b": [
            fence(SOLUTIONS["abc002_b"]),
            "no code block at all",  # empty program: no output
            fence("print(1 +)\n"),  # does not compile
        ],
        "3001": [
            fence(SOLUTIONS["3001"]),
            fence(STARTER + "return nums\n"),  # wrong
            fence(STARTER + "while True:\n            pass\n"),  # times out
            fence(STARTER + "return nums[5]\n"),  # crashes (IndexError)
            fence(
                "import os\nclass Solution:\n    def addAll(self, nums, k):\n"
                "        if os.fork() == 0:\n            os._exit(0)\n"
                "        return [x + k for x in nums]\n"
            ),  # forks: refused
        ],
    }
    res = graded([by_id[k] for k in outputs], outputs)
    got = {(r["task_id"], i): r for i, r in enumerate(res.records)}
    results = [(r["task_id"], r["passed"], r["result"]) for r in res.records]
    assert results[:4] == [
        ("abc001_a", True, "passed"),
        ("abc001_a", False, "wrong_answer"),
        ("abc001_a", False, "time_limit"),
        ("abc001_a", False, "runtime_error"),
    ], results
    assert results[4:7] == [
        ("abc002_b", True, "passed"),
        ("abc002_b", False, "wrong_answer"),
        ("abc002_b", False, "compile_error"),
    ]
    assert [r[1:] for r in results[7:11]] == [
        (True, "passed"),
        (False, "wrong_answer"),
        (False, "time_limit"),
        (False, "runtime_error"),
    ], results
    assert results[11][1:] == (False, "runtime_error")  # fork: EPERM in the single-process harness
    assert "PermissionError" in res.records[11]["stderr"]
    assert got[("abc001_a", 1)]["failed_test"] == 1
    assert res.metrics["pass@1"] == pytest.approx((1 / 4 + 1 / 3 + 1 / 5) / 3)
    assert res.metrics["pass@1_easy"] == pytest.approx(1 / 4)
    assert res.metrics["pass@1_medium"] == pytest.approx(1 / 3)
    assert res.metrics["pass@1_hard"] == pytest.approx(1 / 5)
    assert res.metrics["num_problems"] == 3.0


def test_a_wrong_answer_on_a_private_test_fails_and_fd0_input_works(release):
    p = {q["task_id"]: q for q in livecodebench.load_problems(options(release))}["abc001_a"]
    # right on the public test (two cases), wrong once a case has a negative number
    code = (
        "t = int(input())\nfor _ in range(t):\n    a, b = map(int, input().split())\n"
        "    print(abs(a) + abs(b))\n"
    )
    fd0 = (  # reads fd 0 directly and ends with sys.exit(): both fine, as in lcb_runner
        "import sys\nv = list(map(int, open(0).read().split()))\n"
        "print('\\n'.join(str(v[i] + v[i + 1]) for i in range(1, len(v), 2)))\nsys.exit(0)\n"
    )
    res = graded([p], {"abc001_a": [fence(code), fence(fd0)]})
    assert res.records[0]["result"] == "wrong_answer"
    assert res.records[0]["failed_test"] == 2
    assert res.records[1]["result"] == "passed", res.records[1]["stderr"]


def test_the_expected_outputs_are_not_on_disk_for_the_candidate(release):
    p = {q["task_id"]: q for q in livecodebench.load_problems(options(release))}["abc001_a"]
    cheat = (
        "import json, os, sys\n"
        "data = sys.stdin.read()\n"
        "if os.path.exists('tests.json'):\n"
        "    for t in json.load(open('tests.json')):\n"
        "        if t['input'] == data:\n"
        "            print(t['output'])\n"
        "else:\n"
        "    print('gone')\n"
    )
    res = graded([p], {"abc001_a": [fence(cheat)]})
    assert res.records[0]["result"] == "wrong_answer"
    assert "'gone'" in res.records[0]["stderr"]


def test_a_problem_with_big_tests_gets_room_for_them():
    big = "x" * (40 << 20)  # 40 MiB of input: over the default 16 MiB file and 64 MiB disk
    p = {"tests": [{"input": big, "output": "1"}] * 2}
    lim = livecodebench.problem_limits(SandboxLimits(), p, 6.0)
    assert lim.timeout_s == (6 + 1) * 2 + 5 and lim.cpu_s == 19
    assert lim.max_file_bytes > len(big) and lim.max_disk_mb >= 64 + 3 * 80
    assert lim.memory_mb >= 1024 + 4 * 80
    small = livecodebench.problem_limits(SandboxLimits(timeout_s=60), {"tests": [p["tests"][0]]}, 1)
    assert small.timeout_s == 60


class Oracle:
    """Answers every prompt with its problem's solution for even seeds, junk for odd ones."""

    def __init__(self, problems):
        self.by_prompt = {p["prompt"]: SOLUTIONS[p["task_id"]] for p in problems}
        self.calls = []

    def generate(self, prompts, *, max_new_tokens, temperature, top_p, stop, seed):
        self.calls.append((len(prompts), tuple(stop), seed))
        if seed % 2 == 0:
            return [fence(self.by_prompt[p]) + "\n### Question\nmore" for p in prompts]
        return ["```python\nprint(\n```" for _ in prompts]


def test_task_with_a_fake_engine_and_two_samples(release):
    c = base_config()
    c.eval.num_samples = 2
    c.eval.sandbox_timeout_s = 20.0
    c.eval.task_options = {"livecodebench": dict(path=str(release), timeout_s=2.0)}
    task = get_task("livecodebench")
    engine = Oracle(task.problems(EvalContext(config=c)))
    res = task.evaluate(EvalContext(config=c, engine=engine))
    assert engine.calls == [(3, ("###",), 0), (3, ("###",), 1)]
    assert res.metrics["pass@1"] == pytest.approx(0.5)
    assert res.metrics["pass@2"] == pytest.approx(1.0)
    assert "### Question" not in res.records[0]["completion"]
    se = task.standard_errors(res.records, c.eval)
    assert se["pass@1"] == pytest.approx(0.0)
