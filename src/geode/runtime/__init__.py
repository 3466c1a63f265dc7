"""The composition root: settings, LM backends, instrumentation, program registry, serving."""

from geode.runtime.programs import register_program, registered_programs, resolve
from geode.runtime.runtime import Runtime
from geode.runtime.settings import Settings

__all__ = ["Runtime", "Settings", "register_program", "registered_programs", "resolve"]
