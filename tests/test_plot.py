"""Plots from a fixture results file: the figures hold the expected series (their data, not pixels)."""

import json

import numpy as np
import pytest

from conftest import run_cli, run_python
from gpt2bench.measure.row import COLUMNS
from gpt2bench.report.plot import build_figures, pareto_front, plot, run_warnings

BACKENDS = {"hf-eager": (40.0, 30.0), "onnx": (18.0, 30.0), "onnx-int8": (7.0, 31.5)}  # TPOT ms, perplexity
EMULATED = "this CPU has no bf16 instructions: PyTorch emulates bf16 here"


def fixture_doc():
    rows = []
    for name, (tpot, ppl) in BACKENDS.items():
        for prompt in (1, 50, 500):
            for gen in (1, 10, 100):
                ttft = 20 + prompt * 0.5
                e2e = ttft + tpot * (gen - 1)
                row = dict.fromkeys(COLUMNS)
                row.update(
                    label=name,
                    backend=name,
                    status="ok",
                    prompt_len=prompt,
                    gen_len=gen,
                    batch_size=1,
                    model="random",
                    weights="random",
                    model_hash="abc",
                    threads=2,
                    ttft_ms_median=ttft,
                    tpot_ms_median=tpot,
                    e2e_ms_median=e2e,
                    e2e_ms_mean=e2e,
                    e2e_ms_ci95_high=e2e + 2,
                    decode_tps_median=1000 / tpot if gen > 1 else None,
                    other_cpu_frac=0.01,
                )
                if (prompt, gen) == (1, 1):  # as a sweep does: quality once per backend, in its first cell
                    row.update(ppl=ppl, ppl_tokens=4088, ppl_window=1024, agree_greedy=1.0, agree_top1=0.99)
                rows.append(row)
    samples = [{"warnings": [EMULATED] if r["label"] == "onnx" else []} for r in rows]
    rows.append({**rows[0], "label": "broken", "status": "failed", "error": "boom"})
    samples.append({"warnings": ["a failed cell's warning is not shown"]})
    return {
        "schema_version": 1,
        "run_id": "fixture",
        "environment": {"cpu_model": "Test CPU"},
        "rows": rows,
        "samples": samples,
    }


@pytest.fixture
def figures():
    import matplotlib.pyplot as plt

    yield build_figures(fixture_doc())
    plt.close("all")


def test_headline_bars_are_e2e_means_with_ci(figures):
    ax = figures["e2e_headline.png"].axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([20 + 25 + t * 99 for t, _ in BACKENDS.values()])  # prompt 50, gen 100
    assert [t.get_text() for t in ax.get_xticklabels()] == list(BACKENDS)
    assert "95% CI" in ax.get_ylabel()
    texts = [t.get_text() for t in figures["e2e_headline.png"].texts]
    assert any("RANDOM WEIGHTS" in t for t in texts) and any("Test CPU" in t for t in texts)


def test_time_vs_prompt_has_one_panel_per_gen_and_a_line_per_backend(figures):
    axes = figures["time_vs_prompt.png"].axes
    assert [ax.get_title() for ax in axes] == ["generate 1 tokens", "generate 10 tokens", "generate 100 tokens"]
    lines = {line.get_label(): line for line in axes[2].lines}
    assert set(lines) == set(BACKENDS)
    np.testing.assert_allclose(lines["onnx"].get_xdata(), [1, 50, 500])
    np.testing.assert_allclose(lines["onnx"].get_ydata(), [20 + p * 0.5 + 18 * 99 for p in (1, 50, 500)])
    assert axes[2].get_xscale() == "log"  # 1..500 spans decades


def test_ttft_and_throughput_series(figures):
    left, right = figures["ttft_and_throughput.png"].axes
    ttft = {line.get_label(): line for line in left.lines}
    np.testing.assert_allclose(ttft["hf-eager"].get_ydata(), [20.5, 45, 270])
    tput = {line.get_label(): line for line in right.lines}
    np.testing.assert_allclose(tput["onnx-int8"].get_xdata(), [10, 100])  # gen 1 has no decode phase
    np.testing.assert_allclose(tput["onnx-int8"].get_ydata(), [1000 / 7] * 2)


def test_perplexity_and_pareto_front(figures):
    bars = figures["perplexity.png"].axes[0].patches
    assert [b.get_height() for b in bars] == [30.0, 30.0, 31.5]
    ax = figures["speed_vs_quality.png"].axes[0]
    (front,) = [line for line in ax.lines if line.get_label() == "Pareto front"]
    # hf-eager is dominated by onnx (faster, same perplexity); onnx-int8 is fastest but worse.
    np.testing.assert_allclose(front.get_xdata(), [7.0, 18.0])
    np.testing.assert_allclose(front.get_ydata(), [31.5, 30.0])


def test_headline_cell_is_the_one_most_backends_share():
    from gpt2bench.report.plot import headline_cell

    def row(label, prompt, gen):
        return {"label": label, "prompt_len": prompt, "gen_len": gen, "batch_size": 1}

    both = [row("a", 50, 100), row("b", 50, 100), row("a", 8, 16), row("b", 8, 16)]
    assert headline_cell(both) == (50, 100, 1)  # 50/100/1 among equals
    lone = [row("a", 50, 100), row("a", 8, 16), row("b", 8, 16)]
    assert headline_cell(lone) == (8, 16, 1)  # not a headline only one backend has


def test_pareto_front_definition():
    points = [(1, 5, "a"), (2, 4, "b"), (3, 4.5, "c"), (4, 1, "d"), (5, 1, "e")]
    assert [p[2] for p in pareto_front(points)] == ["a", "b", "d"]


def test_plot_writes_files_and_summary(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(fixture_doc()))
    written = plot(tmp_path)
    names = {p.name for p in written}
    assert {
        "e2e_headline.png",
        "perplexity.png",
        "time_vs_prompt.png",
        "ttft_and_throughput.png",
        "speed_vs_quality.png",
        "summary.md",
    } == names
    summary = (tmp_path / "summary.md").read_text()
    assert "RANDOM WEIGHTS" in summary and "broken" in summary
    # The headline cell (50/100) shows the quality its backend measured in another cell.
    assert "| onnx-int8 | 45.0 | 7.00 | 738.0 ± 2.0 | 142.9 | - | 31.50 | 1.000 | 0.990 |" in summary


def test_load_warnings_reach_the_summary_and_every_caption(tmp_path, figures):
    doc = fixture_doc()
    assert run_warnings(doc) == {"onnx": [EMULATED]}  # once, not once per cell; failed cells left out
    (tmp_path / "results.json").write_text(json.dumps(doc))
    plot(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert f"## Warnings\n\n- **onnx**: {EMULATED}\n" in summary
    assert "failed cell's warning" not in summary
    for name, fig in figures.items():
        assert "warning for onnx: see summary.md" in [t.get_text() for t in fig.texts], name


def test_summary_lists_quality_that_failed(tmp_path):
    doc = fixture_doc()
    doc["rows"][0].update(ppl=None, quality_error="UsageError: the eval text is 1 token(s) long")
    (tmp_path / "results.json").write_text(json.dumps(doc))
    plot(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "## Quality that failed (the speed figures stand)\n\n- hf-eager: UsageError: the eval text" in summary


def test_documents_without_warnings_show_none(tmp_path):
    doc = fixture_doc()
    del doc["samples"]  # documents written before warnings were recorded
    (tmp_path / "results.json").write_text(json.dumps(doc))
    plot(tmp_path)
    assert "Warnings" not in (tmp_path / "summary.md").read_text()
    figures = build_figures(doc)
    assert not any("warning for" in t.get_text() for fig in figures.values() for t in fig.texts)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "holds no results.json"),
        (
            lambda d: (d / "results.json").write_text(json.dumps({**fixture_doc(), "schema_version": 99})),
            "schema version 99",
        ),
        (lambda d: (d / "results.json").write_text(json.dumps({**fixture_doc(), "rows": []})), "holds no result rows"),
        (
            lambda d: (d / "results.json").write_text(
                json.dumps(
                    {
                        **fixture_doc(),
                        "rows": [{k: v for k, v in r.items() if k != "tpot_ms_median"} for r in fixture_doc()["rows"]],
                    }
                )
            ),
            "lacks the column 'tpot_ms_median'",
        ),
        (lambda d: (d / "results.json").write_text("{not json"), "not readable JSON"),
    ],
)
def test_bad_results_folders_are_one_line_errors(tmp_path, setup, message):
    setup(tmp_path)
    proc = run_cli("plot", str(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr


def test_plot_does_not_import_torch(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(fixture_doc()))
    code = (
        "import sys\nfrom gpt2bench.cli.main import main\nsys.argv = ['gpt2bench', 'plot', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'plot imported torch'\n"
    )
    run_python(code, str(tmp_path))


def _only(doc, keep):
    return {**doc, "rows": [r for r in doc["rows"] if keep(r)], "samples": [{} for r in doc["rows"] if keep(r)]}


def test_a_panel_is_drawn_only_where_its_axis_has_two_values():
    from gpt2bench.report.plot import fig_ttft_and_throughput, ok_rows

    one_gen = _only(fixture_doc(), lambda r: r["gen_len"] == 10 and r["status"] == "ok")
    fig = fig_ttft_and_throughput(one_gen, ok_rows(one_gen))
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_xlabel() for ax in visible] == ["prompt tokens"]  # no two dots on a 9.6-10.4 axis
    one_cell = _only(fixture_doc(), lambda r: (r["prompt_len"], r["gen_len"]) == (50, 10) and r["status"] == "ok")
    assert fig_ttft_and_throughput(one_cell, ok_rows(one_cell)) is None


def test_summary_says_n_1_and_flags_cells_measured_under_contention():
    from gpt2bench.report.plot import ok_rows
    from gpt2bench.report.summary_md import summary_markdown

    doc = fixture_doc()
    for row in doc["rows"]:
        row["repeats"] = 1 if row["label"] == "onnx" else 5
        if row["label"] == "onnx-int8":
            row["other_cpu_frac"] = 0.25
    text = summary_markdown(doc, ok_rows(doc), [])
    onnx = next(line for line in text.splitlines() if line.startswith("| onnx |"))
    assert "(n = 1)" in onnx and "±" not in onnx
    busy = [line for line in text.splitlines() if line.startswith("| onnx-int8 |") and "**busy**" in line]
    assert len(busy) == 9 and "more than 10% of the CPU" in text
    assert not any("**busy**" in line for line in text.splitlines() if line.startswith("| hf-eager |"))


def test_a_plot_of_a_sweep_whose_every_cell_failed_says_so(tmp_path):
    doc = fixture_doc()
    doc["rows"] = [{**r, "status": "failed", "error": "boom"} for r in doc["rows"]]
    (tmp_path / "results.json").write_text(json.dumps(doc))
    proc = run_cli("plot", str(tmp_path))
    assert proc.returncode == 1 and "every cell failed, so there is nothing to plot" in proc.stderr


def test_run_summary_names_backend_figures_in_words():
    from gpt2bench.report.summary import in_words

    assert in_words("onnx-int8_cache_hit", 1.0) == "onnx-int8 artifact read from the cache"
    assert in_words("onnx_cache_hit", 0.0) == "onnx artifact built now"
    assert (
        in_words("export_s", 12.5) == "export 12.50 s"
        and in_words("cuda_max_allocated_mb", 812.0) == "cuda max allocated 812.00 MB"
    )


def test_a_results_file_with_wrong_typed_values_is_named_not_a_traceback(tmp_path):
    doc = fixture_doc()
    doc["rows"][3]["tpot_ms_median"] = "fast"
    (tmp_path / "results.json").write_text(json.dumps(doc))
    proc = run_cli("plot", str(tmp_path))
    assert proc.returncode == 1 and "internal error" not in proc.stderr
    assert "row 3 (hf-eager) has tpot_ms_median = 'fast', not a number" in proc.stderr


def test_plot_out_that_is_a_file_and_compare_of_a_results_json_path(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(fixture_doc()))
    (tmp_path / "afile").write_text("")
    proc = run_cli("plot", str(tmp_path), "--out", str(tmp_path / "afile"))
    assert (
        proc.returncode == 1 and "cannot write figures to" in proc.stderr and "is a file, not a folder" in proc.stderr
    )
    proc = run_cli("compare", str(tmp_path / "results.json"), str(tmp_path))  # the file stands for its folder
    assert "does not exist" not in proc.stderr and "comparisons" in proc.stdout, proc.stderr


def test_rows_of_two_machines_are_drawn_apart_and_the_summary_names_the_cluster():
    from gpt2bench.report.plot import ok_rows
    from gpt2bench.report.summary_md import summary_markdown

    doc = fixture_doc()
    for i, row in enumerate(doc["rows"]):  # a cluster sweep: hf-eager on two kinds of machine
        row.update(machine="aaaaaa111111" if i % 2 else "bbbbbb222222", node=f"host{i % 2}/0000000{i % 2}")
    doc["cluster"] = {"nodes": [{"machine": "aaaaaa111111", "cpu_model": "CPU A"}]}
    labels = {r["label"] for r in ok_rows(doc) if r["backend"] == "hf-eager"}
    assert labels == {"hf-eager [aaaaaa]", "hf-eager [bbbbbb]"}
    text = summary_markdown(doc, ok_rows(doc), [])
    assert "Measured on a Ray cluster: 2 node(s), 2 machine type(s) (`bbbbbb` ?, `aaaaaa` CPU A)." in text
    one = fixture_doc()
    assert {r["label"] for r in ok_rows(one)} == {"hf-eager", "onnx", "onnx-int8"}  # one machine: as measured
    assert "Ray cluster" not in summary_markdown(one, ok_rows(one), [])
