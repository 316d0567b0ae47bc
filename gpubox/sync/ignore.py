"""Which paths of the project go to the host: gitignore semantics, secrets held back, outputs left alone.

Rules, lowest precedence first, each level in gitignore syntax (via pathspec, real gitignore semantics):

1. built-ins (VCS folders, caches, virtualenvs, editor temp files);
2. per folder, its ``.gitignore`` then its ``.gpuboxignore`` (which may re-include with ``!``); a deeper folder's
   rules override a shallower one's, as in git; at the root, ``[sync] ignore`` from gpubox.toml comes last;
3. secrets (``.env``, keys, ``.netrc``) are held back unless ``[sync] include`` names them;
4. ``[sync] outputs`` folders belong to the host: never pushed, never deleted.

As in git, a file inside an ignored folder cannot be re-included: the walk never enters that folder.
"""

from __future__ import annotations

import contextlib
import enum
import fnmatch
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pathspec

if TYPE_CHECKING:
    from gpubox.config import ProjectConfig

__all__ = ["BUILTIN_IGNORES", "SECRET_PATTERNS", "Decision", "IgnoreRules"]

# Built-ins and secrets are all plain names or name globs, matched on the last path component with one
# compiled regex each: pathspec's per-pattern loop would cost more than the stat of every file it checks.
BUILTIN_IGNORED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        ".venv",
        "venv",
        "node_modules",
        ".ipynb_checkpoints",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        # Written by gpubox's own agent on the host side; never a project file.
        ".gpubox-staging",
    }
)
BUILTIN_IGNORED_FILES = (
    "*.pyc",
    ".DS_Store",
    # Editor temp files: vim swap/backup, emacs lock/backup, JetBrains safe-write.
    "*.swp",
    "*.swo",
    "*~",
    ".#*",
    "*___jb_tmp___",
    "*___jb_old___",
    # The marker a held host's flush barrier writes and removes at once (gpubox/sync/watch.py, FLUSH_MARKER).
    ".gpubox-flush-*",
)
BUILTIN_IGNORES = tuple(f"{name}/" for name in sorted(BUILTIN_IGNORED_DIRS)) + BUILTIN_IGNORED_FILES
SECRET_PATTERNS = (
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_dsa*",
    "id_ed25519*",
    "id_ecdsa*",
    "id_xmss*",
    ".netrc",
)
IGNORE_FILES = (".gitignore", ".gpuboxignore")


class Decision(enum.Enum):
    SEND = "send"
    IGNORED = "ignored"
    SECRET = "secret"
    OUTPUT = "output"
    TOO_LARGE = "too large"


def _spec(lines: Iterable[str]) -> pathspec.GitIgnoreSpec | None:
    kept = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return pathspec.GitIgnoreSpec.from_lines(kept) if kept else None


_NAMED_GROUP = re.compile(r"\(\?P<[A-Za-z_][A-Za-z0-9_]*>")


def _any_pattern(spec: pathspec.GitIgnoreSpec) -> re.Pattern[str] | None:
    """One regex that matches wherever any of *spec*'s patterns would: most paths match none, and one search
    costs less than pathspec's loop over every pattern. None when the patterns cannot be joined that way."""
    sources = []
    for pattern in spec.patterns:
        regex = getattr(pattern, "regex", None)
        if pattern.include is None:
            continue
        if (
            not isinstance(regex, re.Pattern)
            or not isinstance(regex.pattern, str)
            or regex.flags != re.UNICODE
        ):
            return None
        sources.append(f"(?:{_NAMED_GROUP.sub('(?:', regex.pattern)})")
    if not sources:
        return None
    try:
        return re.compile("|".join(sources))
    except re.error:
        return None


@dataclass(frozen=True, slots=True)
class _Level:
    """The rules of one folder as seen from a folder at or below it."""

    offset: int
    """Where the path below this level's folder starts in a project-relative path."""
    spec: pathspec.GitIgnoreSpec
    any_pattern: re.Pattern[str] | None

    def verdict(self, relpath: str) -> bool | None:
        below = relpath[self.offset :]
        if self.any_pattern is not None and self.any_pattern.search(below) is None:
            return None
        return self.spec.check_file(below).include


def _name_matcher(globs: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs))


_BUILTIN_FILE_NAMES = _name_matcher(BUILTIN_IGNORED_FILES)
_SECRET_NAMES = _name_matcher(SECRET_PATTERNS)
_FILE_NAME_RULES = re.compile(
    f"(?P<builtin>{_BUILTIN_FILE_NAMES.pattern})|(?P<secret>{_SECRET_NAMES.pattern})"
)
"""Both in one match (which one, by the group's name): the scan asks it of every file."""


def _anchored(pattern: str) -> str:
    """Outputs are folders relative to the project root, whatever their depth in gitignore terms."""
    pattern = pattern.strip()
    return pattern if pattern.startswith("/") else "/" + pattern


@dataclass
class IgnoreRules:
    root: Path
    extra_ignores: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    max_file_size: int | None = None
    _levels: dict[str, pathspec.GitIgnoreSpec | None] = field(default_factory=dict, repr=False)
    _chains: dict[str, tuple[_Level, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._includes = _spec(self.includes)
        self._outputs = _spec(_anchored(p) for p in self.outputs)

    # -- rule files

    def _level(self, folder: str, files: Iterable[str] | None = None) -> pathspec.GitIgnoreSpec | None:
        """The combined .gitignore + .gpuboxignore of *folder* ('' is the root), read once and cached. *files*:
        which of the two the folder holds, when the caller has just listed it (no failed open per folder)."""
        if folder not in self._levels:
            lines: list[str] = []
            base = self.root / folder if folder else self.root
            for name in IGNORE_FILES if files is None else [n for n in IGNORE_FILES if n in files]:
                with contextlib.suppress(OSError):
                    lines += (base / name).read_text(errors="replace").splitlines()
            if not folder:
                lines += list(self.extra_ignores)
            self._levels[folder] = _spec(lines)
        return self._levels[folder]

    def _chain(self, folder: str, files: Iterable[str] | None = None) -> tuple[_Level, ...]:
        """The rule levels that apply to the entries of *folder*, shallowest first (cached per folder)."""
        chain = self._chains.get(folder)
        if chain is None:
            above = self._chain(folder.rpartition("/")[0]) if folder else ()
            spec = self._level(folder, files)
            here = (_Level(len(folder) + 1 if folder else 0, spec, _any_pattern(spec)),) if spec else ()
            chain = self._chains[folder] = above + here
        return chain

    def forget(self, folder: str) -> None:
        """Drop the cached rules of *folder* (its .gitignore or .gpuboxignore changed)."""
        self._levels.pop(folder, None)
        self._chains.clear()

    def forget_all(self) -> None:
        self._levels.clear()
        self._chains.clear()

    # -- decisions

    def is_ignored(self, relpath: str, is_dir: bool) -> bool:
        """Gitignore verdict for *relpath* alone (its parent folders are assumed not ignored)."""
        folder, _, name = relpath.rpartition("/")
        ignored = name in BUILTIN_IGNORED_DIRS if is_dir else bool(_BUILTIN_FILE_NAMES.match(name))
        if is_dir:
            relpath += "/"
        for level in self._chain(folder):
            verdict = level.verdict(relpath)
            if verdict is not None:
                ignored = verdict
        return ignored

    def file_decider(self, folder: str, files: Iterable[str]) -> Callable[[str, str, int], Decision]:
        """:meth:`decide` for the files of one folder the caller has just listed (*files*: the names in it), as
        one function with the folder's rules bound: what a full scan calls for every file."""
        chain = self._chain(folder, files)
        levels = [
            (
                level.offset,
                None if level.any_pattern is None else level.any_pattern.search,
                level.spec.check_file,
            )
            for level in chain
        ]
        name_rule = _FILE_NAME_RULES.match
        secret_name = _SECRET_NAMES.match
        included = self.included
        limit = self.max_file_size

        def decide(relpath: str, name: str, size: int) -> Decision:
            hit = name_rule(name)
            kind = None if hit is None else hit.lastgroup
            ignored = kind == "builtin"
            for offset, search, check in levels:
                below = relpath[offset:]
                if search is not None and search(below) is None:
                    continue
                verdict = check(below).include
                if verdict is not None:
                    ignored = verdict
            if ignored and not included(relpath):
                return Decision.IGNORED
            # A name both ignored by default and secret, re-included by a rule, is still a secret.
            secret = kind == "secret" or (kind == "builtin" and secret_name(name) is not None)
            if secret and not included(relpath):
                return Decision.SECRET
            if limit is not None and size > limit and not included(relpath):
                return Decision.TOO_LARGE
            return Decision.SEND

        return decide

    def included(self, relpath: str, is_dir: bool = False) -> bool:
        if self._includes is None:
            return False
        return bool(self._includes.check_file(relpath + "/" if is_dir else relpath).include)

    def is_output(self, relpath: str, is_dir: bool) -> bool:
        if self._outputs is None:
            return False
        return bool(self._outputs.check_file(relpath + "/" if is_dir else relpath).include)

    def decide(self, relpath: str, is_dir: bool, size: int = 0) -> Decision:
        # Outputs are folders; the walk never enters one, so files need no output check.
        if is_dir and self.is_output(relpath, is_dir):
            return Decision.OUTPUT
        if self.is_ignored(relpath, is_dir) and not self.included(relpath, is_dir):
            return Decision.IGNORED
        if not is_dir and _SECRET_NAMES.match(relpath.rpartition("/")[2]) and not self.included(relpath):
            return Decision.SECRET
        if (
            not is_dir
            and self.max_file_size is not None
            and size > self.max_file_size
            and not self.included(relpath)
        ):
            return Decision.TOO_LARGE
        return Decision.SEND

    def decide_path(self, relpath: str, is_dir: bool, size: int = 0) -> Decision:
        """Like :meth:`decide`, but also checks every parent folder (for a single path from a watch event)."""
        parts = relpath.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            verdict = self.decide(parent, True)
            if verdict is not Decision.SEND:
                return verdict
        return self.decide(relpath, is_dir, size)


def relative(root: Path, path: str | os.PathLike[str]) -> str | None:
    """*path* relative to *root* in '/' form, or None when it is outside the root (or the root itself)."""
    try:
        rel = Path(path).relative_to(root)
    except ValueError:
        return None
    text = rel.as_posix()
    return None if text in ("", ".") else text


def rules_for(project: ProjectConfig) -> IgnoreRules:
    """The project's rules as gpubox.toml's [sync] sets them."""
    sync = project.sync
    return IgnoreRules(
        project.root,
        extra_ignores=sync.ignore,
        includes=sync.include,
        outputs=sync.outputs,
        max_file_size=int(sync.max_file_size_mb * 1024 * 1024),
    )
