"""The composition root: settings, LM backends, instrumentation, program registry, serving."""

import os as _os

# litellm downloads its model price map at first use unless told otherwise; Geode runs offline by
# default and uses the copy bundled with litellm. Set before anything imports litellm.
_os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from geode.runtime.programs import register_program, registered_programs, resolve
from geode.runtime.runtime import Runtime
from geode.runtime.settings import Settings
from geode.runtime.spec_trust import install_spec_trust as _install_spec_trust

# Workflow specs saved or loaded anywhere in the process are signed and checked with the operator's
# key (settings, or one generated into GEODE_HOME).
_install_spec_trust()

__all__ = ["Runtime", "Settings", "register_program", "registered_programs", "resolve"]
