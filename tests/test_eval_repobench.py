"""RepoBench v1.1 and CrossCodeEval on small fixtures in their published formats.

Honesty checks: a fake engine that answers right scores 1, a wrong or empty answer scores
what the published metrics give by hand; prompts are the run's repository layout token for
token (`RepoFormat` on the same files, for the `report` and `qwen2.5` layouts); the token
budget drops the oldest context first; bad options fail early with one line.
"""

from __future__ import annotations

import difflib
import gzip
import json

import pytest

from zen_code_jax.config import base_config
from zen_code_jax.data.repo_format import RepoFormat
from zen_code_jax.eval import crosscodeeval as cce
from zen_code_jax.eval import repobench as rb
from zen_code_jax.eval.base import EvalContext
from zen_code_jax.eval.registry import check_task_options, data_overrides, get_task
from zen_code_jax.experiment.report_stats import task_standard_errors

LAYOUTS = ("report", "qwen2.5")


def snippet(path: str, ident: str, body: str) -> dict[str, str]:
    return {"path": path, "identifier": ident, "snippet": body}


# Rows as in tianyang/repobench_python_v1.1 / _java_v1.1 (one file per split).
RB_FIRST = [
    {
        "repo_name": "alice/shapes",
        "file_path": "shapes/area.py",
        "context": [
            snippet("shapes/units.py", "to_metres", "def to_metres(x):\n    return x / 100"),
            snippet("shapes/square.py", "Square", "class Square:\n    def __init__(self, s):"),
        ],
        "import_statement": "from shapes.square import Square\nfrom shapes.units import to_metres",
        "token_num": 120,
        "cropped_code": "def area_of(side):\n    sq = Square(side)",
        "all_code": "",
        "next_line": "    return to_metres(sq.side) ** 2",
        "gold_snippet_index": 0,
        "created_at": "2023-12-05T10:00:00+00:00",
        "level": "2k",
    },
    {
        "repo_name": "bob/bank",
        "file_path": "src/main/java/bank/Account.java",
        "context": [snippet("src/main/java/bank/Money.java", "Money", "public class Money {}")],
        "import_statement": "import bank.Money;",
        "token_num": 90,
        "cropped_code": "public class Account {\n    private Money balance;",
        "all_code": "",
        "next_line": "    public Account(Money start) {",
        "gold_snippet_index": 0,
        "created_at": "2023-11-20T10:00:00+00:00",
        "level": "4k",
    },
]
RB_IN_FILE = [
    {
        "repo_name": "alice/shapes",
        "file_path": "shapes/perimeter.py",
        "context": [
            snippet("shapes/units.py", "to_metres", "def to_metres(x):\n    return x / 100")
        ],
        "import_statement": "",
        "token_num": 80,
        "cropped_code": "def perimeter(side):\n    total = 4 * side",
        "all_code": "",
        "next_line": "    return total",
        "gold_snippet_index": -1,
        "created_at": "2023-12-24T10:00:00+00:00",
        "level": "2k",
    },
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def rb_dir(tmp_path):
    d = tmp_path / "repobench"
    d.mkdir()
    write_jsonl(d / "cross_file_first.jsonl", RB_FIRST)
    (d / "in_file.jsonl.gz").write_bytes(
        gzip.compress("".join(json.dumps(r) + "\n" for r in RB_IN_FILE).encode())
    )
    return d


def cfg(**eval_overrides):
    c = base_config()
    c.train.seq_len = 4096
    c.eval.max_new_tokens = 32
    for k, v in eval_overrides.items():
        c.eval[k] = v
    return c


class Engine:
    """Answers each prompt by the first marker found in its decoded text; records prompts."""

    def __init__(self, tok, answers: dict[str, str]):
        self.tok, self.answers = tok, answers
        self.prompts: list[list[int]] = []
        self.calls: list[dict] = []

    def generate_ids(self, prompt_ids, *, max_new_tokens, temperature, top_p, stop, seed):
        self.calls.append(dict(max_new_tokens=max_new_tokens, stop=tuple(stop), seed=seed))
        out = []
        for ids in prompt_ids:
            self.prompts.append(list(ids))
            text = self.tok.decode(ids)
            out.append(next(a for m, a in self.answers.items() if m in text))
        return out


def rb_ctx(tok, path, engine=None, layout="report", **eval_overrides):
    c = cfg(**eval_overrides)
    c.eval.task_options = {"repobench": dict(path=str(path))}
    return EvalContext(config=c, engine=engine, tokenizer=tok, repo_format=layout)


# ----------------------------------------------------------------------------- metrics


def test_edit_similarity_equals_fuzzywuzzy_ratio_by_hand():
    # difflib: matches M over total length T -> round(100 * 2M / T), half to even as round().
    assert rb.fuzz_ratio("abcd", "abce") == 75  # 2*3/8
    assert rb.fuzz_ratio("hello world", "hello") == 62  # 2*5/16 = 62.5 -> 62
    assert rb.fuzz_ratio("x = 1", "x = 1") == 100 and rb.fuzz_ratio("", "") == 100
    assert rb.fuzz_ratio("a", "") == 0 and rb.fuzz_ratio("", "a") == 0
    assert rb.edit_similarity("abcd", "abce") == 0.75
    # difflib's ratio depends on the order; RepoBench's eval.py passes the ground truth first.
    # "babcbb" vs "bbcac": the longest match found first differs, 2*3/11 vs 2*2/11.
    a, b = "babcbb", "bbcac"
    assert (rb.fuzz_ratio(a, b), rb.fuzz_ratio(b, a)) == (55, 36)
    assert rb.edit_similarity(a, b) == rb.fuzz_ratio(b, a) / 100
    # Unstripped, as RepoBench's edit_similarity_score: indentation counts.
    assert rb.edit_similarity("    return x", "return x") == round(100 * 16 / 20) / 100
    assert rb.exact_match("    return  x ", "return x") and not rb.exact_match(
        "return x", "return y"
    )


def test_edit_similarity_equals_the_fuzzywuzzy_package():
    from fuzzywuzzy import fuzz  # a test requirement (setup.py), so this never skips

    pairs = [
        ("abcd", "abce"),
        ("hello world", "hello"),
        ("", ""),
        ("a", ""),
        ("x" * 300, "xy" * 150),
    ]
    pairs += [
        ("    return foo(bar)", "return foo(baz)"),
        ("for i in range(10):", "for j in r(10):"),
    ]
    for a, b in pairs:
        assert rb.fuzz_ratio(a, b) == fuzz.ratio(a, b), (a, b)
        assert rb.edit_similarity(a, b) == fuzz.ratio(b, a) / 100  # RepoBench: (truth, pred)


def test_first_code_line_skips_blank_and_comment_lines():
    gen = "\n\n    # a comment\n    '''doc\n    more'''\n    return x\nnext"
    assert rb.first_code_line(gen, "python") == "    return x"
    assert rb.first_code_line("// c\n/* a\n b */\nint y;", "java") == "int y;"
    assert rb.first_code_line("# only\n# comments", "python") == "# only"
    assert rb.first_code_line("", "python") == ""


def test_identifiers_and_identifier_f1_by_hand():
    pred = 'x = foo(bar, "baz")  # qux'
    target = "x = foo(bar, y)"
    p = cce.extract_identifiers(cce.remove_comments(pred), "python")
    t = cce.extract_identifiers(target, "python")
    assert p == ["x", "foo", "bar"] and t == ["x", "foo", "bar", "y"]
    s = cce.identifier_scores(p, t)
    assert s["identifier_exact_match"] == 0.0
    assert s["identifier_precision"] == 1.0 and s["identifier_recall"] == 0.75
    assert s["identifier_f1"] == pytest.approx(6 / 7)
    # Keywords per language are not identifiers; repeats count for exact match only.
    assert cce.extract_identifiers("return this.count + other;", "java") == ["count", "other"]
    # None is in keyword.kwlist (only True / False are kept as identifiers); "2x" is no name.
    assert cce.extract_identifiers("if x is None and not True: return 2x", "python") == [
        "x",
        "True",
    ]
    assert cce.extract_identifiers("let a = await b.c(`t`, 'it\\'s');", "typescript") == [
        "a",
        "await",
        "b",
        "c",
        "t",
    ]
    assert cce.identifier_scores(["a", "a"], ["a"])["identifier_exact_match"] == 0.0
    assert cce.identifier_scores([], [])["identifier_f1"] == 0.0


def test_crosscodeeval_statement_cut_and_comment_removal():
    assert cce.statement("foo(); bar();", "java") == "foo();"
    assert cce.statement("if (x) { y(); }", "typescript") == "if (x) {"
    assert cce.statement(";rest", "csharp") == ";rest"  # its harness's position-0 quirk
    assert cce.statement("a = b; c", "python") == "a = b; c"
    s = cce.score_pair("    total = a + b  # sum", "    total = a + b", "python")
    assert s["exact_match"] and s["edit_similarity"] == 1.0 and s["identifier_f1"] == 1.0


# ----------------------------------------------------------------------------- RepoBench


def test_repobench_loads_settings_languages_and_filters(rb_dir):
    rows = rb.load_rows(rb.RepoBenchOptions(path=str(rb_dir)))
    assert [r["task_id"] for r in rows] == [
        "python/cross_file_first/0",
        "java/cross_file_first/0",
        "python/in_file/0",
    ]
    assert [
        r["task_id"]
        for r in rb.load_rows(rb.RepoBenchOptions(path=str(rb_dir), languages=("java",)))
    ] == ["java/cross_file_first/0"]
    dec = rb.RepoBenchOptions(
        path=str(rb_dir), since="2023-12-01", until="2023-12-31", levels=("2k",)
    )
    assert [r["task_id"] for r in rb.load_rows(dec)] == [
        "python/cross_file_first/0",
        "python/in_file/0",
    ]
    single = write_jsonl(rb_dir.parent / "mixed.jsonl", [{**RB_IN_FILE[0], "setting": "in_file"}])
    assert rb.load_rows(rb.RepoBenchOptions(path=str(single)))[0]["setting"] == "in_file"
    bad = write_jsonl(rb_dir.parent / "test.jsonl", RB_IN_FILE)
    with pytest.raises(ValueError, match="cannot tell the RepoBench setting"):
        rb.load_rows(rb.RepoBenchOptions(path=str(bad)))


def test_repobench_reads_the_hubs_parquet_files(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist(RB_FIRST), tmp_path / "cross_file_first-00000-of-00001.parquet"
    )
    rows = rb.load_rows(rb.RepoBenchOptions(path=str(tmp_path)))
    assert [r["next_line"] for r in rows] == [r["next_line"] for r in RB_FIRST]
    assert rows[0]["context"][1]["snippet"] == RB_FIRST[0]["context"][1]["snippet"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_repobench_prompts_are_the_runs_layout_token_for_token(tiny_tokenizer, rb_dir, layout):
    tok = tiny_tokenizer
    rows = rb.load_rows(rb.RepoBenchOptions(path=str(rb_dir)))
    engine = Engine(tok, {r["cropped_code"]: r["next_line"] for r in rows})
    res = get_task("repobench").evaluate(rb_ctx(tok, rb_dir, engine, layout))
    fmt = RepoFormat(layout)
    for row, got in zip(rows, engine.prompts):
        files = [(c["path"], c["snippet"]) for c in row["context"]]
        imports = row["import_statement"]
        prefix = (f"{imports}\n" if imports else "") + row["cropped_code"] + "\n"
        assert got == fmt.lm_prompt_ids(files, row["file_path"], prefix, tok, row["repo_name"])
        if layout == "qwen2.5":
            assert got[0] == tok.repo_name_id and tok.file_sep_id in got
        else:
            assert (
                tok.decode(got).startswith(f"# File: {files[0][0]}\n") or row["language"] == "java"
            )
    assert engine.calls[0]["max_new_tokens"] == 128  # RepoBench's generation budget
    assert res.metrics["exact_match"] == 1.0 and res.metrics["edit_similarity"] == 1.0
    for s in ("cross_file_first", "in_file"):
        assert res.metrics[f"{s}/exact_match"] == 1.0
    assert res.metrics["python/in_file/exact_match"] == 1.0  # two languages: a breakdown
    assert res.metrics["num_samples"] == 3.0


def test_repobench_wrong_and_empty_answers_score_by_hand(tiny_tokenizer, rb_dir):
    tok = tiny_tokenizer
    answers = {
        "sq = Square(side)": "    # the area\n    return to_metres(sq.side) * 2\n",  # wrong
        "private Money balance": "",  # empty
        "total = 4 * side": "\n    return   total\nmore",  # right, other spacing
    }
    res = get_task("repobench").evaluate(rb_ctx(tok, rb_dir, Engine(tok, answers)))
    by = {r["task_id"]: r for r in res.records}
    wrong = by["python/cross_file_first/0"]
    assert wrong["prediction"] == "    return to_metres(sq.side) * 2" and not wrong["exact_match"]
    m = difflib.SequenceMatcher(None, RB_FIRST[0]["next_line"], wrong["prediction"])
    # 33 of the 33 + 34 characters match: round(100 * 66 / 67) = 99.
    assert wrong["edit_similarity"] == round(100 * m.ratio()) / 100 == 0.99
    assert by["java/cross_file_first/0"]["edit_similarity"] == 0.0
    assert not by["java/cross_file_first/0"]["exact_match"]
    right = by["python/in_file/0"]
    assert (
        right["exact_match"]
        and right["edit_similarity"]
        == rb.fuzz_ratio("    return   total", "    return total") / 100
    )
    assert res.metrics["cross_file_first/exact_match"] == 0.0
    assert res.metrics["cross_file_first/edit_similarity"] == pytest.approx(0.99 / 2)
    assert res.metrics["exact_match"] == pytest.approx(1 / 3)
    se = task_standard_errors("repobench", res.records, {})
    assert se["exact_match"] > 0 and "in_file/edit_similarity" in se
    assert "java/cross_file_first/exact_match" in se


def test_repobench_budget_drops_the_oldest_context_first(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    row = {
        **RB_FIRST[0],
        "context": [
            snippet(f"pkg/m{i}.py", f"f{i}", f"def f{i}(a, b):\n    return a * {i} + b\n")
            for i in range(6)
        ],
    }
    path = write_jsonl(tmp_path / "cross_file_first.jsonl", [row])
    fmt = RepoFormat("qwen2.5")
    loaded = rb.load_rows(rb.RepoBenchOptions(path=str(path)))[0]
    full, info = rb.build_prompt(loaded, fmt, tok, 1 << 20)
    assert info["context_files_dropped"] == 0
    one_file = len(fmt.file_ids("pkg/m5.py", row["context"][5]["snippet"], tok))
    budget = len(full) - 2 * one_file  # room for all but about two snippets
    ids, info = rb.build_prompt(loaded, fmt, tok, budget)
    assert len(ids) <= budget and info["context_files_dropped"] >= 2 and not info["prefix_trimmed"]
    kept = [(c["path"], c["snippet"]) for c in row["context"]][info["context_files_dropped"] :]
    assert kept[-1][0] == "pkg/m5.py"  # the snippet nearest the target stays
    assert ids == fmt.lm_prompt_ids(
        kept, row["file_path"], rb.target_prefix(loaded), tok, row["repo_name"]
    )
    # Through the task: eval.context_tokens less max_new_tokens bounds every prompt.
    engine = Engine(tok, {"": "x"})
    c = rb_ctx(tok, path, engine, "qwen2.5", context_tokens=budget + 128)
    get_task("repobench").evaluate(c)
    assert engine.prompts == [ids]
    # A budget below the target alone trims its prefix from the left, whole lines.
    tiny, info = rb.build_prompt(loaded, fmt, tok, 40)
    assert len(tiny) <= 40 and info["prefix_trimmed"] and info["context_files_kept"] == 0


def test_repobench_options_and_data_are_checked_early(rb_dir):
    def check(**opts):
        check_task_options({"tasks": ("repobench",), "task_options": {"repobench": opts}})

    check(path=str(rb_dir), languages=("python",), settings=("in_file",), levels=("2k",))
    with pytest.raises(ValueError, match="languages: unknown \\['go'\\]"):
        check(languages=("go",))
    with pytest.raises(ValueError, match="settings: unknown"):
        check(settings=("xf-f",))
    with pytest.raises(ValueError, match="since=2024-01-01 is after"):
        check(since="2024-01-01", until="2023-12-31")
    with pytest.raises(ValueError, match="not a date"):
        check(since="Dec 2023")
    with pytest.raises(ValueError, match="unknown option"):
        check(dir="x")
    assert data_overrides(["repobench", "crosscodeeval"], "/d") == {
        "eval.task_options.repobench.path": "/d",
        "eval.task_options.crosscodeeval.path": "/d",
    }
    with pytest.raises(FileNotFoundError, match="eval.task_options.repobench.path"):
        rb.load_rows(rb.RepoBenchOptions())


def test_repobench_limit_keeps_every_setting_and_export_without_a_run(rb_dir):
    c = cfg(limit=1)
    c.eval.task_options = {"repobench": dict(path=str(rb_dir), languages=("python",))}
    probs = get_task("repobench").problems(EvalContext(config=c))
    assert [p["setting"] for p in probs] == ["cross_file_first", "in_file"]
    assert probs[0]["prompt"].startswith("# File: shapes/units.py\ndef to_metres")
    assert probs[0]["prompt"].endswith("    sq = Square(side)\n")


# ----------------------------------------------------------------------------- CrossCodeEval


def cce_row(task_id, repo, file, prompt, groundtruth, right, chunks):
    return {
        "prompt": prompt,
        "groundtruth": groundtruth,
        "right_context": right,
        "crossfile_context": {
            "text": "# Here are some relevant code fragments from other files of the repo:\n",
            "list": [
                {"retrieved_chunk": c, "filename": f, "score": 1.0 - 0.1 * i}
                for i, (f, c) in enumerate(chunks)
            ],
        },
        "metadata": {
            "task_id": task_id,
            "repository": repo,
            "file": file,
            "context_start_lineno": 0,
            "groundtruth_start_lineno": prompt.count("\n"),
            "right_context_start_lineno": prompt.count("\n") + 1,
        },
    }


CCE_ROWS = [
    cce_row(
        "project_cc_python/1",
        "carol/geo",
        "geo/dist.py",
        "from geo.point import Point\n\ndef dist(a, b):\n    dx = a.x - b.x\n    dy = ",
        "a.y - b.y",
        "\n    return (dx * dx + dy * dy) ** 0.5\n",
        [
            ("geo/point.py", "class Point:\n    x: float\n    y: float"),
            ("geo/util.py", "def sq(v):\n    return v * v"),
        ],
    ),
    cce_row(
        "project_cc_python/2",
        "carol/geo",
        "geo/area.py",
        "def area(w, h):\n",
        "    return w * h",
        "\n",
        [],
    ),
    cce_row(
        "project_cc_java/1",
        "dave/shop",
        "src/shop/Cart.java",
        "class Cart {\n    int total(Item item) {\n        ",
        "return item.price * item.count;",
        "\n    }\n}\n",
        [("src/shop/Item.java", "class Item { int price; int count; }")],
    ),
    cce_row(
        "project_cc_typescript/1",
        "erin/ui",
        "src/button.ts",
        "import { theme } from './theme';\nexport const color = ",
        "theme.primary;",
        "\nexport default color;\n",
        [("src/theme.ts", "export const theme = { primary: 'red' };")],
    ),
]


@pytest.fixture()
def cce_file(tmp_path):
    return write_jsonl(tmp_path / "line_completion_rg1_bm25.jsonl", CCE_ROWS)


def cce_ctx(tok, path, engine=None, layout="report", **eval_overrides):
    c = cfg(**eval_overrides)
    c.eval.task_options = {"crosscodeeval": dict(path=str(path))}
    return EvalContext(config=c, engine=engine, tokenizer=tok, repo_format=layout)


def _marker(row):
    return row["prompt"].strip().splitlines()[-1]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ("psm", "spm"))
def test_crosscodeeval_fim_prompts_token_for_token_and_oracle(
    tiny_tokenizer, cce_file, layout, mode
):
    tok = tiny_tokenizer
    rows = cce.load_rows(cce.CrossCodeEvalOptions(path=str(cce_file)))
    engine = Engine(tok, {_marker(r): r["groundtruth"] + "\nnext line" for r in rows})
    res = get_task("crosscodeeval").evaluate(cce_ctx(tok, cce_file, engine, layout, fim_mode=mode))
    fmt = RepoFormat(layout)
    for row, got in zip(rows, engine.prompts):
        files = row["chunks"][::-1]  # best-ranked nearest the target
        want = fmt.fim_prompt_ids(
            files, row["path"], row["prompt"], row["right_context"], mode, tok, row["repo"]
        )
        assert got == want
        assert tok.fim_prefix_id in got and tok.fim_suffix_id in got
    assert engine.calls == [dict(max_new_tokens=50, stop=("\n",), seed=0)]
    for key in ("exact_match", "edit_similarity", "identifier_exact_match", "identifier_f1"):
        assert res.metrics[key] == 1.0
        assert res.metrics[f"java/{key}"] == 1.0
    assert res.metrics["num_samples"] == 4.0


def test_crosscodeeval_wrong_and_empty_answers_score_by_hand(tiny_tokenizer, cce_file):
    tok = tiny_tokenizer
    answers = {
        "dy = ": "a.y + c.y  # wrong",
        "def area(w, h):": "",
        "int total(Item item)": "return item.price; item.count;",  # cut after the first ';'
        "export const color = ": "theme.primary;",
    }
    res = get_task("crosscodeeval").evaluate(cce_ctx(tok, cce_file, Engine(tok, answers)))
    by = {r["task_id"]: r for r in res.records}
    w = by["project_cc_python/1"]
    assert w["prediction"] == "a.y + c.y  " and not w["exact_match"]
    assert (
        w["edit_similarity"]
        == rb.fuzz_ratio("a.y + c.y", "a.y - b.y") / 100
        == round(100 * 14 / 18) / 100
    )
    assert w["identifier_f1"] == pytest.approx(4 / 6)  # {a, y, c} vs {a, y, b}: tp 2, fp 1, fn 1
    e = by["project_cc_python/2"]
    assert e["edit_similarity"] == 0.0 and e["identifier_f1"] == 0.0 and not e["exact_match"]
    j = by["project_cc_java/1"]
    assert j["prediction"] == "return item.price;" and not j["exact_match"]
    assert j["identifier_recall"] == pytest.approx(2 / 3) and j["identifier_precision"] == 1.0
    assert by["project_cc_typescript/1"]["exact_match"]
    assert res.metrics["exact_match"] == 0.25
    assert (
        res.metrics["python/exact_match"] == 0.0 and res.metrics["typescript/identifier_f1"] == 1.0
    )
    se = task_standard_errors("crosscodeeval", res.records, {})
    assert set(se) >= {"exact_match", "identifier_f1", "python/identifier_exact_match"}


def test_crosscodeeval_budget_trims_suffix_prefix_and_low_ranked_chunks(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    body = "".join(f"    v = v * {k} + {{i}}\n" for k in range(8))
    chunks = [
        (f"lib/c{i}.py", f"def c{i}(v):\n" + body.format(i=i) + "    return v\n") for i in range(5)
    ]
    right = "".join(f"    line_{i} = {i}\n" for i in range(60))
    row = cce_row("t/1", "r/x", "app/main.py", "def main():\n    x = ", "1", "\n" + right, chunks)
    path = write_jsonl(tmp_path / "line_completion.jsonl", [row])
    loaded = cce.load_rows(cce.CrossCodeEvalOptions(path=str(path)))[0]
    fmt = RepoFormat("qwen2.5")
    full, info = cce.build_prompt(loaded, fmt, tok, 1 << 20, "psm")
    assert info == dict(
        context_files_kept=5, context_files_dropped=0, prefix_trimmed=0, suffix_trimmed=0
    )
    budget = 200
    ids, info = cce.build_prompt(loaded, fmt, tok, budget, "psm")
    assert len(ids) <= budget and info["suffix_trimmed"] and not info["prefix_trimmed"]
    kept = chunks[::-1][info["context_files_dropped"] :]
    assert info["context_files_dropped"] >= 1 and kept[-1][0] == "lib/c0.py"  # best stays
    suffix = cce.trim_right(
        loaded["right_context"],
        tok,
        (budget - 3 - len(fmt.repo_ids("r/x", tok)) - len(fmt.header_ids("app/main.py", tok))) // 4,
    )
    assert len(tok.encode(suffix)) > 0 and loaded["right_context"].startswith(suffix)
    assert ids == fmt.fim_prompt_ids(
        kept, "app/main.py", loaded["prompt"], suffix, "psm", tok, "r/x"
    )


def test_crosscodeeval_options_languages_and_errors(cce_file, tmp_path):
    def check(**opts):
        check_task_options({"tasks": ("crosscodeeval",), "task_options": {"crosscodeeval": opts}})

    check(path=str(cce_file), languages=("java", "csharp"), max_new_tokens=20)
    with pytest.raises(ValueError, match="languages: unknown \\['rust'\\]"):
        check(languages=("rust",))
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        check(max_new_tokens=-1)
    rows = cce.load_rows(cce.CrossCodeEvalOptions(path=str(cce_file), languages=("typescript",)))
    assert [r["task_id"] for r in rows] == ["project_cc_typescript/1"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "groundtruth": "y"}])
    with pytest.raises(ValueError, match="lacks \\['task_id'\\]"):
        cce.load_rows(cce.CrossCodeEvalOptions(path=str(bad)))
    with pytest.raises(FileNotFoundError, match="eval.task_options.crosscodeeval.path"):
        cce.load_rows(cce.CrossCodeEvalOptions(path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(ValueError, match="eval.fim_mode"):
        cce.build_prompt(rows[0], RepoFormat("report"), None, 100, "pms")


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_both_tasks_through_run_tasks_with_a_real_engine(
    tiny_tokenizer, rb_dir, cce_file, tmp_path
):
    """A random tiny model behind `InferenceEngine`, the qwen2.5 layout, `run_tasks` (the eval
    CLI's path): records and summary written, metrics in range, SEs from the records."""
    from zen_code_jax.eval.runner import run_tasks
    from zen_code_jax.infer.engine import InferenceEngine, random_params
    from zen_code_jax.model import get_preset

    model_cfg = get_preset("tiny")
    engine = InferenceEngine(
        random_params(model_cfg, seed=0, scale=0.2),
        model_cfg,
        tiny_tokenizer,
        repo_format="qwen2.5",
    )
    c = cfg(context_tokens=192, limit=1)
    c.eval.task_options = {
        "repobench": dict(path=str(rb_dir), max_new_tokens=6),
        "crosscodeeval": dict(path=str(cce_file), max_new_tokens=6),
    }
    ctx = EvalContext(config=c, engine=engine, tokenizer=tiny_tokenizer, repo_format="qwen2.5")
    out = run_tasks(ctx, ["repobench", "crosscodeeval"], tmp_path, step=1, log=lambda s: None)
    assert (
        out["repobench"]["num_samples"] == 3.0 and out["crosscodeeval"]["num_samples"] == 3.0
    )  # limit 1 per language
    for task in ("repobench", "crosscodeeval"):
        recs = [
            json.loads(x) for x in (tmp_path / "eval" / f"{task}.jsonl").read_text().splitlines()
        ]
        assert recs and all(r["prompt_tokens"] <= 192 - 6 for r in recs)
        assert all(0.0 <= r["edit_similarity"] <= 1.0 for r in recs)
        assert 0.0 <= out[task]["edit_similarity"] <= 1.0
