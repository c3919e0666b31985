"""Turn a task call into JSON and back, checked against the function's annotations.

Each task gets one :class:`ArgumentCodec`, built once at decoration: a msgspec
Struct with a field per parameter (its annotation and default) and an encoder and
decoder for it. Publishing encodes the bound arguments and decodes them again
with that decoder, so a call the worker could not decode is refused before
anything reaches Redis; the worker decodes with the same decoder.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, Union

import msgspec

from .context import JobContext
from .protocol.payload import MAX_NESTING, describe_difference, find_nonfinite, first_difference, to_plain, too_deep
from .errors import TaskArgumentError, TaskDefinitionError

__all__ = ["ArgumentCodec", "TaskArgumentError", "TaskDefinitionError", "check_same",
           "describe_decode_error", "encode_checked"]

_encode = msgspec.json.Encoder().encode
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_raw_dict = msgspec.json.Decoder(dict[str, msgspec.Raw])


def encode_checked(value: Any, context: str, what: str = "arguments") -> bytes:
    """``value`` as JSON, or TaskArgumentError (message: ``context``, then the problem with ``what``).

    Refuses what msgspec cannot encode and nesting deeper than MAX_NESTING.
    """
    try:
        data = _encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TaskArgumentError(f"{context}cannot encode {what}: {exc}") from None
    except RecursionError:
        data = b""
    if not data or too_deep(data):
        raise TaskArgumentError(f"{context}{what}: arrays/objects nest deeper than {MAX_NESTING} levels")
    return data


def check_same(sent: Any, got: Any, where: str, context: str) -> None:
    """Raise TaskArgumentError when ``got`` (decoded) is not what was ``sent``, beyond lists for tuples."""
    try:
        difference = first_difference(to_plain(sent), to_plain(got), where)
    except (TypeError, ValueError):  # not comparable as plain data: it did compare unequal
        difference = (where, sent, got)
    if difference is not None:
        raise TaskArgumentError(context + describe_difference(*difference))


def _is_context(annotation: Any) -> bool:
    if annotation is JobContext:
        return True
    return JobContext in typing.get_args(annotation)


def describe_decode_error(error: Exception) -> str:
    """msgspec says "... - at `$.msg.to`"; say "... (argument msg.to)" instead."""
    text = str(error)
    head, sep, path = text.rpartition(" - at `$.")
    if sep:
        return f"{head} (argument {path.rstrip('`')})"
    return text


class ArgumentCodec:
    """Encodes calls of one function to a JSON object of its parameters, and back."""

    def __init__(self, fn: Callable[..., Any], task_name: str) -> None:
        self.task_name = task_name
        self.signature = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:  # an annotation that does not resolve
            raise TaskDefinitionError(f"task {task_name}: cannot resolve annotations: {exc}") from None
        self.context_param: str | None = None
        fields: list[tuple[Any, ...]] = []
        for param in self.signature.parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                raise TaskDefinitionError(
                    f"task {task_name}: parameter {param.name!r}: tasks take named parameters "
                    "(no *args, **kwargs or positional-only ones), so calls can travel as JSON")
            annotation = hints.get(param.name, Any)
            if _is_context(annotation):
                self.context_param = param.name
                continue
            if param.default is inspect.Parameter.empty:
                fields.append((param.name, annotation))
            else:
                fields.append((param.name, annotation, param.default))
        self.params = tuple(f[0] for f in fields)
        # What callers bind against: the signature without the worker-filled context.
        self.call_signature = self.signature.replace(parameters=[
            p for p in self.signature.parameters.values() if p.name != self.context_param])
        self._positional = tuple(
            p.name for p in self.call_signature.parameters.values()
            if p.kind is p.POSITIONAL_OR_KEYWORD
        )
        self._partial: msgspec.json.Decoder[Any] | None = None  # made on the first task.s()
        try:
            self.struct = msgspec.defstruct(f"{task_name}:args", fields, forbid_unknown_fields=True)
            self.decoder = msgspec.json.Decoder(self.struct)
        except (TypeError, ValueError) as exc:
            raise TaskDefinitionError(f"task {task_name}: {exc}") from None

    def encode_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """The call's arguments by name, and their JSON object; raises TaskArgumentError.

        The JSON is decoded again as the worker will decode it, and what comes back
        must equal what was given: so a NaN (JSON null), bytes where text is
        expected (base64) or a big int given to a float are refused here, not
        delivered changed.
        """
        if not kwargs and len(args) == len(self._positional) == len(self.params):
            arguments: dict[str, Any] = dict(zip(self._positional, args))  # every parameter, in order
        else:
            try:
                arguments = self.call_signature.bind(*args, **kwargs).arguments
            except TypeError as exc:
                raise TaskArgumentError(f"task {self.task_name}: {exc}") from None
        return arguments, self._encode_checked(arguments, self.decoder)

    def encode_partial(self, args: tuple[Any, ...], kwargs: dict[str, Any],
                       first_open: bool) -> tuple[str, bytes]:
        """A signature's arguments (``task.s()``), checked as ``encode_call`` checks a call.

        With ``first_open``, when the arguments given leave a required parameter
        out, the first parameter is left open (as in Celery: what comes before, a
        chain's previous result or a fan-out's children, is the first argument, and
        the positional ones given follow it). Returns the open parameter's name
        ("" when none) and the JSON object of the arguments given.
        """
        context = f"task {self.task_name}: "
        signature = self.call_signature
        required = [p.name for p in signature.parameters.values() if p.default is p.empty]
        first = ""
        try:
            arguments = signature.bind_partial(*args, **kwargs).arguments
            if first_open and self.params and self.params[0] not in kwargs and \
                    any(name not in arguments for name in required):
                first = self.params[0]
                arguments = signature.bind_partial(None, *args, **kwargs).arguments
                del arguments[first]
        except TypeError as exc:
            raise TaskArgumentError(context + str(exc)) from None
        missing = [name for name in required if name not in arguments and name != first]
        if missing:
            raise TaskArgumentError(f"{context}missing argument(s) {', '.join(map(repr, missing))}")
        return first, self._encode_checked(arguments, self._partial_decoder())

    def _encode_checked(self, arguments: dict[str, Any], decoder: msgspec.json.Decoder[Any]) -> bytes:
        """The arguments' JSON, decoded again as the worker will (``decoder``); what comes
        back must equal what was given, else TaskArgumentError."""
        context = f"task {self.task_name}: "
        data = encode_checked(arguments, context)
        try:
            decoded = decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise self._refusal(arguments, describe_decode_error(exc)) from None
        except RecursionError:
            raise TaskArgumentError(f"{context}arguments nest too deep") from None
        for name, value in arguments.items():
            got = getattr(decoded, name)
            if got is not value and got != value:
                check_same(value, got, name, context)
        return data

    def _partial_decoder(self) -> msgspec.json.Decoder[Any]:
        """Decodes any subset of the parameters (each one checked against its annotation)."""
        if self._partial is None:
            hints = {f.name: f.type for f in msgspec.structs.fields(self.struct)}
            fields = [(name, Union[hints[name], msgspec.UnsetType], msgspec.UNSET) for name in self.params]
            self._partial = msgspec.json.Decoder(
                msgspec.defstruct(f"{self.task_name}:partial", fields, forbid_unknown_fields=True))
        return self._partial

    def _refusal(self, arguments: dict[str, Any], problem: str) -> TaskArgumentError:
        """The error for arguments the decoder refused; a NaN is named as such (it became null)."""
        nonfinite = find_nonfinite(to_plain(arguments))
        if nonfinite is not None:
            problem = describe_difference(nonfinite[0], nonfinite[1], None)
        return TaskArgumentError(f"task {self.task_name}: {problem}")

    def decode(self, kwargs_json: bytes) -> Any:
        """Decode a JSON object of arguments by name to the task's Struct."""
        try:
            return self.decoder.decode(kwargs_json)
        except msgspec.DecodeError as exc:
            raise TaskArgumentError(f"task {self.task_name}: {describe_decode_error(exc)}") from None
        except RecursionError:
            raise TaskArgumentError(f"task {self.task_name}: arguments nest too deep to decode") from None

    def decode_parts(self, args_json: bytes | None, kwargs_json: bytes | None) -> Any:
        """Decode an envelope's ``args`` array and ``kwargs`` object (from any producer)."""
        if not args_json or args_json.strip() == b"[]":
            return self.decode(kwargs_json or b"{}")
        try:
            positional = _raw_list.decode(args_json)
            named = _raw_dict.decode(kwargs_json) if kwargs_json else {}
        except msgspec.DecodeError as exc:
            raise TaskArgumentError(f"task {self.task_name}: {describe_decode_error(exc)}") from None
        names = self._positional
        if len(positional) > len(names):
            raise TaskArgumentError(
                f"task {self.task_name}: takes {len(names)} positional arguments, got {len(positional)}")
        merged = dict(named)
        for name, raw in zip(names, positional):
            if name in merged:
                raise TaskArgumentError(f"task {self.task_name}: got multiple values for argument {name!r}")
            merged[name] = raw
        return self.decode(_encode(merged))

    def call_kwargs(self, decoded: Any) -> dict[str, Any]:
        """The keyword arguments to call the function with (without the context)."""
        return {name: getattr(decoded, name) for name in self.params}
