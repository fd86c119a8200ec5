"""A sweep worker: one backend, loaded once, measuring the cells its parent sends.

Protocol, one JSON object per line. The parent writes the job to stdin first
({"run_id": ..., "spec": RunSpec.to_json(), "model_at": null or [reference, folder]}, the spec
whose backend, model and engine settings the worker loads; model_at: the model's files, resolved
by the sweep, are in that folder) and the worker answers {"event": "ready", "warnings": [...]} once the backend is
loaded (or {"event": "load_failed", "error": ..., "warnings": [...]}); then one request per cell
({"spec": RunSpec.to_json(), "label": ...}); the worker answers each with {"event": "row", "row":
..., "samples": ...} or {"event": "failed", "error": ...} on its real stdout. Anything libraries
print goes to stderr, so it cannot corrupt the protocol. A line that never comes (crash, out of
memory, hang) is the parent's to handle.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2bench.core.errors import one_line

if TYPE_CHECKING:
    from gpt2bench.measure.spec import RunSpec


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this worker when the sweep that started it dies, however it dies
    (SIGTERM from `timeout` or a CI cancel, SIGKILL, a crash): otherwise the worker would go on
    measuring its cell, unseen, on the cores the next job is timed on. Linux only.

    The kernel's "parent" is the thread that started the worker, not the process: a worker started
    from a thread that then ends dies with it. The sweep starts its workers from its main thread."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent was already gone before the line above
        os._exit(1)


# What a request may not change: the engine the worker loaded for its session.
SESSION_FIELDS = ("backend", "model", "device", "dtype", "threads", "options")


def mismatch(session: RunSpec, spec: RunSpec) -> str | None:
    """Why `spec` cannot be measured with the session loaded for `session`, or None."""
    changed = [name for name in SESSION_FIELDS if getattr(spec, name) != getattr(session, name)]
    return f"the request changes {', '.join(changed)}, which the worker loaded once" if changed else None


def main() -> int:
    if len(sys.argv) > 1:
        die_with_parent(int(sys.argv[1]))
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries land on stderr

    def send(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message, default=str) + "\n")
        channel.flush()

    from gpt2bench.measure.runner import measure_cell, open_session
    from gpt2bench.measure.spec import RunSpec

    job = json.loads(sys.stdin.readline())
    base = RunSpec.from_json(job["spec"])
    warnings: list[str] = []  # our stderr is only shown when the worker dies: the parent prints these
    try:
        model_at = job.get("model_at")
        at = (model_at[0], Path(model_at[1])) if model_at else None
        session = open_session(base, warnings.append, check_cell=False, model_at=at)
    except Exception as exc:  # reported for every cell by the parent
        send({"event": "load_failed", "error": one_line(exc), "warnings": warnings})
        return 1
    load = session.load  # for the sweep's time breakdown
    send({"event": "ready", "warnings": warnings, "prepare_s": load.prepare_s, "load_s": load.load_s})
    for line in sys.stdin:
        request = json.loads(line)
        spec = RunSpec.from_json(request["spec"])
        if problem := mismatch(base, spec):
            send({"event": "failed", "error": problem})
            continue
        try:
            result = measure_cell(session, spec, job["run_id"], request["label"])
            send({"event": "row", "row": result.row, "samples": result.samples})
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            send({"event": "failed", "error": one_line(exc)})
    session.close()
    return 0


if __name__ == "__main__":
    from gpt2bench.core.progress import report_to_parent

    with report_to_parent():  # the sweep shows what a worker is doing (a build, an engine start)
        sys.exit(main())
