"""Which framework release is judged, by one rule for ``gpubox check``, ``up``'s report, the hosts table and the
dashboard: ``--framework tensorflow==2.21`` (check only), else the version installed where the project's runs
start (the project's env on the host, or the host's python when the project has no env; only ``check`` asks
the host), else the requirements file's pin, else the newest release gpubox knows; and the choice says which.

TensorFlow and PyTorch releases themselves are rows of the rules
(:class:`~gpubox.remote.gpu.rules.FrameworkRelease`): they live with the rules that load them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gpubox.errors import BadInput, UsageError
from gpubox.record import record
from gpubox.remote.gpu.rules import CompatRules, FrameworkRelease, Version, load_rules, version_numbers

__all__ = [
    "NEWEST",
    "FrameworkChoice",
    "FrameworkView",
    "choose_framework",
    "framework_from_requirements",
    "parse_framework_spec",
]


@record
class FrameworkChoice:
    release: FrameworkRelease
    chosen_by: str
    """Where the version came from, in words: ``--framework``, the host, the requirements file, the default."""


@record
class FrameworkView:
    """The agent's ``framework`` answer: what the framework installed in a python on the host reports."""

    python: str
    installed: bool | None
    """None when the python did not answer (timed out, crashed) or was not asked (an env not built yet)."""
    version: str | None = None
    gpus: tuple[str, ...] | None = None
    built_with_cuda: bool | None = None
    reason: str = ""
    place: str = ""
    """Where that python is, in words: ``the project's env``; "" for a bare python on the host."""

    @property
    def where(self) -> str:
        """``the project's env`` or ``/usr/bin/python3 on the host``."""
        return self.place or f"{self.python} on the host"

    @classmethod
    def from_agent(cls, answer: Mapping[str, Any], *, place: str = "") -> FrameworkView:
        gpus = answer.get("gpus")
        return cls(
            python=str(answer.get("python") or "python"),
            installed=answer.get("installed"),
            version=answer.get("version"),
            gpus=tuple(str(g) for g in gpus) if isinstance(gpus, list) else None,
            built_with_cuda=answer.get("built_with_cuda"),
            reason=str(answer.get("reason") or ""),
            place=place,
        )

    def document(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "python": self.python,
            "installed": self.installed,
            "version": self.version,
            "gpus": list(self.gpus) if self.gpus is not None else None,
            "built_with_cuda": self.built_with_cuda,
            "reason": self.reason or None,
        }


_FRAMEWORK_NAMES = {"tensorflow": "tensorflow", "tensorflow-gpu": "tensorflow", "torch": "torch"}
_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[^;]*)")
_CLAUSE = re.compile(r"^(===|==|!=|~=|<=|>=|<|>)\s*(\d+(?:\.\d+)*)(\.\*)?")


def _distribution(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _satisfies(release: Version, operator: str, version: Version, wildcard: bool) -> bool:
    """Whether *some* patch release of ``release`` (major, minor) meets one PEP 440 clause."""
    pinned = (*version, 0, 0)[:2]
    patch = version[2] if len(version) > 2 else 0
    if operator in ("==", "==="):
        return release[: len(version)] == version[:2] if wildcard else release == pinned
    if operator == "!=":
        return not (wildcard and release[: len(version)] == version[:2])
    if operator == "~=":
        prefix = version[:-1] if len(version) > 1 else version
        return release >= pinned and release[: len(prefix)] == prefix[:2]
    if operator in (">=", ">"):
        return release >= pinned
    if operator == "<=":
        return release <= pinned
    return release < pinned or (release == pinned and patch > 0)  # "<"


def _newest_matching(name: str, spec: str, rules: CompatRules) -> FrameworkRelease | None:
    clauses = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        found = _CLAUSE.match(part)
        if not found:
            raise UsageError(f"cannot read the version specifier {part!r}")
        clauses.append((found.group(1), version_numbers(found.group(2)), bool(found.group(3))))
    matching = [
        release
        for release in rules.releases_of(name)
        if all(_satisfies(version_numbers(release.version), *clause) for clause in clauses)
    ]
    return matching[-1] if matching else None


def _known_range(name: str, rules: CompatRules) -> str:
    known = rules.releases_of(name)
    return f"{known[0].version}–{known[-1].version}"


def parse_framework_spec(spec: str, rules: CompatRules | None = None) -> FrameworkRelease:
    """``tensorflow==2.21``, ``tensorflow==2.21.0``, ``torch==2.10``, ``tensorflow>=2.16`` or a bare name."""
    rules = rules or load_rules()
    found = _REQUIREMENT.match(spec.strip())
    name = _FRAMEWORK_NAMES.get(_distribution(found.group("name"))) if found else None
    if found is None or name is None:
        raise UsageError(f"--framework {spec}: gpubox knows tensorflow and torch (e.g. tensorflow==2.21)")
    if found.end() != len(spec.strip()) or not re.fullmatch(r"[\d\s.*=<>!~,]*", found.group("spec")):
        # Read as a prefix, "tensorflow==2.21x" or "...==2.21; anything" would quietly mean 2.21.
        raise UsageError(f"cannot read the version specifier {spec.strip()[found.start('spec') :]!r}")
    release = _newest_matching(name, found.group("spec"), rules)
    if release is None:
        raise UsageError(
            f"--framework {spec}: gpubox has no rules for that {name} version "
            f"(it knows {_known_range(name, rules)})"
        )
    return release


def framework_from_requirements(text: str, rules: CompatRules | None = None) -> FrameworkRelease | None:
    """The TensorFlow release a requirements file pins (``==``, ``>=``, ``~=``, …), if it pins one.

    Raises :class:`BadInput` when the pin names a version gpubox has no rules for.
    """
    rules = rules or load_rules()
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue  # comments and pip options (-r, -c, --index-url)
        found = _REQUIREMENT.match(line)
        if not found or _FRAMEWORK_NAMES.get(_distribution(found.group("name"))) != "tensorflow":
            continue
        spec = found.group("spec").strip()
        if not spec:
            return None  # unpinned: the newest release is as good a guess as any
        try:
            release = _newest_matching("tensorflow", spec, rules)
        except UsageError as exc:
            raise BadInput(f"{line}: {exc}") from None
        if release is None:
            raise BadInput(
                f"{line}: gpubox has no rules for that TensorFlow version "
                f"(it knows {_known_range('tensorflow', rules)})"
            )
        return release
    return None


def choose_framework(
    requested: FrameworkRelease | None,
    installed: FrameworkView | None,
    requirements: tuple[str, str] | None,
    rules: CompatRules | None = None,
) -> FrameworkChoice:
    """``--framework``, else what is *installed* where the project runs (see the module), else the requirements
    pin, else the newest; ``chosen_by`` says which.

    *requirements* is ``(file name, text)``.
    """
    rules = rules or load_rules()
    if requested is not None:
        return FrameworkChoice(requested, "--framework")
    if installed is not None and installed.installed and installed.version:
        release = rules.release("tensorflow", installed.version)
        if release is not None:
            return FrameworkChoice(release, f"installed in {installed.where}")
    if requirements is not None:
        pinned = framework_from_requirements(requirements[1], rules)
        if pinned is not None:
            return FrameworkChoice(pinned, f"pinned in {requirements[0]}")
    return FrameworkChoice(rules.newest("tensorflow"), NEWEST)


NEWEST = "newest gpubox knows"
"""``chosen_by`` when nothing names a release."""
