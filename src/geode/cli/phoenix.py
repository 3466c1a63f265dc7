"""``geode phoenix``: start (or reuse), check and stop the local Phoenix server."""

from __future__ import annotations

import typer
from rich.console import Console

from geode.cli._common import make_settings
from geode.cli._console import make_console
from geode.errors import ConfigError
from geode.runtime.phoenix import PhoenixServer, PhoenixStatus

__all__ = ["register"]


def _print_running(console: Console, status: PhoenixStatus, *, configured_port: int) -> None:
    how = "already running, reused" if status.reused else "started"
    if status.pid is not None:
        how += f", pid {status.pid}"
    console.print(f"[bold green]Phoenix is running[/] at [bold]{status.url}[/]  ({how})")
    console.print(f"  version    {status.version or 'unknown'}")
    console.print(
        f"  spans to   {status.collector_endpoint}"
        + (f"  (gRPC :{status.grpc_port})" if status.grpc_port else "")
    )
    console.print(f"  data       {status.working_dir or '(not started by geode: wherever it was started)'}")
    if status.managed:
        console.print(f"  log        {status.log_path}")
        console.print("  stop with  geode phoenix --stop")
    if not status.url.endswith(f":{configured_port}"):
        console.print(
            f"  note: not on the configured port {configured_port}; to send spans here from elsewhere, "
            f"set PHOENIX_COLLECTOR_ENDPOINT={status.url}"
        )


def phoenix(
    port: int | None = typer.Option(
        None,
        "--port",
        "-p",
        min=1,
        max=65_535,
        help="HTTP port (UI, REST, OTLP/HTTP). Default: GEODE_PHOENIX_PORT, else 6006.",
    ),
    grpc_port: int | None = typer.Option(
        None,
        "--grpc-port",
        min=1,
        max=65_535,
        help="OTLP/gRPC port. Default: GEODE_PHOENIX_GRPC_PORT, else 4317 (a free port if taken).",
    ),
    any_port: bool = typer.Option(
        False, "--any-port", help="If the port is held by another program, use a free one."
    ),
    stop: bool = typer.Option(False, "--stop", help="Stop the Phoenix that geode started."),
    status: bool = typer.Option(False, "--status", help="Say whether Phoenix is running (exit 1 if not)."),
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        min=1.0,
        help="Seconds to wait for start-up. Default: GEODE_PHOENIX_START_TIMEOUT_S, else 180.",
    ),
) -> None:
    """Start a local Phoenix (or reuse the running one), wait until it is ready, and print its URL.

    Phoenix runs detached, bound to 127.0.0.1, with its data and log in <home>/phoenix. The runtime and
    `geode run` send spans to it while it runs.

    Example: geode phoenix --port 6006
    """
    if stop and status:
        raise ConfigError("--stop and --status cannot be combined", hint="give one of them")
    settings = make_settings()
    overrides = {"port": port, "grpc_port": grpc_port, "start_timeout_s": timeout}
    phoenix_settings = settings.phoenix.model_copy(
        update={k: v for k, v in overrides.items() if v is not None}
    )
    server = PhoenixServer(phoenix_settings, working_dir=settings.phoenix_dir)
    console = make_console()

    if stop:
        before = server.status()
        if server.stop():
            console.print(f"stopped Phoenix at {before.url} (pid {before.pid})")
            return
        after = server.status()
        if after.running:
            console.print(
                f"a Phoenix geode did not start answers at {after.url}; stop it where it was started"
            )
        else:
            console.print("no Phoenix started by geode is running")
        return

    if status:
        current = server.status()
        if not current.running:
            console.print(f"Phoenix is not running at {current.url}  (start it with: geode phoenix)")
            raise typer.Exit(1)
        current_is_ours = (
            "started by geode, pid " + str(current.pid) if current.managed else "not started by geode"
        )
        console.print(f"Phoenix {current.version} is running at [bold]{current.url}[/]  ({current_is_ours})")
        if current.working_dir is not None:
            console.print(f"  data  {current.working_dir}")
        return

    started = server.start(any_port=any_port, progress=True)
    _print_running(console, started, configured_port=phoenix_settings.port)


def register(app: typer.Typer) -> None:
    """Add ``geode phoenix`` to the CLI."""
    app.command("phoenix")(phoenix)
