"""``repolib serve``: the catalog's LLMs as an OpenAI-compatible HTTP endpoint."""

from __future__ import annotations

import click

from .common import State, command_example, pass_state


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (loopback by default; elsewhere, use TLS).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8787,
    show_default=True,
    help="Port (0: any free one; the address is logged).",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    help="TLS certificate (PEM), with --tls-key.",
)
@click.option(
    "--tls-key", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM)."
)
@click.option(
    "--max-body-mb",
    type=click.FloatRange(min=0.001),
    default=8.0,
    show_default=True,
    help="Largest request body accepted (MiB).",
)
@click.option(
    "--client-timeout",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds to receive a request body, and for each write to a client.",
)
@click.option(
    "--upstream-timeout",
    type=click.FloatRange(min=0.1),
    help="Seconds per upstream call (default: the LLM resource's own, else 120).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds in-flight requests get to finish after SIGTERM.",
)
@pass_state
@command_example(
    "repolib serve --port 8787   # then base_url=http://127.0.0.1:8787/v1, api_key=rpk_..."
)
def serve_cmd(
    state: State,
    host: str,
    port: int,
    tls_cert: str | None,
    tls_key: str | None,
    max_body_mb: float,
    client_timeout: float,
    upstream_timeout: float | None,
    grace: float,
) -> None:
    """Serve the catalog's LLMs over the OpenAI HTTP API (chat, embeddings, models).

    Clients send a repository key as their API key (Authorization: Bearer rpk_...): it picks
    the repository and its AI policy, as repolib.open would. GET /healthz and GET /metrics
    (Prometheus) need no key. Logs one line per request on stderr (no secrets).
    """
    from ..serve import ServeConfig, run

    run(
        ServeConfig(
            home=state.home,
            host=host,
            port=port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            max_body=int(max_body_mb * 1024 * 1024),
            client_timeout=client_timeout,
            upstream_timeout=upstream_timeout,
            grace=grace,
        )
    )
