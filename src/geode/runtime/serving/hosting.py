"""What the server hosts, and which version of it answers a request.

:class:`HostedProgram` is the public spec (``geode serve NAME=REF``, :func:`~geode.runtime.serving.create_app`);
:class:`Hosted` is what the server made of it once: its route, interface and generated request and
response models. :func:`choose` picks the module that answers one request: the version asked for, else
the canary on its share, else the active version (with the shadow to run after it).
"""

from __future__ import annotations

from dataclasses import dataclass

import dspy
from pydantic import BaseModel

from geode.errors import VersionError
from geode.runtime.programs import ProgramRef
from geode.runtime.registry import RoutedVersion, ServedProgram
from geode.runtime.runtime import Runtime
from geode.runtime.serving.schema import (
    ProgramInterface,
    interface_of,
    request_model,
    response_model,
    route_name,
)
from geode.runtime.serving.traffic import Candidate, in_share
from geode.runtime.settings import ServeSettings

__all__ = ["Hosted", "HostedProgram", "candidates", "choose", "host", "served"]


@dataclass
class HostedProgram:
    """A program the server hosts, and how its versions share traffic.

    Args:
        program: A reference (``module:attr``, ``file.py:attr`` or a registered name) — served from its
            active registry version, re-checked on every request so promotion and rollback apply live —
            or a ``dspy.Module`` served as given.
        name: The name in routes, spans and metrics; default: the reference (or the class name).
        candidate: A second version on a canary share or in shadow, pinned for this process (``geode
            serve --canary/--shadow``); without it, the route in the state database applies
            (``geode route``), which every replica follows.
        sample_ratio: Share of this program's traces exported (errors and runs that get feedback are
            always kept); default: the tracing settings' ratio.
    """

    program: ProgramRef
    name: str | None = None
    candidate: Candidate | None = None
    sample_ratio: float | None = None

    @classmethod
    def parse(cls, text: str) -> HostedProgram:
        """``NAME=REF`` (served as ``NAME``) or a bare ``REF``, as ``geode serve`` takes them.

        Example:
            >>> HostedProgram.parse("qa=geode.examples.qa:program").name
            'qa'
        """
        name, sep, ref = text.partition("=")
        if sep and name and ref and ":" not in name and "/" not in name:
            return cls(ref, name=name)
        return cls(text)


@dataclass
class Hosted:
    """A hosted program as the server serves it: its route, interface and request/response models."""

    name: str
    route: str
    aliases: tuple[str, ...]
    program: ProgramRef
    interface: ProgramInterface
    request_model: type[BaseModel]
    response_model: type[BaseModel]
    candidate: Candidate | None
    sample_ratio: float | None


def host(runtime: Runtime, spec: HostedProgram, settings: ServeSettings) -> Hosted:
    """Resolve ``spec`` once and build its route name and its request and response models."""
    resolved = runtime.resolve(spec.program)
    name = spec.name or resolved.name
    route = route_name(name)
    interface = interface_of(resolved.module)
    model = "".join(
        part.capitalize() for part in route.replace("-", ".").replace("_", ".").split(".") if part
    )
    aliases = tuple(a for a in dict.fromkeys((resolved.name, *resolved.aliases)) if a != name)
    return Hosted(
        name=name,
        route=route,
        aliases=aliases,
        program=spec.program,
        interface=interface,
        request_model=request_model(
            f"{model}Request",
            interface,
            max_chars=settings.max_field_chars,
            max_items=settings.max_list_items,
        ),
        response_model=response_model(f"{model}Response", interface),
        candidate=spec.candidate,
        sample_ratio=spec.sample_ratio,
    )


def served(runtime: Runtime, hosted: Hosted) -> ServedProgram:
    """What answers for the program now: its active version and its route's candidates."""
    if isinstance(hosted.program, str):
        return runtime.serve(hosted.program)
    return ServedProgram(hosted.name, hosted.program, None)


def candidates(
    hosted: Hosted, served: ServedProgram
) -> tuple[Candidate | RoutedVersion | None, Candidate | RoutedVersion | None]:
    """The canary and the shadow: this process's ``--canary``/``--shadow``, else the database's route."""
    pinned = hosted.candidate
    if pinned is not None:
        return (pinned, None) if pinned.mode == "canary" else (None, pinned)
    return served.canary, served.shadow


def choose(
    runtime: Runtime, hosted: Hosted, asked: str | None, key: str
) -> tuple[dspy.Module, str | None, str, Candidate | RoutedVersion | None]:
    """The module, version and role that answer, and the shadow to run after (if any).

    Raises:
        VersionError: ``asked`` names a version this server does not serve for the program.
    """
    now = served(runtime, hosted)
    module, version = now.module, now.version
    canary, shadow = candidates(hosted, now)
    if asked is not None:
        if asked in (version, "base" if version is None else version):
            return module, version, "primary", None
        for candidate in (canary, shadow):
            if candidate is not None and asked == candidate.version:
                return candidate.module, candidate.version, candidate.mode, None
        listed = [version or "base", *(c.version for c in (canary, shadow) if c is not None)]
        raise VersionError(
            f"version {asked!r} of {hosted.name!r} is not served here",
            hint=f"served: {', '.join(listed)}",
        )
    if canary is not None and in_share(key, canary.share, salt=hosted.name):
        return canary.module, canary.version, "canary", None
    return module, version, "primary", shadow
