"""Streaming an output field that :class:`~geode.adapters.small.SmallModelAdapter` produces.

DSPy's ``StreamListener`` finds a field in the token stream by the markers of its own adapters
(``[[ ## answer ## ]]``, ``"answer":``, ``<answer>``) and refuses any other adapter. A plain-text reply has
no markers at all (the whole reply is the field), and a JSON reply is read here by parsing the partial
object. For every other adapter this listener is DSPy's own.
"""

from __future__ import annotations

import json
from typing import Any

import dspy
from dspy.dsp.utils.settings import settings
from dspy.streaming.messages import StreamResponse

from geode.adapters._render import field_label
from geode.adapters.small import SmallModelAdapter, _is_plain

__all__ = ["SmallModelStreamListener"]


class SmallModelStreamListener(dspy.streaming.StreamListener):
    """A ``dspy.streaming.StreamListener`` that also streams fields of ``SmallModelAdapter`` replies.

    Use it wherever DSPy's listener is used (``dspy.streamify(program, stream_listeners=[...])``); with
    DSPy's adapters it behaves exactly as DSPy's. Text arrives as the model writes it: a plain-text reply
    chunk by chunk (a leading echo of the field's label and trailing whitespace held back, as parsing
    drops them); a ``str`` field of a JSON reply as its decoded characters; any other JSON field whole,
    as JSON, once its value is complete.
    """

    def __init__(
        self,
        signature_field_name: str,
        predict: Any = None,
        predict_name: str | None = None,
        allow_reuse: bool = False,
    ) -> None:
        super().__init__(signature_field_name, predict, predict_name, allow_reuse)
        self._reply = ""
        self._sent = 0
        self._asked: tuple[Any, Any] | None = None  # (predictor's signature, the signature asked), per stream

    def receive(self, chunk: Any) -> StreamResponse | None:
        """The next piece of the field's value in ``chunk``, if any (``None`` while there is none)."""
        if not isinstance(settings.adapter, SmallModelAdapter):
            return super().receive(chunk)
        if self.stream_end:
            if not self.allow_reuse:
                return None
            self.stream_end = self.stream_start = False
            self._reply, self._sent = "", 0
        try:
            piece = chunk.choices[0].delta.content
        except (AttributeError, IndexError, TypeError):
            return None
        if not piece:
            return None
        self._reply += piece
        value, done = self._value()
        return self._emit(value, done)

    def finalize(self) -> StreamResponse | None:
        """Whatever was held back, as the last chunk, when the predictor has finished."""
        if not isinstance(settings.adapter, SmallModelAdapter):
            return super().finalize()
        if self.stream_end or not self._reply:
            return None
        value, _ = self._value(final=True)
        return self._emit(value, True, force=True)

    def _signature(self) -> Any:
        # The signature the model was prompted with: ChainOfThought's rationale may have been left out.
        signature = getattr(self.predict, "signature", None)
        adapter = settings.adapter
        if signature is None or not isinstance(adapter, SmallModelAdapter):
            return signature
        if self._asked is None or self._asked[0] is not signature:
            self._asked = (signature, adapter.asked_signature(signature, settings.lm))
        return self._asked[1]

    def _value(self, final: bool = False) -> tuple[str, bool]:
        """The field's text so far (what may be sent) and whether it is complete."""
        signature = self._signature()
        if signature is not None and self.signature_field_name not in signature.output_fields:
            return "", False  # a field the model was not asked for (an omitted rationale) never streams
        if signature is None or _is_plain(signature):
            return self._plain_value(signature, final), False
        return self._json_value(final)

    def _plain_value(self, signature: Any, final: bool) -> str:
        text = self._reply.lstrip()
        if signature is not None:
            name, info = next(iter(signature.output_fields.items()))
            label = f"{field_label(name, info)}:"
            head = text[: len(label)].casefold()
            if head == label.casefold():
                text = text[len(label) :].lstrip()
            elif label.casefold().startswith(head) and not final:
                return ""  # could still become the label: wait
        return text.rstrip()

    def _json_value(self, final: bool) -> tuple[str, bool]:
        import jiter

        try:
            parsed = jiter.from_json(self._reply.strip().encode(), partial_mode="trailing-strings")
        except ValueError:
            return "", False
        if not isinstance(parsed, dict) or self.signature_field_name not in parsed:
            return "", False
        keys = list(parsed)
        done = final or keys[-1] != self.signature_field_name or _complete_json(self._reply)
        value = parsed[self.signature_field_name]
        if isinstance(value, str):
            return value, done
        return (json.dumps(value, ensure_ascii=False) if done else ""), done

    def _emit(self, value: str, done: bool, force: bool = False) -> StreamResponse | None:
        new = value[self._sent :]
        self._sent = max(self._sent, len(value))
        if new:
            self.stream_start = True
        if done:
            self.stream_end = True
        if new or (done and self.stream_start) or force:
            return StreamResponse(self.predict_name or "", self.signature_field_name, new, is_last_chunk=done)
        return None


def _complete_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the interpreter's stack
        return False
    return True
