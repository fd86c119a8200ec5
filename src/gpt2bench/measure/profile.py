"""`gpt2bench profile`: one generation after set-up and a warm-up, under pyinstrument (the Python
side: dispatch, the decode loop) and then under the backend's own tracer (torch profiler, ONNX
Runtime profiling), so the steady state is what shows, not first-call costs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from gpt2bench.backends.base import Sampling
from gpt2bench.measure.spec import RunSpec


def profile_generation(spec: RunSpec, output: Path, warn: Callable[[str], None]) -> list[Path]:
    """Profile `spec`'s cell; the files written into <output>/<profile-id>/."""
    from pyinstrument import Profiler

    from gpt2bench.machine.sysinfo import environment
    from gpt2bench.measure.prompts import make_prompts
    from gpt2bench.measure.row import new_run_id
    from gpt2bench.measure.runner import open_session

    session = open_session(spec, warn)
    try:
        ids = make_prompts(session.tokenizer, spec.prompt_len, spec.batch_size).input_ids
        session.backend.setup(spec.batch_size, spec.prompt_len, spec.gen_len, Sampling())

        def generation() -> None:
            for _ in session.backend.generate(ids, spec.gen_len, Sampling()):
                pass
            session.backend.synchronize()

        generation()  # warm-up: the profile shows the steady state, not first-call costs
        out = output / new_run_id(f"profile-{spec.backend}")
        out.mkdir(parents=True)
        profiler = Profiler(interval=0.0005)
        profiler.start()
        generation()
        profiler.stop()
        (out / "profile.html").write_text(profiler.output_html())
        (out / "profile.txt").write_text(profiler.output_text(unicode=True, color=False))
        trace = session.backend.trace(generation, out)
        about = {"spec": spec.as_record(), "model": session.model.as_record(), "environment": environment()}
        (out / "profile.json").write_text(json.dumps(about, indent=1, default=str))
    finally:
        session.close()
    return [out / "profile.html", out / "profile.txt", *([trace] if trace else []), out / "profile.json"]
