"""A program's DSPy state as the registry sees it: its version id, its shape, loading it into a copy.

A version id is the first 16 hex digits of the SHA-256 of the program's canonical JSON state
(``module.dump_state()``), so the same compiled state always gets the same id; a version that runs
on fine-tuned weights hashes the LM artifact's id with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import dspy

from geode.errors import ProgramLoadError
from geode.runtime.registry.files import _canonical, _sha256


def _state_of(module: dspy.Module) -> dict[str, Any]:
    state = module.dump_state()
    try:
        # Round-trip through JSON: what is hashed is exactly what is stored and later loaded.
        return json.loads(_canonical(state))
    except (TypeError, ValueError) as err:
        raise ProgramLoadError(
            f"cannot version {type(module).__name__}: its state is not JSON-serializable ({err})",
            hint="Geode stores program state as JSON only; keep demos and signatures to JSON values",
        ) from err


def program_version(module: dspy.Module, lm_artifact: str | None = None) -> str:
    """The version id of a program's current state: 16 hex digits of the SHA-256 of its canonical JSON.

    A version that names an LM artifact (fine-tuned weights) hashes the artifact id with the state: the
    same prompts on other weights are another version.
    """
    state = _state_of(module)
    return _version_id(_without_lm(state) if lm_artifact else state, lm_artifact)


def _version_id(state: Mapping[str, Any], lm_artifact: str | None) -> str:
    if lm_artifact is None:
        return _sha256(_canonical(state))[:16]
    return _sha256(_canonical({"lm_artifact": lm_artifact, "state": state}))[:16]


def _without_lm(state: Mapping[str, Any]) -> dict[str, Any]:
    # The LM a version runs on is named by its artifact id, not by the predictors' LM state (which would
    # hold this machine's file path and could not be loaded safely anyway).
    if _is_flat(state):
        return {**state, "lm": None} if "lm" in state else dict(state)
    return {
        name: ({**pstate, "lm": None} if isinstance(pstate, dict) and "lm" in pstate else pstate)
        for name, pstate in state.items()
    }


def _predictors(module: dspy.Module) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, predictor in module.named_predictors():
        signature = getattr(predictor, "signature", None)
        if signature is None:
            out[name] = type(predictor).__name__
            continue
        ins = ", ".join(signature.input_fields)
        outs = ", ".join(signature.output_fields)
        out[name] = f"{ins} -> {outs}"
    return out


def _is_flat(state: Mapping[str, Any]) -> bool:
    # A program that is itself a predictor (a bare dspy.Predict) dumps its own state, not a mapping
    # of predictor names to states.
    return isinstance(state.get("signature"), dict) and isinstance(state.get("demos"), list)


def _by_predictor(state: Mapping[str, Any]) -> dict[str, Any]:
    # Keys with a colon are a module's own state beside its predictors' (a crystallized workflow's
    # "geode:shape"); no predictor path has one, and the module's load_state checks them.
    return {"self": state} if _is_flat(state) else {k: v for k, v in state.items() if ":" not in k}


def _check_state_shape(state: Any, where: str) -> dict[str, Any]:
    if not isinstance(state, dict) or not state:
        raise ProgramLoadError(f"{where}: 'state' must be a non-empty JSON object of predictor states")
    for name, pstate in _by_predictor(state).items():
        if not isinstance(pstate, dict):
            raise ProgramLoadError(f"{where}: the state of predictor {name!r} must be a JSON object")
        demos = pstate.get("demos", [])
        if not isinstance(demos, list) or not all(isinstance(d, dict) for d in demos):
            raise ProgramLoadError(f"{where}: demos of predictor {name!r} must be a list of JSON objects")
        signature = pstate.get("signature")
        if signature is not None and (
            not isinstance(signature, dict)
            or not isinstance(signature.get("instructions"), str)
            or not isinstance(signature.get("fields"), list)
        ):
            raise ProgramLoadError(f"{where}: the signature state of predictor {name!r} is malformed")
    return state


def _check_against(module: dspy.Module, state: Mapping[str, Any], where: str) -> None:
    """Refuse a state that does not fit the program: other predictors, other fields, unknown keys."""
    expected = _by_predictor(module.dump_state())
    saved_states = _by_predictor(state)
    missing = sorted(set(expected) - set(saved_states))
    extra = sorted(set(saved_states) - set(expected))
    if missing or extra:
        raise ProgramLoadError(
            f"{where}: the saved state does not fit {type(module).__name__}: "
            + "; ".join(
                part
                for part in (
                    f"missing predictor(s) {', '.join(missing)}" if missing else "",
                    f"unknown predictor(s) {', '.join(extra)}" if extra else "",
                )
                if part
            ),
            hint="the program's structure changed since this version was compiled; recompile it",
        )
    for name, fresh in expected.items():
        saved = saved_states[name]
        allowed = set(fresh) | (
            {"fields", "lm"} if isinstance(fresh, dict) and "signature" in fresh else set()
        )
        unknown = sorted(set(saved) - allowed)
        if unknown:
            raise ProgramLoadError(
                f"{where}: predictor {name!r} has unknown state field(s) {', '.join(map(repr, unknown))}",
                hint="the file was edited or written by something else; roll back or re-save it",
            )
        fresh_sig = fresh.get("signature") if isinstance(fresh, dict) else None
        saved_sig = saved.get("signature")
        if isinstance(fresh_sig, dict) and isinstance(saved_sig, dict):
            if len(fresh_sig.get("fields", [])) != len(saved_sig.get("fields", [])):
                raise ProgramLoadError(
                    f"{where}: predictor {name!r} was saved with {len(saved_sig.get('fields', []))} signature "
                    f"fields, the program has {len(fresh_sig.get('fields', []))}",
                    hint="the program's signature changed since this version was compiled; recompile it",
                )


def _apply_state(module: dspy.Module, state: Mapping[str, Any], where: str) -> dspy.Module:
    _check_against(module, state, where)
    fresh = module.deepcopy()
    try:
        # Never trust LM endpoints or custom LM classes from a file: allow_unsafe_lm_state=False.
        fresh.load_state(dict(state), allow_unsafe_lm_state=False)
    except Exception as err:
        raise ProgramLoadError(
            f"{where}: the saved state could not be loaded into {type(module).__name__} ({type(err).__name__}: {err})",
            hint="the program changed since this version was compiled, or the file is damaged",
        ) from err
    return fresh
