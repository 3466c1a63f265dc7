"""``geode serve``: host programs over HTTP (FastAPI + uvicorn)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import typer

from geode.cli._common import LM_OPTION, make_settings
from geode.errors import ConfigError
from geode.runtime.instrumentation import instrument, uninstrument
from geode.runtime.runtime import Runtime
from geode.runtime.serving import Candidate, HostedProgram, create_app
from geode.runtime.serving.configure_guard import claim_dspy_configure
from geode.runtime.settings import Settings
from geode.runtime.tracing import build_tracing
from geode.runtime.tracing.keycheck import check_phoenix_key_in_background

__all__ = ["parse_split", "register", "serve"]

logger = logging.getLogger("geode.serve")


@dataclass(frozen=True)
class SplitSpec:
    """A ``--canary``/``--shadow`` option: which program, which version, what share."""

    program: str
    version: str
    share: float


def parse_split(text: str, *, default_share: float) -> SplitSpec:
    """Parse ``NAME=VERSION`` or ``NAME=VERSION:SHARE``.

    Example:
        >>> parse_split("qa=1a2b3c:0.2", default_share=0.1)
        SplitSpec(program='qa', version='1a2b3c', share=0.2)
    """
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ConfigError(
            f"bad split {text!r}", hint="use NAME=VERSION or NAME=VERSION:SHARE, e.g. qa=1a2b3c:0.1"
        )
    version, _, share_text = rest.partition(":")
    share = default_share
    if share_text:
        try:
            share = float(share_text)
        except ValueError as err:
            raise ConfigError(
                f"bad share {share_text!r} in {text!r}", hint="a number between 0 and 1"
            ) from err
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"the share in {text!r} must be between 0 and 1")
    return SplitSpec(name, version, share)


def _hosted(
    rt: Runtime,
    refs: list[str],
    canary: list[str],
    shadow: list[str],
    sample: list[str],
) -> list[HostedProgram]:
    specs: dict[str, HostedProgram] = {}
    for text in refs:
        spec = HostedProgram.parse(text)
        key = spec.name or rt.resolve(spec.program).name
        if key in specs:
            raise ConfigError(f"program {key!r} is given twice")
        specs[key] = spec
    splits = [("canary", parse_split(t, default_share=0.1)) for t in canary]
    splits += [("shadow", parse_split(t, default_share=1.0)) for t in shadow]
    for mode, split in splits:
        spec = specs.get(split.program)
        if spec is None:
            raise ConfigError(
                f"--{mode} names {split.program!r}, which is not served", hint=f"served: {', '.join(specs)}"
            )
        if spec.candidate is not None:
            raise ConfigError(
                f"{split.program!r} has two candidates; serve one --canary or --shadow per program"
            )
        ref = spec.program
        assert isinstance(ref, str)
        resolved = rt.resolve(ref)
        registry_name = resolved.name
        version = rt.registry.resolve_version(registry_name, split.version)
        module = rt.registry.load_into(registry_name, version, resolved.module)
        spec.candidate = Candidate(module, version, mode=mode, share=split.share)  # type: ignore[arg-type]
        shared = rt.registry.route(registry_name)
        if not shared.empty:
            # The flag pins this process's split; the other replicas keep following the database's.
            logger.warning(
                "%r: --%s pins this process's split; the state database's route (%s) is not followed here",
                split.program,
                mode,
                ", ".join(f"{k} {v}" for k, v in shared.to_json().items() if v),
            )
    for text in sample:
        name, sep, ratio = text.partition("=")
        if not sep or name not in specs:
            raise ConfigError(f"bad --sample {text!r}", hint="use NAME=RATIO for a served program")
        try:
            specs[name].sample_ratio = float(ratio)
        except ValueError as err:
            raise ConfigError(f"bad ratio in --sample {text!r}") from err
    return list(specs.values())


def serve(
    programs: list[str] = typer.Argument(  # noqa: B008  (typer's declaration style)
        ...,
        help="Programs to host: REF or NAME=REF ('package.module:attribute', 'file.py:attr', a registered name).",
    ),
    host: str | None = typer.Option(
        None, "--host", help="Bind address (default GEODE_SERVE_HOST, 127.0.0.1)."
    ),
    port: int | None = typer.Option(None, "--port", help="Port (default GEODE_SERVE_PORT, 8000)."),
    lm: str | None = LM_OPTION,
    canary: list[str] = typer.Option(  # noqa: B008
        [],
        "--canary",
        help="NAME=VERSION[:SHARE]: a registry version answering SHARE of requests (default 0.1), pinned for "
        "this process instead of the route every replica follows (geode route).",
    ),
    shadow: list[str] = typer.Option(  # noqa: B008
        [],
        "--shadow",
        help="NAME=VERSION[:SHARE]: a registry version run on a copy of SHARE of requests, only traced; "
        "pinned for this process, like --canary.",
    ),
    sample: list[str] = typer.Option(  # noqa: B008
        [],
        "--sample",
        help="NAME=RATIO: export RATIO of this program's traces (errors and feedback always kept).",
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve programs over HTTP: one endpoint each, OpenAPI at /docs, health at /health and /ready.

    Example: geode serve geode.examples.qa:program --port 8000
    """
    import uvicorn

    base = make_settings(lm=lm)
    serve_settings = base.serve.model_copy(
        update={k: v for k, v in (("host", host), ("port", port)) if v is not None}
    )
    settings: Settings = base.model_copy(update={"serve": serve_settings})
    # This process is a server: no program it hosts may change DSPy's settings for every request.
    claim_dspy_configure()
    rt = Runtime(settings)
    own_tracing = None
    stopped: list[int] = []
    try:
        tracing = getattr(rt, "tracing", None)
        if tracing is None and getattr(rt, "tracer_provider", None) is None and settings.tracing.enabled:
            # A runtime that does not set tracing up itself: the server does, and shuts it down.
            own_tracing = tracing = build_tracing(settings)
            instrument(tracer_provider=own_tracing.provider)
        app = create_app(rt, _hosted(rt, programs, canary, shadow, sample), serve_settings, tracing=tracing)
        logging.getLogger("geode").setLevel(log_level.upper())
        if settings.tracing.enabled:
            check_phoenix_key_in_background(settings)
        for line in routes_banner(app, f"http://{_url_host(serve_settings.host)}:{serve_settings.port}"):
            typer.echo(line, err=True)
        config = uvicorn.Config(
            app,
            host=serve_settings.host,
            port=serve_settings.port,
            log_level=log_level,
            # Context variables (DSPy overrides, OTel context) must not leak between requests on one
            # connection (uvicorn #2167).
            reset_contextvars=True,
            timeout_graceful_shutdown=int(serve_settings.shutdown_timeout_s),
            timeout_keep_alive=serve_settings.keep_alive_s,
            server_header=False,
        )
        with _signal_as_exception(stopped):
            uvicorn.Server(config).run()
    finally:
        if own_tracing is not None:
            own_tracing.shutdown()
            uninstrument()
        rt.close()
    if stopped:
        # The previous (default) handler is back: end by the signal, as uvicorn would have.
        signal.raise_signal(stopped[0])


class _Stopped(BaseException):
    """The signal uvicorn raises again after its graceful shutdown, as an exception."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped(signum)


@contextlib.contextmanager
def _signal_as_exception(stopped: list[int]) -> Iterator[None]:
    """Let the runtime flush spans and feedback before a SIGTERM ends the process.

    uvicorn (>= 0.29) drains requests on SIGTERM, then restores the previous handler and raises the
    signal again so the exit status says how the process ended. With the default handler that kills
    the process at once, before ``Runtime.close`` flushes the last requests' spans (every span
    queued since the exporter's last pass was lost). Here the signal raised again becomes
    :class:`_Stopped`; its number is appended to ``stopped`` for the caller to raise after cleaning up.
    """
    if threading.current_thread() is not threading.main_thread():  # signals need the main thread
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    except _Stopped as stop:
        stopped.append(stop.signum)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def routes_banner(app: Any, base_url: str) -> list[str]:
    """What ``geode serve`` prints at start: each program's endpoints, feedback, and the API docs page."""
    lines = [f"serving on {base_url}"]
    for route in app.routes:
        path = str(getattr(route, "path", ""))
        if path.startswith("/programs/") and "{" not in path:
            methods = ",".join(sorted(getattr(route, "methods", None) or ["POST"]))
            lines.append(f"  {methods:<5} {base_url}{path}")
    lines.append(f"  POST  {base_url}/feedback")
    lines.append(f"  API docs (try it in a browser): {base_url}/docs")
    return lines


def register(app: typer.Typer) -> None:
    """Add ``geode serve`` to the CLI."""
    app.command("serve")(serve)
