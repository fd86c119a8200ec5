"""`gpt2bench load`: a load test of an OpenAI-compatible endpoint, rate after rate, each rate's
figures a row of the results store (`scenario: serve`), written as soon as the rate ends.

Against `--url` it measures whatever serves there; with `--backend X` it starts the server itself
(`gpt2bench serve`, or vLLM's own server for `vllm`) and stops it afterwards. The client's own
overhead is measured once per load test against a server that does no work (serving/nowork.py):
on a 2-core machine the client shares the CPU with the server, so its cost is reported beside the
figures it is part of."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from gpt2bench.core.errors import BenchError, UsageError
from gpt2bench.serving.client import LoadPlan, run_rate
from gpt2bench.serving.metrics import Slo, summarize

SEARCH_STEPS = 5  # --find-max-rate: bisections after the listed rates, each a full rate's run


@dataclass(frozen=True)
class LoadSpec:
    rates: list[float]
    num_requests: int
    prompt_len: int
    gen_len: int
    slo: Slo
    warmup: int = 2
    burstiness: float = 1.0
    max_concurrency: int | None = None
    seed: int = 0
    max_send_s: float = 600.0
    find_max_rate: bool = False
    attainment: float = 0.9  # the share of requests within the SLOs a rate must reach to meet them

    def validate(self, n_positions: int) -> None:
        if not self.rates or any(not r > 0 for r in self.rates):
            raise UsageError("--request-rate must be positive rates (requests/s) or inf, e.g. 1,2,4,inf")
        if self.prompt_len < 1 or self.gen_len < 1 or self.num_requests < 1:
            raise UsageError("--prompt-len, --gen-len and --num-requests must be at least 1")
        if self.prompt_len + self.gen_len > n_positions:
            total = self.prompt_len + self.gen_len
            raise UsageError(f"prompt-len + gen-len = {total} exceeds the model's {n_positions}-token context")
        if not self.burstiness > 0 or (self.max_concurrency is not None and self.max_concurrency < 1):
            raise UsageError("--burstiness must be > 0 and --max-concurrency at least 1")
        if not 0 < self.attainment <= 1:
            raise UsageError("--attainment must be in (0, 1]: the share of requests within the SLOs")


def distinct_prompts(tokenizer: Any, count: int, length: int) -> list[list[int]]:
    """`count` prompts of exactly `length` token ids from the bundled text, each from another
    place in it (a prefix cache finds nothing to share), wrapping around if the text runs out."""
    from gpt2bench.core.paths import DEFAULT_TEXT

    ids = tokenizer.encode(DEFAULT_TEXT.read_text(encoding="utf-8")).ids
    if len(ids) < length:
        raise UsageError(f"the bundled text has {len(ids)} tokens, fewer than --prompt-len {length}")
    step = max(1, min(length, (len(ids) - length) // max(count, 1)))
    return [ids[(i * step) % (len(ids) - length + 1) :][:length] for i in range(count)]


def endpoint_model(url: str) -> str:
    """The model an OpenAI-compatible endpoint serves (its /v1/models), or a one-line error."""
    import httpx

    try:
        response = httpx.get(f"{url}/v1/models", timeout=10)
        data = response.json()["data"]
        return str(data[0]["id"])
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach '{url}' ({type(exc).__name__}: {exc})") from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise UsageError(f"'{url}' is not an OpenAI-compatible server (GET /v1/models gave no model list)") from None


def one_rate(spec: LoadSpec, url: str, model: str, prompts: list[list[int]], rate: float) -> dict[str, Any]:
    """Warm-up requests (one at a time, not counted), then the rate's requests; its figures."""
    plan = LoadPlan(url, model, prompts[: spec.num_requests], spec.gen_len, rate, spec.burstiness,
                    spec.max_concurrency, spec.seed, spec.max_send_s)  # fmt: skip
    if spec.warmup:
        warm = replace(plan, prompts=prompts[spec.num_requests :][: spec.warmup], rate=math.inf, max_concurrency=1)
        asyncio.run(run_rate(warm))
    return summarize(asyncio.run(run_rate(plan)), spec.slo)


def client_overhead(spec: LoadSpec, prompts: list[list[int]], tokenizer: Any, n_positions: int) -> dict[str, Any]:
    """The load test's own figures (up to 20 of its prompts) against a server that does no work, at
    the highest finite rate asked for: what the client, HTTP and the server framework alone cost on
    this machine. The server runs on a thread of this process, so it shares the client's GIL."""
    from gpt2bench.serving.nowork import NoWork
    from gpt2bench.serving.serve import BackgroundServer
    from gpt2bench.serving.server import ModelFacts

    finite = [r for r in spec.rates if math.isfinite(r)]
    rate = max(finite) if finite else 10.0
    quick = replace(spec, num_requests=min(spec.num_requests, 20))
    with BackgroundServer(NoWork(), tokenizer, ModelFacts("no-work", n_positions, 50257)) as server:
        figures = one_rate(quick, server.url, "no-work", prompts, rate)
    return {f"client_overhead_{k}": figures[f"{k}"] for k in ("ttft_ms_median", "itl_ms_median", "e2e_ms_median")}


def next_rate(attained: dict[float, float], target: float) -> float | None:
    """--find-max-rate: the next rate to try, from each tried rate's SLO attainment. The midpoint
    between the highest rate that met the target and the lowest above it that did not (twice the
    highest when only inf failed above it). When none met it, half the lowest rate, unless halving
    did not raise the attainment: then load is not what misses the SLOs (a TPOT limit below the
    server's unloaded TPOT) and no lower rate will meet them. None when there is nothing to try."""
    good = [r for r, a in attained.items() if a >= target and math.isfinite(r)]
    bad = sorted(r for r, a in attained.items() if a < target and (not good or r > max(good)))
    if not bad:
        return None
    high = bad[0]
    if good:
        low = max(good)
        return (low + high) / 2 if math.isfinite(high) else low * 2
    if len(bad) > 1 and attained[bad[0]] <= attained[bad[1]]:
        return None
    return high / 2 if math.isfinite(high) else None


def meets_slo(figures: dict[str, Any], attainment: float) -> bool:
    """A rate meets its SLOs when at least `attainment` of its requests completed within them
    (a failed request counts as a miss): with Poisson arrivals even a light load has bursts, and
    "every request" would make one unlucky request the verdict."""
    return figures["slo_attainment"] >= attainment


def rates_to_run(spec: LoadSpec, measure: Callable[[float], dict[str, Any]]) -> list[dict[str, Any]]:
    """The listed rates, then with --find-max-rate up to SEARCH_STEPS bisections; every rate's figures."""
    out, attained = [], {}
    for rate in spec.rates:
        figures = measure(rate)
        out.append(figures)
        attained[rate] = figures["slo_attainment"]
    for _ in range(SEARCH_STEPS if spec.find_max_rate else 0):
        rate = next_rate(attained, spec.attainment)
        if rate is None or rate in attained:
            break
        figures = {**measure(rate), "searched": True}
        out.append(figures)
        attained[rate] = figures["slo_attainment"]
    return out


@dataclass(frozen=True)
class Target:
    """What serves the load test: a row's identity fields. `backend` is "endpoint" for --url."""

    label: str
    backend: str
    model: str
    model_hash: str
    weights: str
    dtype: str = "fp32"
    threads: int | None = None
    max_batch: int = 1
    options: str = "{}"


def serve_row(target: Target, spec: LoadSpec, rate: float, figures: dict[str, Any], extra: dict[str, Any]) -> dict:
    """One rate's row: the identity a results store keys it by, then its figures."""
    from gpt2bench.machine.sysinfo import cpu_fingerprint, environment
    from gpt2bench.measure.row import SCHEMA_VERSION, config_key

    env = environment()
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "label": target.label,
        "status": "ok" if figures["completed"] else "failed",
        "error": "; ".join(figures["errors"]) if not figures["completed"] else "",
        "backend": target.backend,
        "model": target.model,
        "model_hash": target.model_hash,
        "weights": target.weights,
        "device": "cpu",
        "dtype": target.dtype,
        "threads": target.threads,
        "batch_size": target.max_batch,
        "prompt_len": spec.prompt_len,
        "gen_len": spec.gen_len,
        "warmup": spec.warmup,
        "repeats": spec.num_requests,
        "sampling": "greedy",
        "options": target.options,
        "scenario": "serve",
        "request_rate": rate if math.isfinite(rate) else "inf",  # JSON has no infinity
        "burstiness": spec.burstiness,
        "max_concurrency": spec.max_concurrency,
        **{k: v for k, v in figures.items() if k != "errors"},
        "request_errors": "; ".join(figures["errors"]),
        "meets_slo": meets_slo(figures, spec.attainment),
        "slo_attainment_target": spec.attainment,
        **extra,
        "timestamp_utc": env["timestamp_utc"],
        "git_commit": env["git"]["commit"],
        "gpt2bench_version": env["gpt2bench_version"],
        "machine": cpu_fingerprint(),
    }
    row["cell_key"] = config_key(row)
    return row


def run_load(
    spec: LoadSpec,
    target: Target,
    url: str,
    tokenizer: Any,
    n_positions: int,
    save: Callable[[dict[str, Any]], None],
    server_died: Callable[[], str | None] = lambda: None,
) -> list[dict[str, Any]]:
    """Every rate of `spec` against `url`, each row saved as it is measured. A server that died
    ends the test with its reason; the rates measured before it are saved."""
    spec.validate(n_positions)
    model = endpoint_model(url)
    prompts = distinct_prompts(tokenizer, spec.num_requests + spec.warmup, spec.prompt_len)
    extra = {"served_model": model, **client_overhead(spec, prompts, tokenizer, n_positions)}
    rows: list[dict[str, Any]] = []

    def measure(rate: float) -> dict[str, Any]:
        figures = one_rate(spec, url, model, prompts, rate)
        row = serve_row(target, spec, rate, figures, extra)
        if why := server_died():
            row.update(status="failed", error=why)
        save(row)
        rows.append(row)
        if why:
            raise BenchError(f"{why}; the rates measured before it are saved")
        return figures

    rates_to_run(spec, measure)
    return rows


def max_rate_within_slo(rows: list[dict[str, Any]]) -> float | None:
    """The highest finite rate whose every request completed within the SLOs."""
    ok = [r["request_rate"] for r in rows if r.get("meets_slo") and r["request_rate"] != "inf"]
    return max(ok) if ok else None


def options_json(options: dict[str, Any]) -> str:
    """A row's options column, as measure/row.py writes it."""
    return json.dumps(options, sort_keys=True)
