"""Adapters: how a DSPy signature becomes a prompt and a reply becomes fields.

:class:`SmallModelAdapter` is Geode's adapter for small models (the default for the embedded
``geode.LocalLM``). This package is a leaf like ``errors.py``: the agents use it for their steps and the
runtime chooses it, so every layer may import it and it imports no other Geode area.
"""

from geode.adapters._render import output_schema, schema_model
from geode.adapters.small import SmallModelAdapter
from geode.adapters.streaming import SmallModelStreamListener

__all__ = ["SmallModelAdapter", "SmallModelStreamListener", "output_schema", "schema_model"]
