"""``@record``: ``@dataclass(frozen=True)`` made cheaper to define, for the records a one-shot command loads.

Defining a frozen dataclass compiles six small functions one by one (``__init__``, ``__repr__``, ``__eq__``,
``__hash__``, ``__setattr__``, ``__delattr__``): ~0.5 ms a class, and a one-shot command loads dozens of them
before it does anything. A record is the same dataclass (``dataclasses.fields``, ``replace``, ``asdict`` and
``is_dataclass`` see it as one; mypy too) whose methods are the ones :func:`dataclasses.dataclass` writes, compiled
in one go. A class using anything beyond plain fields with defaults or ``field(default_factory=...)`` (a
dataclass base, ``InitVar``, ``ClassVar``, ``KW_ONLY``, ``field(init=False)`` or ``kw_only``, its own
``__setattr__``) is handed to :func:`dataclasses.dataclass` as it is.
"""

from __future__ import annotations

import dataclasses
import inspect
import reprlib
from typing import Any, TypeVar, dataclass_transform

__all__ = ["record"]

_T = TypeVar("_T")

_FROZEN_PARAMS: Any = None
"""A frozen dataclass's ``__dataclass_params__`` (its flags, the same for every record), taken once."""

_UNUSUAL = ("ClassVar", "InitVar", "KW_ONLY")


def _frozen_params() -> Any:
    global _FROZEN_PARAMS
    if _FROZEN_PARAMS is None:

        @dataclasses.dataclass(frozen=True)
        class Flags:
            pass

        _FROZEN_PARAMS = Flags.__dataclass_params__  # type: ignore[attr-defined]
    return _FROZEN_PARAMS


def _plain(cls: type) -> bool:
    """Whether *cls* uses only what :func:`record` writes itself."""
    if any(hasattr(base, "__dataclass_fields__") for base in cls.__mro__[1:]):
        return False
    if "__setattr__" in cls.__dict__ or "__delattr__" in cls.__dict__:
        return False
    for annotation in inspect.get_annotations(cls).values():
        text = annotation if isinstance(annotation, str) else repr(annotation)
        if any(word in text for word in _UNUSUAL):
            return False
    for value in cls.__dict__.values():
        if isinstance(value, dataclasses.Field) and (not value.init or value.kw_only is True):
            return False
    return True


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, dataclasses.Field))
def record(cls: type[_T]) -> type[_T]:
    """``@dataclass(frozen=True)``, defined faster (see the module's docstring)."""
    if not _plain(cls):
        return dataclasses.dataclass(frozen=True)(cls)
    documented = bool(cls.__dict__.get("__doc__"))
    own_hash = cls.__dict__.get("__hash__", dataclasses.MISSING)
    # As dataclass decides: a __hash__ of the class's own is kept (None set by an __eq__ of its own is not one).
    keep_hash = not (own_hash is dataclasses.MISSING or (own_hash is None and "__eq__" in cls.__dict__))
    if not documented:
        cls.__doc__ = "-"  # written below, once __init__ exists
    # The fields, their defaults and the dataclass's marks, without any method: nothing compiled yet.
    dataclasses.dataclass(init=False, repr=False, eq=False)(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    methods = _methods(cls, fields)
    for name, function in methods.items():
        function.__qualname__ = f"{cls.__qualname__}.{name}"
        if (name == "__hash__" and not keep_hash) or name not in cls.__dict__:
            setattr(cls, name, function)
    cls.__dataclass_params__ = _frozen_params()  # type: ignore[attr-defined]
    if not documented:
        cls.__doc__ = cls.__name__ + str(inspect.signature(cls)).replace(" -> None", "")
    return cls


def _methods(cls: type[Any], fields: tuple[dataclasses.Field[Any], ...]) -> dict[str, Any]:
    """The methods dataclass would write for *cls*, as closures over its fields: nothing to compile."""
    names = tuple(f.name for f in fields)
    at = {name: index for index, name in enumerate(names)}
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    factories = {f.name: f.default_factory for f in fields if f.default_factory is not dataclasses.MISSING}
    for index, name in enumerate(names):
        if (
            name not in defaults
            and name not in factories
            and any(n in defaults or n in factories for n in names[:index])
        ):
            raise TypeError(f"non-default argument {name!r} follows default argument")
    post_init = hasattr(cls, "__post_init__")
    shown = tuple(f.name for f in fields if f.repr)
    compared = tuple(f.name for f in fields if f.compare)
    hashed = tuple(f.name for f in fields if (f.compare if f.hash is None else f.hash))
    setattr_ = object.__setattr__
    title = f"{cls.__qualname__}.__init__()"
    required = sum(1 for n in names if n not in defaults and n not in factories)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(names):
            takes = f"from {required + 1} to {len(names) + 1}" if required < len(names) else len(names) + 1
            plural = "s" if len(names) else ""
            were = "were" if args else "was"
            raise TypeError(
                f"{title} takes {takes} positional argument{plural} but {len(args) + 1} {were} given"
            )
        given = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name not in at:
                raise TypeError(f"{title} got an unexpected keyword argument {name!r}")
            if name in given:
                raise TypeError(f"{title} got multiple values for argument {name!r}")
            given[name] = value
        if len(given) < len(names):
            missing = [n for n in names if n not in given and n not in defaults and n not in factories]
            if missing:
                quoted = [repr(n) for n in missing]
                listed = (
                    quoted[0]
                    if len(quoted) == 1
                    else f"{quoted[0]} and {quoted[1]}"
                    if len(quoted) == 2
                    else ", ".join(quoted[:-1]) + f", and {quoted[-1]}"
                )
                plural = "s" if len(missing) > 1 else ""
                raise TypeError(
                    f"{title} missing {len(missing)} required positional argument{plural}: {listed}"
                )
        for name in names:
            if name in given:
                setattr_(self, name, given[name])
            elif name in defaults:
                setattr_(self, name, defaults[name])
            else:
                setattr_(self, name, factories[name]())
        if post_init:
            self.__post_init__()

    @reprlib.recursive_repr()
    def __repr__(self: Any) -> str:
        return f"{self.__class__.__qualname__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in shown) + ")"

    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return tuple(getattr(self, n) for n in compared) == tuple(getattr(other, n) for n in compared)
        return NotImplemented

    def __hash__(self: Any) -> int:
        return hash(tuple(getattr(self, n) for n in hashed))

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in at:
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in at:
            raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)

    # What inspect and help() show for __init__ (the one dataclass writes has these parameters).
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for f in fields:
        default = defaults.get(f.name, _FACTORY_MARK if f.name in factories else inspect.Parameter.empty)
        parameters.append(
            inspect.Parameter(
                f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=f.type
            )
        )
    __init__.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
    return {
        "__init__": __init__,
        "__repr__": __repr__,
        "__eq__": __eq__,
        "__hash__": __hash__,
        "__setattr__": __setattr__,
        "__delattr__": __delattr__,
    }


class _FactoryMark:
    def __repr__(self) -> str:
        return "<factory>"


_FACTORY_MARK = _FactoryMark()
