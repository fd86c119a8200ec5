"""Long work shows progress: phases, their plain lines off a terminal, their rows on one, and a
worker's phases shown by the sweep that started it (issue: long work that shows progress)."""

import collections
import io

import pytest

from conftest import run_cli
from gpt2bench.core.progress import Event, PlainLines, as_line, describe_step, from_line, listening, phase, replay_lines


def test_plain_lines_say_start_then_steps_at_most_every_interval_with_an_eta_then_the_end():
    lines: list[str] = []
    show = PlainLines(every_s=10, write=lines.append)
    show(Event("start", "training", 0, 100))
    for done, at in ((1, 0.5), (20, 10.0), (30, 15.0), (40, 20.0)):  # synthetic timestamps
        show(Event("step", "training", done, 100, at, f"loss {5 - done / 10:.1f}"))
    show(Event("end", "training", 100, 100, 50.0))
    assert lines == [
        "training ...",
        "training: loss 3.0, 20/100 (20%), 10 s, ~40 s left",  # 10 s per 20 steps: 80 more take 40 s
        "training: loss 1.0, 40/100 (40%), 20 s, ~30 s left",  # the 15 s step came too soon after
        "training: done in 50.0 s",
    ]


def test_a_step_without_a_total_names_its_part_and_a_long_eta_reads_in_minutes():
    assert describe_step(Event("step", "roofs", 1, None, 12.4, "bf16 matmul")) == "bf16 matmul, 12 s"
    assert describe_step(Event("step", "t", 1, 10, 60.0)) == "1/10 (10%), 60 s, ~9 min left"


def test_a_phase_reports_its_end_when_its_work_fails():
    events: list[Event] = []
    with listening(events.append), pytest.raises(RuntimeError), phase("export", total=3) as p:
        p.step()
        raise RuntimeError("disk full")
    assert [(e.kind, e.done) for e in events] == [("start", 0), ("step", 1), ("end", 1)]


def test_a_child_process_phases_reach_the_parent_and_its_other_lines_stay_its_errors():
    event = Event("step", "building the onnx artifact", 2, 5, 1.5, "optimize")
    assert from_line(as_line(event)) == event
    assert from_line("gpt2bench-phase {not json") is None and from_line("Traceback ...") is None
    seen: list[Event] = []
    with listening(seen.append):
        rest = replay_lines([as_line(Event("start", "x")), "WARNING: a library\n", "\n", as_line(Event("end", "x"))])
    assert [e.kind for e in seen] == ["start", "end"] and rest == ["WARNING: a library\n"]


def test_a_sweep_ends_the_phase_a_dead_worker_was_in():
    from gpt2bench.sweep.process import drain

    seen: list[Event] = []
    tail: collections.deque[str] = collections.deque(maxlen=5)
    lines = [as_line(Event("start", "starting vLLM's engine")), "Killed\n"]  # no end: the worker died
    with listening(seen.append):
        drain(lines, tail)
    assert [(e.kind, e.name) for e in seen] == [("start", "starting vLLM's engine"), ("end", "starting vLLM's engine")]
    assert list(tail) == ["Killed\n"]


def test_on_a_terminal_each_open_phase_is_a_row_refreshed_only_while_open():
    from rich.console import Console
    from rich.progress import Progress

    from gpt2bench.cli.progress import columns, phases_on

    console = Console(file=io.StringIO(), force_terminal=True, width=150)
    with Progress(*columns(), console=console, auto_refresh=False) as progress, phases_on(progress):
        with phase("quality: perplexity over 4 windows", total=4) as p:
            p.step(3)
            (task,) = progress.tasks
            assert (task.description, task.completed, task.total) == ("quality: perplexity over 4 windows", 3, 4)
            listener = progress_listener()
            assert listener._ticker is not None and listener._ticker.is_alive()
        assert progress.tasks == [] and listener._ticker is None  # no thread left during timed work
    assert "quality: perplexity over 4 windows" in console.file.getvalue()


def progress_listener():
    from gpt2bench.core import progress

    return progress._listeners[-1]


def test_make_tiny_off_a_terminal_prints_its_phase_as_lines_and_no_library_bars(tmp_path):
    proc = run_cli("make-tiny", "--steps", "3", env={"GPT2BENCH_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "training the tiny model tiny-" in proc.stderr and "done in" in proc.stderr
    assert "Writing model shards" not in proc.stderr  # transformers' own bar


def test_the_roofs_helper_reports_what_it_is_measuring():
    from gpt2bench.machine.roofs import measure_in_helper

    seen: list[Event] = []
    with listening(seen.append):
        roofs, _busy = measure_in_helper(1)
    parts = [e.detail for e in seen if e.kind == "step" and e.detail]
    assert parts == ["fp32 matmul", "bf16 matmul", "int8 matmul", "read bandwidth"]
    assert seen[0].kind == "start" and seen[-1].kind == "end" and roofs["read_bandwidth_gbs"] > 0
