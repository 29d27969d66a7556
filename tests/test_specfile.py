"""Spec files (`submit -f`): every shape becomes the task specs the daemon takes, and every mistake is
refused before anything runs, naming the file, the table and the key."""

from __future__ import annotations

import pytest

from xchanged import specfile
from xchanged.protocol.messages import TaskSpec, from_body


def load(tmp_path, text: str, name: str = "spec.toml", **files: str):
    for other, body in files.items():
        (tmp_path / other).write_text(body)
    path = tmp_path / name
    path.write_text(text)
    return specfile.load(path)


def test_independent_tasks_a_single_command_an_array_and_a_dag(tmp_path):
    two = load(tmp_path, '[[task]]\ncommand = ["a"]\n[[task]]\ncommand = "echo b"\npriority = "high"\n')
    assert [b["argv"] for b in two] == [["a"], ["sh", "-c", "echo b"]] and two[1]["priority"] == "high"
    [one] = load(tmp_path, 'command = ["make"]\ncpus = 2\n')
    assert one["argv"] == ["make"] and one["requirements"]["cpus"] == 2.0
    [array] = load(tmp_path, 'name = "thumbs"\ncommand = ["convert", "{item}"]\nitems_from = "list.txt"\n'
                             'chunk = 2\nretries = 1\nreduce = ["merge"]\nmax_parallel = 4\n',
                   **{"list.txt": "a.jpg\n\nb.jpg\nc.jpg\n"})
    spec = from_body(TaskSpec, array)
    step = spec.composite.steps[0]
    assert spec.name == "thumbs" and step.items == ["a.jpg", "b.jpg", "c.jpg"] and step.chunk == 2
    assert step.task.retries == 1 and spec.composite.reduce.argv == ["merge"] and spec.composite.max_parallel == 4
    [dag] = load(tmp_path, '[tasks.a]\ncommand = ["x"]\n[tasks.b]\nspec = "inner.toml"\ndepends_on = ["a"]\n',
                 **{"inner.toml": 'command = ["y", "{item}"]\nrange = [0, 3]\n'})
    steps = from_body(TaskSpec, dag).composite.steps
    assert [s.name for s in steps] == ["a", "b"] and steps[1].composite.steps[0].range == [0, 3, 1]


@pytest.mark.parametrize("text, where, words", [
    ('command = ["x"]\nitemz = [1]\n', "itemz", "unknown key"),
    ('command = ["x", "{item}"]\nitems = ["a"]\nrange = [0, 2]\n', "range", "not items and range"),
    ('command = ["x", "{item}"]\nrange = [0]\n', "range", "integers"),
    ('[tasks.a]\ncommand = ["x"]\ndepends_on = ["zz"]\n', "tasks.a.depends_on", "no step named 'zz'"),
    ('[tasks.a]\ncommand = ["x"]\ndepends_on = ["b"]\n[tasks.b]\ncommand = ["x"]\ndepends_on = ["a"]\n',
     "depends_on", "cycle"),
    ('[tasks.a]\ncommand = ["x"]\nfoo = 1\n', "tasks.a.foo", "unknown key"),
    ('[tasks.a]\nspec = "nope.toml"\n', "tasks.a.spec", "no such spec file"),
    ('command = ["x", "{item}"]\nitems_from = "nope.txt"\n', "items_from", "cannot read"),
    ('command = ["x", "{file}"]\nitems = ["1"]\n', "command", "unknown placeholder"),
    ('command = ["x", "{item}"]\nitems = []\n', "items", "empty"),
    ('command = ["x", "{items}"]\nitems = ["1"]\nchunk = 0\n', "chunk", "at least 1"),
    ('command = ["x", "{item}"]\nitems = ["1"]\npriority = "super"\n', "priority", "priority must be one of"),
    ('command = ["x"]\ncpus = "two"\n', "cpus", "got 'two'"),
    ('[task]\ncommand = ["x"]\n[tasks.a]\ncommand = ["y"]\n', "tasks", "cannot be mixed"),
    ('command = [\n', "", "not valid TOML"),
    # hostile: deep nesting, NUL characters, what execve refuses, numbers out of any sane range
    ("a = " + "[" * 5000 + "]" * 5000 + "\n", "", "nested too deeply"),
    ('command = ["x"]\nenv = ' + "{ a = " * 3000 + "1" + " }" * 3000 + "\n", "", "nested too deeply"),
    ('command = ["x\\u0000y"]\n', "", "argv[0] contains a NUL character"),
    ('command = ["x"]\ncwd = "a\\u0000"\n', "", "cwd contains a NUL character"),
    ('command = ["x"]\nenv = { "A=B" = "x" }\n', "", "environment name 'A=B'"),
    ('command = ["x"]\nenv = { A = "\\u0000" }\n', "", "environment variable A contains a NUL"),
    ('command = ["x"]\ntimeout = inf\n', "", "timeout: number not finite"),
    ('command = ["x"]\ntimeout = 1e300\n', "", "timeout must be positive and at most"),
    ('command = ["x"]\nest_runtime = -1\n', "", "est_runtime must be from 0"),
    ('command = ["x"]\ncpus = nan\n', "", "requirements.cpus: number not finite"),
    ('command = ["x"]\ngpus = -1\n', "", "must not be negative"),
    ('command = ["x"]\nretries = 99999999999999999999999\n', "", "retries: int out of range"),
    ('command = ["x"]\nlabels = { a = { b = 1 } }\n', "", "requirements.labels.a: expected string"),
    ('command = ["x", "{item}"]\nrange = [-9223372036854775808, 9223372036854775807]\n', "", "more than 100000 parts"),
    ('command = ["x", "{items}"]\nitems = ["a"]\nchunk = 5000\n', "chunk", "at most 1024"),
    ('command = ["x", "{items}"]\nchunk = 2\nitems = ["' + "a" * 3000 + '", "' + "b" * 3000 + '"]\n', "chunk",
     "longer than 4096 characters together"),
    ('command = ["x", "{item}"]\nitems = ["a\\u0000"]\n', "items[0]", "contains a NUL character"),
    ('command = ["x", "pre-{item}"]\nitems = ["' + "a" * 4095 + '"]\n', "command",
     "would be refused by its contractor"),
])
def test_mistakes_are_refused_naming_file_table_and_key(tmp_path, text, where, words):
    with pytest.raises(specfile.SpecFileError) as info:
        load(tmp_path, text)
    err = info.value
    assert err.file == str(tmp_path / "spec.toml") and err.where == where and words in err.reason
    assert str(err).startswith(f"{tmp_path / 'spec.toml'}: ")


def test_a_spec_file_that_includes_itself_is_refused(tmp_path):
    with pytest.raises(specfile.SpecFileError, match="includes itself"):
        load(tmp_path, '[tasks.a]\nspec = "spec.toml"\n')
