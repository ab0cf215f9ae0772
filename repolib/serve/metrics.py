"""Request counters and a latency histogram, rendered in Prometheus' text format.

Labels are the key id and the model (never a secret). A model name only becomes a label once
the request was routed (answered, refused for budget or rate, or failed upstream): names that
the catalog does not know, or keys that did not authenticate, are counted under ``-`` so a
client cannot grow the label set at will.
"""

from __future__ import annotations

import collections
import threading

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Process-wide counters of one server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: collections.Counter[tuple[str, str, str, int]] = collections.Counter()
        self.tokens: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.errors: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._hist: dict[tuple[str, str], list[float]] = {}

    def observe(
        self,
        *,
        key_id: str,
        model: str,
        endpoint: str,
        status: int,
        seconds: float,
        prompt: int = 0,
        completion: int = 0,
        error_type: str | None = None,
    ) -> None:
        with self._lock:
            self.requests[(key_id, model, endpoint, status)] += 1
            if prompt:
                self.tokens[(key_id, model, "prompt")] += prompt
            if completion:
                self.tokens[(key_id, model, "completion")] += completion
            if error_type is not None:
                self.errors[(key_id, model, error_type)] += 1
            h = self._hist.get((key_id, model))
            if h is None:
                h = self._hist[(key_id, model)] = [0.0] * (len(BUCKETS) + 2)
            for i, le in enumerate(BUCKETS):
                if seconds <= le:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            out += [
                "# HELP repolib_requests_total Requests answered, by key, model, endpoint "
                "and status.",
                "# TYPE repolib_requests_total counter",
            ]
            for (k, m, e, s), n in sorted(self.requests.items()):
                out.append(
                    f'repolib_requests_total{{key_id="{_label(k)}",model="{_label(m)}",'
                    f'endpoint="{_label(e)}",status="{s}"}} {n}'
                )
            out += [
                "# HELP repolib_tokens_total Tokens billed, by key, model and kind.",
                "# TYPE repolib_tokens_total counter",
            ]
            for (k, m, kind), n in sorted(self.tokens.items()):
                out.append(
                    f'repolib_tokens_total{{key_id="{_label(k)}",model="{_label(m)}",'
                    f'kind="{kind}"}} {n}'
                )
            out += [
                "# HELP repolib_errors_total Failed requests, by key, model and error type.",
                "# TYPE repolib_errors_total counter",
            ]
            for (k, m, t), n in sorted(self.errors.items()):
                out.append(
                    f'repolib_errors_total{{key_id="{_label(k)}",model="{_label(m)}",'
                    f'type="{_label(t)}"}} {n}'
                )
            out += [
                "# HELP repolib_request_duration_seconds Time to the last byte of the answer.",
                "# TYPE repolib_request_duration_seconds histogram",
            ]
            for (k, m), h in sorted(self._hist.items()):
                labels = f'key_id="{_label(k)}",model="{_label(m)}"'
                for i, le in enumerate(BUCKETS):
                    out.append(
                        f'repolib_request_duration_seconds_bucket{{{labels},le="{le}"}} {int(h[i])}'
                    )
                out.append(
                    f'repolib_request_duration_seconds_bucket{{{labels},le="+Inf"}} {int(h[-1])}'
                )
                out.append(f"repolib_request_duration_seconds_sum{{{labels}}} {h[-2]:.6f}")
                out.append(f"repolib_request_duration_seconds_count{{{labels}}} {int(h[-1])}")
        return "\n".join(out) + "\n"
