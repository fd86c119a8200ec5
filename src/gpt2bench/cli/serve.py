"""Commands for many users at once: `serve` (an OpenAI-compatible server for any backend) and
`load` (open-loop load tests of an endpoint, or of a server it starts itself); serving/."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gpt2bench.cli.options import (
    BackendOptions,
    Dtype,
    Model,
    Output,
    Threads,
    parse_options,
    threads_or_default,
    warn,
)
from gpt2bench.core.errors import UsageError

if TYPE_CHECKING:
    from gpt2bench.serving.launch import ServerProcess
    from gpt2bench.serving.load import LoadSpec, Target
    from gpt2bench.serving.metrics import Slo

MaxBatch = Annotated[
    int, typer.Option(help="Batch up to N waiting requests of one shape (static batching); 1 = FIFO one at a time.")
]


def serve(
    backend: Annotated[str, typer.Option(help="The backend to serve (gpt2bench backends lists them).")],
    model: Model = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = a free one, printed).")] = 8000,
    max_batch: MaxBatch = 1,
    threads: Threads = None,
    dtype: Dtype = "fp32",
    option: BackendOptions = None,
) -> None:
    """Serve a backend behind an OpenAI-compatible /v1/completions endpoint until Ctrl-C."""
    from gpt2bench.measure.spec import RunSpec
    from gpt2bench.serving.serve import serve as run_server

    if max_batch < 1 or not 0 <= port < 65536:
        raise UsageError("--max-batch must be at least 1 and --port in 0..65535")
    spec = RunSpec(backend=backend, model=model, threads=threads_or_default(threads), dtype=dtype,
                   options=parse_options(option), prompt_len=1, gen_len=1)  # fmt: skip
    run_server(spec, host, port, max_batch, warn)


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--request-rate '{text}' is not a list of numbers (e.g. 1,2,4,inf)") from None
    if not rates or any(not r > 0 for r in rates):
        raise UsageError(f"--request-rate '{text}': every rate must be > 0 requests/s (inf: all at once)")
    return rates


def parse_slo(text: str | None) -> Slo:
    from gpt2bench.serving.metrics import Slo

    limits: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, _, value = part.partition("=")
        try:
            limits[key.strip()] = float(value)
        except ValueError:
            raise UsageError(f"--slo '{text}': expected ttft=MS,tpot=MS") from None
    if set(limits) - {"ttft", "tpot"} or any(not v > 0 for v in limits.values()):
        raise UsageError(f"--slo '{text}': expected ttft=MS,tpot=MS with positive limits")
    return Slo(limits.get("ttft"), limits.get("tpot"))


def load(
    backend: Annotated[str | None, typer.Option(help="Start a server for this backend (vllm: vLLM's own).")] = None,
    url: Annotated[str | None, typer.Option(help="Load an OpenAI-compatible endpoint already running.")] = None,
    model: Model = None,
    request_rate: Annotated[str, typer.Option(help="Offered rates, requests/s, e.g. 1,2,4,inf.")] = "1,2,4",
    num_requests: Annotated[int, typer.Option(help="Requests per rate.")] = 40,
    prompt_len: Annotated[int, typer.Option(help="Prompt tokens per request, exactly.")] = 50,
    gen_len: Annotated[int, typer.Option(help="Output tokens per request, exactly (EOS ignored).")] = 50,
    warmup_requests: Annotated[int, typer.Option(help="Untimed requests before each rate.")] = 2,
    burstiness: Annotated[float, typer.Option(help="Gamma shape of arrival gaps: 1 = Poisson.")] = 1.0,
    max_concurrency: Annotated[int | None, typer.Option(help="Requests in flight at most.")] = None,
    slo: Annotated[str | None, typer.Option(help="Limits for goodput, ms: ttft=500,tpot=50.")] = None,
    find_max_rate: Annotated[bool, typer.Option(help="Bisect for the highest rate within the SLOs.")] = False,
    attainment: Annotated[float, typer.Option(help="Share of requests within the SLOs for a rate to meet them.")] = 0.9,
    max_batch: MaxBatch = 1,
    threads: Threads = None,
    dtype: Dtype = "fp32",
    option: BackendOptions = None,
    seed: Annotated[int, typer.Option(help="Seed of the arrival times.")] = 0,
    duration: Annotated[float, typer.Option(help="Stop sending a rate's requests after this many seconds.")] = 600.0,
    output: Output = Path("results"),
) -> None:
    """Load-test a backend or an endpoint with open-loop arrivals; a row per rate in the results."""
    from gpt2bench.serving.load import LoadSpec

    if (backend is None) == (url is None):
        raise UsageError("give --backend (a server started here) or --url (an endpoint already running), not both")
    if not duration > 0:
        raise UsageError("--duration must be > 0 seconds")
    spec = LoadSpec(parse_rates(request_rate), num_requests, prompt_len, gen_len, parse_slo(slo), warmup_requests,
                    burstiness, max_concurrency, seed, duration, find_max_rate, attainment)  # fmt: skip
    threads = threads_or_default(threads)
    options = parse_options(option)
    if url is not None:
        _load_url(spec, url.rstrip("/"), output)
    else:
        _load_backend(spec, str(backend), model, dtype, threads, max_batch, options, output, option or [])


def _load_url(spec: LoadSpec, url: str, output: Path) -> None:
    from gpt2bench.models.ref import load_tokenizer
    from gpt2bench.serving.load import Target, endpoint_model

    served = endpoint_model(url)
    target = Target(label=f"endpoint:{served}", backend="endpoint", model=served, model_hash="", weights="unknown")
    _measure(spec, target, url, load_tokenizer(), 1024, output, None)


def _load_backend(
    spec: LoadSpec, backend: str, model: str | None, dtype: str, threads: int, max_batch: int,
    options: dict, output: Path, raw_options: list[str],
) -> None:  # fmt: skip
    from gpt2bench.backends import get_backend
    from gpt2bench.measure.row import label
    from gpt2bench.models.ref import load_tokenizer
    from gpt2bench.models.resolve import resolve_model
    from gpt2bench.serving.launch import gpt2bench_server, vllm_server
    from gpt2bench.serving.load import Target, options_json

    get_backend(backend)  # an unknown name is one line, before a model is built
    ref = resolve_model(model)
    if fallback := ref.fallback_warning():
        warn(fallback)
    spec.validate(ref.n_positions())
    if backend == "vllm":
        server = vllm_server(ref.path, ref.reference, dtype, threads, ref.n_positions())
        max_batch = 0  # continuous batching: vLLM's scheduler decides
    else:
        args = ["--backend", backend, "--model", str(ref.path), "--dtype", dtype, "--threads", str(threads),
                "--max-batch", str(max_batch), *[a for o in raw_options for a in ("--option", o)]]  # fmt: skip
        server = gpt2bench_server(args)
    shown = label(backend, dtype) + (f" (batch {max_batch})" if max_batch > 1 else "")
    target = Target(shown, backend, ref.reference, ref.weights_hash, ref.weights, dtype, threads, max_batch,
                    options_json(options))  # fmt: skip
    _measure(spec, target, None, load_tokenizer(ref), ref.n_positions(), output, server)


def _measure(
    spec: LoadSpec, target: Target, url: str | None, tokenizer: object, n_positions: int, output: Path,
    server: ServerProcess | None,
) -> None:  # fmt: skip
    from gpt2bench.machine.sysinfo import environment
    from gpt2bench.measure.row import new_run_id
    from gpt2bench.measure.runner import prepare_output
    from gpt2bench.report.store import ResultsStore
    from gpt2bench.serving.launch import running
    from gpt2bench.serving.load import max_rate_within_slo, run_load

    prepare_output(output)
    run_id = new_run_id("load")
    store = ResultsStore(output / run_id, environment(), {"run_id": run_id, "scenario": "serve"})

    def save(row: dict) -> None:
        store.add({**row, "run_id": run_id}, {})
        _say_rate(row)

    def on_sigterm(_signum: int, _frame: object) -> None:  # `timeout`, a CI cancel: stop as Ctrl-C stops
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        if server is None:
            rows = run_load(spec, target, str(url), tokenizer, n_positions, save)
        else:
            print(f"starting the {target.backend} server on 127.0.0.1 ...", file=sys.stderr)
            with running(server) as started:  # stopped however this ends, Ctrl-C too
                rows = run_load(spec, target, started, tokenizer, n_positions, save, server.died)
    except KeyboardInterrupt:
        print(f"interrupted; {len(store.rows)} finished rate(s) are saved in {store.folder}", file=sys.stderr)
        sys.exit(130)
    best = max_rate_within_slo(rows)
    within = f"{best:g} requests/s" if best is not None else "no rate measured"
    slo = f"{spec.slo.label() or 'none given'}, {spec.attainment:.0%} of requests"
    print(f"highest rate within the SLOs ({slo}): {within}; results: {store.folder}")


def _say_rate(row: dict) -> None:
    def ms(key: str) -> str:
        value = row.get(key)
        return "-" if value is None else f"{value:.1f}"

    print(
        f"rate {row['request_rate']}/s: {row['completed']}/{row['requests']} ok, "
        f"{row['request_throughput']:.2f} req/s, {row['output_tps']:.0f} tok/s, goodput {row['goodput']:.2f}/s, "
        f"TTFT p50 {ms('ttft_ms_median')} p99 {ms('ttft_ms_p99')} ms, TPOT p50 {ms('tpot_ms_median')} ms, "
        f"peak concurrency {row['peak_concurrency']}",
        flush=True,
    )
