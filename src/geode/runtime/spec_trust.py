"""The process's workflow-spec trust, from settings: the signing key, unsigned specs, allowed modules.

``geode.runtime`` installs :func:`spec_trust_from_environment` as the default of
:func:`geode.refs.use_spec_trust` when it is imported, so every spec saved or
loaded without an explicit trust uses the operator's settings as they are at that moment.
"""

from __future__ import annotations

from geode.refs import SpecTrust, key_file, use_spec_trust
from geode.runtime.settings import Settings

__all__ = ["install_spec_trust", "spec_trust", "spec_trust_from_environment"]


def spec_trust(settings: Settings) -> SpecTrust:
    """The trust ``settings`` describe; the key is ``GEODE_WORKFLOWS_SIGNING_KEY`` or the generated one.

    Raises:
        ConfigError: The generated key file cannot be read or created.
    """
    workflows = settings.workflows
    if workflows.signing_key is not None:
        key = bytes.fromhex(workflows.signing_key.get_secret_value())
    else:
        key = key_file(settings.workflow_key_path)
    return SpecTrust(
        key=key, allow_unsigned=workflows.allow_unsigned, allowed_modules=workflows.allowed_modules
    )


def spec_trust_from_environment() -> SpecTrust:
    """:func:`spec_trust` of the settings the environment gives now."""
    return spec_trust(Settings())


def install_spec_trust() -> None:
    """Make :func:`spec_trust_from_environment` the process's default trust for workflow specs."""
    use_spec_trust(spec_trust_from_environment)
