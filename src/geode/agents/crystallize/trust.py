"""Which workflow specs may load, and what they may import: HMAC signatures and a module allow-list.

A spec names Python objects (its agent, its tools) that loading it imports and runs, so a spec is
code. Two checks keep a spec from elsewhere from running what it likes:

- **Signatures.** :meth:`WorkflowSpec.save <geode.agents.crystallize.spec.WorkflowSpec.save>` signs a
  spec with HMAC-SHA256 under the operator's key; loading refuses a spec whose signature is missing or
  does not verify, unless :attr:`SpecTrust.allow_unsigned` says otherwise. Unlike the content hash,
  which anyone can recompute after an edit, a signature needs the key.
- **References.** A tool reference must name the agent's own tool of that name, or a module under one
  of :attr:`SpecTrust.allowed_modules`; ``agent_ref`` must be signed for, or allowed the same way.
  Nothing outside them is imported.

The trust itself lives in :mod:`geode.refs` (a leaf, so the runtime installs it without importing
the agents); this module names it for specs. The runtime installs the process's default trust
(:func:`use_spec_trust`): a key from settings or one
generated into ``GEODE_HOME`` on first use, so specs crystallized on one machine load there with no
set-up, while a spec from elsewhere needs that machine's key (or an explicit opt-in).
"""

from __future__ import annotations

from geode.refs import (
    SIGNATURE_PREFIX,
    SpecTrust,
    current_spec_trust,
    key_file,
    module_allowed,
    use_spec_trust,
)

__all__ = [
    "SIGNATURE_PREFIX",
    "SpecTrust",
    "current_spec_trust",
    "key_file",
    "module_allowed",
    "use_spec_trust",
]
