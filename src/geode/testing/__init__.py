"""Typed fakes for testing programs that run on Geode.

Nothing in Geode's own runtime imports this package; tests and examples do.
"""

from geode.testing.lm import ScriptedCall, ScriptedLM, ScriptExhaustedError

__all__ = ["ScriptExhaustedError", "ScriptedCall", "ScriptedLM"]
