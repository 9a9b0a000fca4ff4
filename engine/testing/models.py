"""Sequential specifications for the linearizability checker (engine/testing/linearizability.py).

A model is the single-threaded object the concurrent history must be equivalent to (Herlihy &
Wing 1990). The checker only ever calls:

    init()                               -> the initial state (hashable: it is memoised)
    step(state, op_input, op_output)     -> (legal, next_state)
    op_input(op)                         -> what step sees as input, or DROP for an op that
                                            constrains nothing (e.g. a read whose result is unknown)
    partition(ops)                       -> {key: ops} for P-compositionality (Horn & Kroening,
                                            arXiv 1504.00204): the history is linearizable iff every
                                            part is; each part is searched on its own
    describe_op(op, output) / describe_state(state)  -> readable text for explanations

`op_input` is `(f, value)` of the invoke by default; `op_output` is the value of the "ok"
completion, or UNKNOWN when the completion was "info" (the op may or may not have taken effect;
the checker may also leave such an op out of the linearization entirely, so `step` only has to
say whether the op *can* take effect in `state`, and how).

Built in: RegisterModel ("register"), KVModel ("kv": a value per key with read/get, write/put,
cas and append) and SetModel ("set": a grow-only set per key). Subclass Model for your own
state machine.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import EngineError


class HistoryError(EngineError, ValueError):
    """A history that is not well formed (unmatched completion, unknown op, bad cas value...)."""


class _Unknown:
    """Output of an op whose completion was "info": its effect, if any, is unknown."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __reduce__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()


class _Drop:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DROP"


# Returned by Model.op_input for an op that constrains nothing and need not be searched.
DROP: Any = _Drop()


@dataclass(slots=True)
class Operation:
    """One invoke matched with its completion ("ok" or "info"; "fail" ops are dropped).

    `call` and `ret` are positions in the real-time order of events (ret is None for an "info"
    op: it returns at +infinity). `call_time`/`ret_time` are the recorded times, for display.
    """

    id: int
    process: Any
    f: str
    key: Any
    value: Any
    output: Any
    call: int
    ret: int | None
    call_time: int | None = None
    ret_time: int | None = None

    @property
    def indeterminate(self) -> bool:
        return self.ret is None


def freeze(value: Any) -> Any:
    """JSON values -> hashable ones: lists become tuples, dicts become sorted item tuples."""
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, set | frozenset):
        return frozenset(freeze(item) for item in value)
    return value


class Model:
    """Base class of a sequential specification. Override init and step at least."""

    name = "model"

    def init(self) -> Hashable:
        raise NotImplementedError

    def step(self, state: Any, op_input: Any, op_output: Any) -> tuple[bool, Any]:
        raise NotImplementedError

    def op_input(self, op: Operation) -> Any:
        return (op.f, op.value)

    def partition(self, ops: Sequence[Operation]) -> dict[Hashable, list[Operation]]:
        return {None: list(ops)}

    def describe_op(self, op: Operation) -> str:
        out = "?" if op.output is UNKNOWN else repr(op.output)
        return f"{op.f}({op.value!r}) -> {out}"

    def describe_state(self, state: Any) -> str:
        return repr(state)


def partition_by_key(ops: Sequence[Operation]) -> dict[Hashable, list[Operation]]:
    parts: dict[Hashable, list[Operation]] = {}
    for op in ops:
        parts.setdefault(op.key, []).append(op)
    return parts


def _append(state: Any, value: Any) -> tuple[bool, Any]:
    """KVModel's append (see there): string concatenation or a new last list element."""
    if state is None:
        state = "" if isinstance(value, str) else ()
    if isinstance(state, str):
        return (True, state + value) if isinstance(value, str) else (False, state)
    if isinstance(state, tuple):
        return True, state + (value,)
    return False, state


class RegisterModel(Model):
    """One register: read, write, cas [expected, new]; initial value None (Jepsen's register)."""

    name = "register"
    OPS: tuple[str, ...] = ("read", "write", "cas")

    def init(self) -> Hashable:
        return None

    def op_input(self, op: Operation) -> Any:
        if op.f not in self.OPS:
            raise HistoryError(f"{self.name} model: unknown op f={op.f!r} (want read/write/cas)")
        if op.f == "read":
            # An indeterminate read observed nothing: it constrains no linearization.
            return DROP if op.output is UNKNOWN else ("read", None)
        if op.f == "cas":
            value = op.value
            if not isinstance(value, tuple) or len(value) != 2:
                raise HistoryError(f"cas value must be [expected, new], got {value!r}")
        return (op.f, op.value)

    def partition(self, ops: Sequence[Operation]) -> dict[Hashable, list[Operation]]:
        keys = {op.key for op in ops}
        if len(keys) > 1:
            shown = sorted(map(repr, keys))[:3]
            raise HistoryError(
                f"register model got {len(keys)} keys ({', '.join(shown)}...); use model='kv'"
            )
        return {next(iter(keys)) if keys else None: list(ops)}

    def step(self, state: Any, op_input: Any, op_output: Any) -> tuple[bool, Any]:
        f, value = op_input
        if f == "read":
            return op_output == state, state
        if f == "write":
            return True, value
        if f == "cas":
            # An "ok" cas succeeded, so the register held `expected`; an unknown cas may only
            # be linearized where it could have succeeded (not taking effect = leaving it out).
            expected, new = value
            if state == expected:
                return True, new
            return False, state
        return _append(state, value)  # only KVModel.op_input lets an append through

    def describe_op(self, op: Operation) -> str:
        if op.f == "read":
            return f"read -> {'?' if op.output is UNKNOWN else repr(op.output)}"
        if op.f == "write":
            return f"write {op.value!r}" + (" (info)" if op.output is UNKNOWN else "")
        expected, new = op.value
        return f"cas {expected!r} -> {new!r}" + (" (info)" if op.output is UNKNOWN else "")


class KVModel(RegisterModel):
    """A value per key (Jepsen's independent keys); each key is checked on its own.

    Ops: read/get, write/put, cas [expected, new] (as RegisterModel) and append v, as in
    Porcupine's kv model: a string value gets v concatenated, a list value (a tuple once
    frozen) gets v as its new last element (Jepsen's list-append); on a missing value (the
    initial state) it starts from "" for a string v and from [] otherwise. An append to any
    other value is not legal (it cannot have succeeded). `initial` is every key's value before
    the first write: None (missing) by default, "" for Porcupine's kv histories.
    """

    name = "kv"
    OPS: tuple[str, ...] = ("read", "write", "cas", "get", "put", "append")
    ALIASES = {"get": "read", "put": "write"}

    def __init__(self, initial: Hashable = None) -> None:
        self.initial = initial

    def init(self) -> Hashable:
        return self.initial

    def op_input(self, op: Operation) -> Any:
        if op.f not in self.OPS:
            raise HistoryError(
                f"{self.name} model: unknown op f={op.f!r} (want read/get, write/put, cas, append)"
            )
        f = self.ALIASES.get(op.f, op.f)
        if f == "read":
            return DROP if op.output is UNKNOWN else ("read", None)
        if f in ("write", "append"):
            return (f, op.value)
        return super().op_input(op)  # cas: checks its [expected, new]

    def describe_op(self, op: Operation) -> str:
        if op.f in ("append", "put"):
            return f"{op.f} {op.value!r}" + (" (info)" if op.output is UNKNOWN else "")
        if op.f == "get":
            return f"get -> {'?' if op.output is UNKNOWN else repr(op.output)}"
        return super().describe_op(op)

    def partition(self, ops: Sequence[Operation]) -> dict[Hashable, list[Operation]]:
        return partition_by_key(ops)


class SetModel(Model):
    """A grow-only set per key: "add" an element, "read" returns the whole set."""

    name = "set"

    def init(self) -> Hashable:
        return frozenset()

    def op_input(self, op: Operation) -> Any:
        if op.f == "add":
            return ("add", op.value)
        if op.f == "read":
            if op.output is UNKNOWN:
                return DROP
            if not isinstance(op.output, tuple | frozenset):
                raise HistoryError(f"set read must return a list, got {op.output!r}")
            return ("read", frozenset(op.output))
        raise HistoryError(f"set model: unknown op f={op.f!r} (want add/read)")

    def partition(self, ops: Sequence[Operation]) -> dict[Hashable, list[Operation]]:
        return partition_by_key(ops)

    def step(self, state: Any, op_input: Any, op_output: Any) -> tuple[bool, Any]:
        f, value = op_input
        if f == "add":
            return True, state | {value}
        return value == state, state

    def describe_op(self, op: Operation) -> str:
        if op.f == "add":
            return f"add {op.value!r}" + (" (info)" if op.output is UNKNOWN else "")
        return f"read -> {sorted(op.output, key=repr)!r}"

    def describe_state(self, state: Any) -> str:
        return "{" + ", ".join(sorted(map(repr, state))) + "}"


MODELS: dict[str, type[Model]] = {"register": RegisterModel, "kv": KVModel, "set": SetModel}


class _Adapter(Model):
    """A user object with init() and step() (duck typed); other hooks are optional."""

    def __init__(self, user: Any) -> None:
        self.user = user
        self.name = getattr(user, "name", type(user).__name__)
        self.init = user.init  # type: ignore[method-assign]
        self.step = user.step  # type: ignore[method-assign]
        for hook in ("op_input", "partition", "describe_op", "describe_state"):
            if callable(getattr(user, hook, None)):
                setattr(self, hook, getattr(user, hook))


def get_model(model: Any) -> Model:
    """A Model from a name ("register", "kv", "set"), a Model, or any object with init/step."""
    if isinstance(model, Model):
        return model
    if isinstance(model, str):
        try:
            return MODELS[model]()
        except KeyError:
            raise HistoryError(f"unknown model {model!r} (want one of {sorted(MODELS)})") from None
    if callable(getattr(model, "init", None)) and callable(getattr(model, "step", None)):
        return _Adapter(model)
    raise TypeError(f"model must be a name, a Model or have init() and step(), got {model!r}")
