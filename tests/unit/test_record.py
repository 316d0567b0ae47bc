"""gpubox.record.record: the same frozen dataclass as @dataclass(frozen=True), defined faster."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from gpubox.record import record


def _pair(body: dict[str, Any], annotations: dict[str, str], name: str = "Point") -> tuple[Any, Any]:
    """The same class body as a record and as a frozen dataclass."""
    made: list[Any] = []
    for decorate in (record, dataclass(frozen=True)):
        namespace = {
            **body,
            "__annotations__": dict(annotations),
            "__module__": __name__,
            "__qualname__": name,
        }
        made.append(decorate(type(name, (), namespace)))
    return made[0], made[1]


def test_a_record_behaves_as_a_frozen_dataclass() -> None:
    body = {
        "y": 2,
        "tags": field(default_factory=list),
        "note": field(default="n", repr=False, compare=False),
    }
    fast, slow = _pair(body, {"x": "int", "y": "int", "tags": "list[str]", "note": "str"})
    for cls in (fast, slow):
        assert dataclasses.is_dataclass(cls)
        assert [f.name for f in dataclasses.fields(cls)] == ["x", "y", "tags", "note"]
        assert vars(cls)["__match_args__"] == ("x", "y", "tags", "note")
        assert vars(cls)["__dataclass_params__"].frozen
    a, b = fast(1), slow(1)
    assert repr(a) == repr(b) == "Point(x=1, y=2, tags=[])"
    assert fast(1, 2, ["t"], "p") == fast(1, 2, ["t"], "q")  # note is not compared
    assert fast(1) != fast(2) and fast(1) != slow(1)
    assert hash(fast(1, tags=())) == hash(slow(1, tags=()))
    assert fast(1).tags is not fast(1).tags  # a new list each time
    for instance in (a, b):
        with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'x'"):
            instance.x = 3
        with pytest.raises(dataclasses.FrozenInstanceError, match="cannot delete field 'x'"):
            del instance.x
    assert dataclasses.replace(a, y=5) == fast(1, 5)
    assert dataclasses.asdict(a) == dataclasses.asdict(b)
    assert fast.__doc__ == slow.__doc__
    with pytest.raises(TypeError):
        fast()


@record
class _Checked:
    """A record with checks and an explicit hash."""

    name: str
    size: int = 0

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError("negative")

    def __hash__(self) -> int:
        return 7

    @property
    def label(self) -> str:
        return f"{self.name}:{self.size}"


def test_post_init_properties_and_an_own_hash_are_kept() -> None:
    assert _Checked("a", 1).label == "a:1"
    with pytest.raises(ValueError, match="negative"):
        _Checked("a", -1)
    assert hash(_Checked("a")) == 7
    assert pickle.loads(pickle.dumps(_Checked("a", 2))) == _Checked("a", 2)
    assert _Checked.__doc__ == "A record with checks and an explicit hash."


@record
class _Recursive:
    items: list[Any]


def test_a_recursive_repr_does_not_loop() -> None:
    value = _Recursive([])
    value.items.append(value)
    assert repr(value) == "_Recursive(items=[...])"


@record
class _WithClassVar:
    limit: ClassVar[int] = 3
    name: str


@record
class _Base:
    a: int


@record
class _Derived(_Base):
    b: int = 0


def test_what_a_record_does_not_write_itself_is_a_plain_frozen_dataclass() -> None:
    assert [f.name for f in dataclasses.fields(_WithClassVar)] == ["name"]
    assert _WithClassVar.limit == 3
    assert repr(_Derived(1, 2)) == "_Derived(a=1, b=2)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        _Derived(1).b = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {}), ((1, 2, 3, 4, 5), {}), ((1,), {"x": 2}), ((), {"z": 1}), ((), {"y": 1})],
)
def test_a_wrong_call_says_what_dataclass_says(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    fast, slow = _pair({"y": 2}, {"x": "int", "y": "int"})
    said = []
    for cls in (fast, slow):
        with pytest.raises(TypeError) as caught:
            cls(*args, **kwargs)
        said.append(str(caught.value))
    assert said[0] == said[1]
    three_fast, three_slow = _pair({}, {"a": "int", "b": "int", "c": "int"})
    with pytest.raises(TypeError) as fast_error:
        three_fast()
    with pytest.raises(TypeError) as slow_error:
        three_slow()
    assert str(fast_error.value) == str(slow_error.value)
