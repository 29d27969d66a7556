"""Composite specs: checking, step order, parts and their templates, the reduce's input."""

import json

import pytest

from xchanged.protocol import decompose
from xchanged.protocol.decompose import SpecError
from xchanged.protocol.errors import RemoteProtocolError
from xchanged.protocol.specs import MAX_NESTING, CompositeSpec, PartResult, Step, TaskSpec
from xchanged.protocol.wire import from_body, to_body


def cmd(*argv, **kw) -> TaskSpec:
    return TaskSpec(argv=list(argv), **kw)


def array(*argv, items=None, range_=None, chunk=1, name="", **kw) -> Step:
    return Step(name=name, task=cmd(*argv), items=items, range=range_, chunk=chunk, **kw)


def test_items_become_parts_with_templates_and_environment():
    step = array("convert", "{item}", "out/{index}.png", items=["a.jpg", "b.jpg", "c.jpg"])
    spec = CompositeSpec([step])
    assert decompose.validate(spec) == 3
    parts = [decompose.part(step, i, "T-P") for i in range(3)]
    assert [p.spec.argv for p in parts] == [["convert", "a.jpg", "out/0.png"], ["convert", "b.jpg", "out/1.png"],
                                            ["convert", "c.jpg", "out/2.png"]]
    assert [p.key for p in parts] == ["0", "1", "2"]
    env = parts[1].spec.env
    assert env["XCHANGED_ITEM"] == "b.jpg" and env["XCHANGED_INDEX"] == "1" and env["XCHANGED_PARENT"] == "T-P"
    assert parts[1].spec.parent == "T-P"


def test_range_and_chunk():
    step = array("render", "{items}", "--first={item}", range_=[0, 10, 3], chunk=2)     # 0 3 6 9
    assert decompose.part_count(step) == 2
    first, second = (decompose.part(step, i, "T") for i in range(2))
    assert first.spec.argv == ["render", "0", "3", "--first=0 3"]
    assert second.spec.argv == ["render", "6", "9", "--first=6 9"]
    assert second.item == "6\n9" and second.spec.env["XCHANGED_ITEM"] == "6\n9"


def test_literal_braces_survive():
    step = array("sh", "-c", "echo {{}} {item}", items=["x"])
    assert decompose.part(step, 0, "T").spec.argv == ["sh", "-c", "echo {} x"]


def test_a_dag_runs_in_dependency_order_and_names_its_parts():
    spec = CompositeSpec([Step("test", cmd("make", "test"), depends_on=["build"]),
                          Step("build", cmd("make"), depends_on=["fetch"]),
                          Step("fetch", cmd("git", "pull")),
                          Step("shards", cmd("run", "{item}"), items=["a", "b"], depends_on=["build"])])
    assert [s.name for s in decompose.step_order(spec)] == ["fetch", "build", "test", "shards"]
    assert list(decompose.keys(spec)) == ["fetch", "build", "test", "shards[0]", "shards[1]"]
    assert decompose.step_of("shards[1]") == "shards" and decompose.step_of("7") == "" and \
        decompose.step_of("build") == "build"


@pytest.mark.parametrize("spec, where, words", [
    (CompositeSpec([Step("a", cmd("x"), depends_on=["b"]), Step("b", cmd("y"), depends_on=["a"])]),
     "depends_on", "cycle"),
    (CompositeSpec([Step("a", cmd("x"), depends_on=["nope"])]), "tasks.a.depends_on", "no step named"),
    (CompositeSpec([Step("a", cmd("x"), depends_on=["a"])]), "tasks.a.depends_on", "itself"),
    (CompositeSpec([array("x", "{file}", items=["1"])]), "command", "unknown placeholder"),
    (CompositeSpec([Step("a", cmd("x", "{item}"))]), "tasks.a.command", "has no items"),
    (CompositeSpec([array("x", items=[])]), "items", "empty"),
    (CompositeSpec([array("x", range_=[5, 5, 1])]), "range", "empty"),
    (CompositeSpec([array("x", range_=[0, 5, 0])]), "range", "non-zero step"),
    (CompositeSpec([Step("", cmd("x"), items=["1"], range=[0, 1, 1])]), "", "not both"),
    (CompositeSpec([Step("a", cmd("x"), chunk=2)]), "tasks.a.chunk", "needs items"),
    (CompositeSpec([Step("reduce", cmd("x"))]), "tasks.reduce", "reduce"),
    (CompositeSpec([Step("a", cmd("x")), Step("a", cmd("y"))]), "", "unique"),
    (CompositeSpec([]), "", "at least one step"),
    (CompositeSpec([Step("a", cmd("x"))], max_parallel=0), "max_parallel", "at least 1"),
    (CompositeSpec([Step("a", None)]), "tasks.a", "exactly one"),
])
def test_specs_that_cannot_run_are_rejected_naming_where(spec, where, words):
    with pytest.raises(SpecError) as info:
        decompose.validate(spec)
    assert info.value.where == where and words in info.value.reason


def test_nesting_counts_once_and_is_bounded():
    inner = CompositeSpec([array("x", "{item}", items=["1", "2", "3"])])
    spec = CompositeSpec([Step("inner", composite=inner), Step("after", cmd("y"), depends_on=["inner"])])
    assert decompose.validate(spec) == 2
    part = decompose.part(spec.steps[0], 0, "T")
    assert part.key == "inner" and part.spec.composite == inner and part.spec.parent == "T"
    deep = inner
    for _ in range(MAX_NESTING):
        deep = CompositeSpec([Step("n", composite=deep)])
    with pytest.raises(SpecError, match="nest more than"):
        decompose.validate(deep)


def test_the_reduce_gets_every_result_in_order_as_json_lines():
    spec = CompositeSpec([array("x", "{item}", items=["a", "b", "c"])], reduce=cmd("merge"))
    assert decompose.validate(spec) == 4
    results = [PartResult("2", "failed", 3, "n2", item="c"), PartResult("0", "succeeded", 0, "n1", item="a",
                                                                          stdout_tail="ok"),
               PartResult("1", "succeeded", 0, "n2", item="b")]
    reduce = decompose.reduce_part(spec, "T", results)
    lines = [json.loads(line) for line in reduce.spec.parts_input.splitlines()]
    assert [(d["index"], d["item"], d["state"], d["exit_code"]) for d in lines] == [
        (0, "a", "succeeded", 0), (1, "b", "succeeded", 0), (2, "c", "failed", 3)]
    assert lines[0]["stdout_tail"] == "ok" and reduce.spec.argv == ["merge"]


def test_a_composite_spec_survives_the_wire_and_hostile_depth_is_refused():
    spec = TaskSpec(argv=[], composite=CompositeSpec([Step("a", cmd("x")), Step("b", composite=CompositeSpec(
        [array("y", "{item}", items=["1"])]), depends_on=["a"])], reduce=cmd("r"), fail_fast=True))
    assert from_body(TaskSpec, to_body(spec)) == spec
    body: dict = {"argv": ["x"]}
    for _ in range(200):
        body = {"argv": [], "composite": {"steps": [{"name": "n", "composite": body.get("composite") or {
            "steps": [{"name": "leaf", "task": {"argv": ["x"]}}]}}]}}
    with pytest.raises(RemoteProtocolError):
        from_body(TaskSpec, body)
