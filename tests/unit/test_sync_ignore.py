"""IgnoreRules: gitignore semantics (checked against real git), .gpuboxignore, built-ins, secrets, outputs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gpubox.sync.folder_index import add_unchanged
from gpubox.sync.ignore import Decision, IgnoreRules, relative
from gpubox.sync.scan import Entry, ScanResult, scan_tree

SEND, IGNORED, SECRET, OUTPUT, TOO_LARGE = (
    Decision.SEND,
    Decision.IGNORED,
    Decision.SECRET,
    Decision.OUTPUT,
    Decision.TOO_LARGE,
)


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def rules(root: Path, **kwargs: object) -> IgnoreRules:
    return IgnoreRules(root, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- built-ins


@pytest.mark.parametrize(
    "folder",
    [".git", "__pycache__", ".venv", "venv", "node_modules", ".ipynb_checkpoints", ".gpubox-staging"],
)
def test_builtin_folders_are_ignored_at_any_depth_as_folders_only(tmp_path: Path, folder: str) -> None:
    r = rules(tmp_path)
    assert r.decide(folder, True) is IGNORED
    assert r.decide(f"pkg/sub/{folder}", True) is IGNORED
    assert r.decide_path(f"{folder}/inner/file.py", False) is IGNORED
    # Dir-only: a file of that name is a project file.
    assert r.decide(folder, False) is SEND


@pytest.mark.parametrize(
    ("name", "decision"),
    [
        ("m.pyc", IGNORED),
        ("pkg/m.pyc", IGNORED),
        (".model.py.swp", IGNORED),
        ("model.py~", IGNORED),
        (".#model.py", IGNORED),
        ("model.py___jb_tmp___", IGNORED),
        ("model.py___jb_old___", IGNORED),
        (".DS_Store", IGNORED),
        ("model.py", SEND),
        ("pyc", SEND),
        ("tilde~not-at-end", SEND),
    ],
)
def test_builtin_file_globs(tmp_path: Path, name: str, decision: Decision) -> None:
    assert rules(tmp_path).decide(name, False) is decision


# ---------------------------------------------------------------------------------- gitignore syntax


def test_gitignore_patterns(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            ".gitignore": "\n".join(
                [
                    "# a comment",
                    "",
                    "*.log",
                    "!keep.log",
                    "/build/",
                    "doc/*.txt",
                    "**/cache/",
                    "a/**/b",
                    "tmp*",
                    "\\#literal",
                    "only-dir/",
                ]
            )
            + "\n"
        },
    )
    r = rules(tmp_path)
    # unanchored glob: every depth; negation brings one name back
    assert r.is_ignored("x.log", False) and r.is_ignored("deep/er/x.log", False)
    assert not r.is_ignored("keep.log", False) and not r.is_ignored("deep/keep.log", False)
    # leading slash anchors to the .gitignore's folder; trailing slash matches folders only
    assert r.is_ignored("build", True)
    assert not r.is_ignored("build", False)
    assert not r.is_ignored("src/build", True)
    # a slash inside anchors too
    assert r.is_ignored("doc/a.txt", False)
    assert not r.is_ignored("x/doc/a.txt", False) and not r.is_ignored("doc/sub/a.txt", False)
    # ** at the front: any depth; in the middle: zero or more folders
    assert r.is_ignored("cache", True) and r.is_ignored("p/q/cache", True)
    assert not r.is_ignored("p/cache", False)
    assert r.is_ignored("a/b", False) and r.is_ignored("a/x/b", False) and r.is_ignored("a/x/y/b", False)
    assert not r.is_ignored("z/a/b", False)
    assert r.is_ignored("tmpfile", False) and r.is_ignored("tmp", True)
    assert r.is_ignored("#literal", False)
    assert r.is_ignored("only-dir", True) and not r.is_ignored("only-dir", False)
    assert not r.is_ignored("# a comment", False) and not r.is_ignored("src/main.py", False)


def test_nested_gitignores_override_shallower_ones_in_their_folder_only(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            ".gitignore": "*.log\n*.tmp\n",
            "sub/.gitignore": "!important.log\n*.cache\n/only-here.txt\n",
            "sub/deeper/.gitignore": "!*.tmp\n",
            "other/.gitignore": "*.py\n",
        },
    )
    r = rules(tmp_path)
    assert r.is_ignored("important.log", False)
    assert not r.is_ignored("sub/important.log", False)
    assert not r.is_ignored("sub/deeper/important.log", False)
    assert r.is_ignored("sub/other.log", False)
    assert r.is_ignored("sub/x.cache", False) and r.is_ignored("sub/deeper/x.cache", False)
    assert not r.is_ignored("x.cache", False)
    assert r.is_ignored("sub/only-here.txt", False)
    assert not r.is_ignored("sub/deeper/only-here.txt", False) and not r.is_ignored("only-here.txt", False)
    assert r.is_ignored("sub/a.tmp", False) and not r.is_ignored("sub/deeper/a.tmp", False)
    assert r.is_ignored("other/a.py", False) and not r.is_ignored("a.py", False)


def test_gpuboxignore_and_sync_ignore_have_the_last_word(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            ".gitignore": "*.csv\nweights/\n",
            ".gpuboxignore": "!small.csv\nlocal-notes.md\n",
            "data/.gitignore": "!*.csv\n",
            "data/.gpuboxignore": "huge.csv\n",
        },
    )
    r = rules(tmp_path, extra_ignores=("*.bak", "!keep.bak"))
    assert r.is_ignored("big.csv", False) and not r.is_ignored("small.csv", False)
    assert r.is_ignored("local-notes.md", False)
    assert not r.is_ignored("data/a.csv", False) and r.is_ignored("data/huge.csv", False)
    assert r.is_ignored("x.bak", False) and r.is_ignored("data/x.bak", False)
    assert not r.is_ignored("keep.bak", False)
    # As in git, nothing inside an ignored folder comes back: the walk never enters it.
    assert r.decide_path("weights/model.bin", False) is IGNORED


def test_include_brings_back_ignored_paths_and_secrets_and_large_files(tmp_path: Path) -> None:
    tree(tmp_path, {".gitignore": "*.csv\n"})
    r = rules(tmp_path, includes=("data/keep.csv", ".env", "big.bin"), max_file_size=100)
    assert r.decide("data/keep.csv", False) is SEND
    assert r.decide("data/other.csv", False) is IGNORED
    assert r.decide(".env", False) is SEND
    assert r.decide("sub/.env", False) is SEND  # an unanchored include names it anywhere, as gitignore would
    assert r.decide("big.bin", False, size=1_000) is SEND
    assert r.decide("other.bin", False, size=1_000) is TOO_LARGE
    assert r.decide("other.bin", False, size=100) is SEND


@pytest.mark.parametrize(
    "name",
    [
        ".env",
        ".env.local",
        ".env.production",
        "server.pem",
        "tls.key",
        "id_rsa",
        "id_rsa.pub",
        "id_ed25519",
        "id_ecdsa",
        ".netrc",
        "deep/down/.env",
    ],
)
def test_secrets_are_held_back(tmp_path: Path, name: str) -> None:
    assert rules(tmp_path).decide(name, False) is SECRET
    assert rules(tmp_path, includes=(name.rpartition("/")[2],)).decide(name, False) is SEND


@pytest.mark.parametrize("name", ["env", ".envrc", "environment.yml", "keys.py", "my_id_rsa_notes.md"])
def test_look_alikes_are_not_secrets(tmp_path: Path, name: str) -> None:
    assert rules(tmp_path).decide(name, False) is SEND


def test_secret_folders_are_not_secrets_themselves(tmp_path: Path) -> None:
    # The secret globs name files; a folder named ".env" (a virtualenv some people use) is entered.
    assert rules(tmp_path).decide(".env", True) is SEND


def test_outputs_are_anchored_at_the_root(tmp_path: Path) -> None:
    r = rules(tmp_path, outputs=("runs/", "checkpoints", "/logs/", "exp/out/"))
    for folder in ("runs", "checkpoints", "logs", "exp/out"):
        assert r.decide(folder, True) is OUTPUT, folder
        assert r.decide_path(f"{folder}/a/b.txt", False) is OUTPUT
    for folder in ("src/runs", "deep/logs", "out", "x/exp/out"):
        assert r.decide(folder, True) is SEND, folder
    # A file named like an output folder is code.
    assert r.decide("runs", False) is SEND


def test_decide_path_checks_every_parent(tmp_path: Path) -> None:
    tree(tmp_path, {".gitignore": "build/\n"})
    r = rules(tmp_path, outputs=("runs/",))
    assert r.decide_path("build/x/y.py", False) is IGNORED
    assert r.decide_path(".git/objects/ab", False) is IGNORED
    assert r.decide_path("runs/exp/metrics.json", False) is OUTPUT
    assert r.decide_path("src/pkg/mod.py", False) is SEND


def test_rule_files_are_cached_until_forgotten(tmp_path: Path) -> None:
    tree(tmp_path, {"sub/.gitignore": "*.log\n"})
    r = rules(tmp_path)
    assert r.is_ignored("sub/a.log", False)
    (tmp_path / "sub" / ".gitignore").write_text("")
    assert r.is_ignored("sub/a.log", False)  # cached
    r.forget("sub")
    assert not r.is_ignored("sub/a.log", False)
    (tmp_path / "sub" / ".gitignore").write_text("*.log\n")
    r.forget_all()
    assert r.is_ignored("sub/a.log", False)


def test_scan_applies_the_rules(tmp_path: Path) -> None:
    root = tmp_path / "proj"  # tmp_path also holds the test's HOME
    tree(
        root,
        {
            ".gitignore": "*.log\n",
            "a.py": "",
            "a.log": "",
            ".env": "",
            "runs/x": "",
            "node_modules/m.js": "",
            "big.bin": "x" * 50,
        },
    )
    result = scan_tree(root, rules(root, outputs=("runs/",), max_file_size=10))
    assert sorted(result.entries) == [".gitignore", "a.py"]
    assert result.held_back == [".env"] and result.too_large == [("big.bin", 50)]
    assert {"a.log", "runs", "node_modules", ".env", "big.bin"} <= result.skipped


def test_relative(tmp_path: Path) -> None:
    assert relative(tmp_path, tmp_path / "a" / "b") == "a/b"
    assert relative(tmp_path, tmp_path) is None
    assert relative(tmp_path, tmp_path.parent / "elsewhere") is None


# ------------------------------------------------------------------------------ against real git


GIT_TREE = {
    ".gitignore": "*.log\n!keep.log\n/build/\ndoc/*.txt\n**/cache/\na/**/b\n*.o\n!/lib/*.o\nvendor/\n",
    "src/.gitignore": "!debug.log\n*.gen.py\n/local.cfg\n",
    "src/deep/.gitignore": "!*.gen.py\n",
}
GIT_PATHS = [
    "x.log",
    "keep.log",
    "src/debug.log",
    "src/deep/debug.log",
    "src/other.log",
    "build/out.bin",
    "src/build/out.bin",
    "doc/a.txt",
    "doc/sub/a.txt",
    "x/doc/a.txt",
    "cache/c.bin",
    "p/q/cache/c.bin",
    "a/b",
    "a/x/b",
    "a/x/y/b",
    "z/a/b",
    "main.o",
    "lib/util.o",
    "lib/sub/util.o",
    "vendor/pkg/mod.py",
    "src/vendor/pkg/mod.py",
    "src/x.gen.py",
    "src/deep/x.gen.py",
    "src/local.cfg",
    "src/deep/local.cfg",
    "src/main.py",
]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_verdicts_match_git_check_ignore(tmp_path: Path) -> None:
    root = tree(tmp_path / "repo", {**GIT_TREE, **{path: "x\n" for path in GIT_PATHS}})
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    answer = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=root,
        input="\n".join(GIT_PATHS) + "\n",
        capture_output=True,
        text=True,
    )
    assert answer.returncode in (0, 1), answer.stderr
    by_git = set(answer.stdout.split())
    r = rules(root)
    ours = {path for path in GIT_PATHS if r.decide_path(path, False) is IGNORED}
    assert ours == by_git
    assert len(by_git) >= 12, by_git
    # And the walk sends exactly what git would track.
    scanned = {p for p, e in scan_tree(root, r).entries.items() if e.kind == "f"}
    assert scanned == (set(GIT_PATHS) - by_git) | set(GIT_TREE)


def _split_tree(root: Path) -> Path:
    files = {".gitignore": "*.log\n", "top.py": "", ".env": "k=v"}
    for index in range(12):
        folder = f"pkg{index}/sub{index % 3}"
        files |= {
            f"{folder}/m{index}.py": "x" * index,
            f"{folder}/m{index}.log": "",
            f"{folder}/.gitignore": "*.tmp\n",
            f"{folder}/scratch.tmp": "",
            f"{folder}/id_rsa": "secret",
            f"{folder}/big.bin": "x" * 64,
        }
    tree(root, files)
    (root / "pkg3" / ".git").mkdir()
    (root / "pkg4" / "inside").symlink_to("sub1")
    (root / "pkg5" / "outside").symlink_to("/etc")
    (root / "pkg6" / "closed").mkdir()
    (root / "pkg6" / "closed").chmod(0)
    return root


def _facts(result: ScanResult) -> tuple[object, ...]:
    return (
        dict(result.entries),
        sorted(result.held_back),
        sorted(result.too_large),
        sorted(result.outside_links),
        sorted(result.unreadable),
        result.skipped,
        result.checkouts,
    )


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids of the walkers a split scan forks (forking allowed in this test process, whose test runner
    may have threads of its own: the walker's child touches no lock they hold)."""
    import gpubox.sync.scan as scan

    started: list[int] = []
    real = scan._Walker.start

    def start(*args: object) -> object:
        walker = real(*args)  # type: ignore[arg-type]
        if walker is not None:
            started.append(walker.pid)
        return walker

    monkeypatch.setattr(scan, "_may_fork", lambda: True)
    monkeypatch.setattr(scan._Walker, "start", start)
    return started


def test_a_split_scan_finds_exactly_what_one_process_finds(tmp_path: Path, children: list[int]) -> None:
    root = _split_tree(tmp_path / "proj")
    try:
        alone = scan_tree(root, rules(root, max_file_size=32))
        loaded: list[bool] = []
        split = scan_tree(
            root, rules(root, max_file_size=32), split=True, meanwhile=lambda: loaded.append(True)
        )
        assert loaded == [True] and len(children) == 1
        assert _facts(split) == _facts(alone)
        assert all(type(entry) is Entry for entry in split.entries.values())
        assert "pkg3" in split.checkouts and len(split.held_back) == 13 and len(split.too_large) == 12
    finally:
        (root / "pkg6" / "closed").chmod(0o755)


def test_a_child_that_fails_has_its_share_walked_by_the_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, children: list[int]
) -> None:
    import gpubox.sync.scan as scan

    root = _split_tree(tmp_path / "proj")
    try:
        alone = scan_tree(root, rules(root, max_file_size=32))

        class Broken:
            @staticmethod
            def dumps(value: object) -> bytes:
                raise MemoryError("the child runs out of memory")

            loads = staticmethod(scan.marshal.loads)

        monkeypatch.setattr(scan, "marshal", Broken)
        split = scan_tree(root, rules(root, max_file_size=32), split=True)
        assert len(children) == 1 and _facts(split) == _facts(alone)
    finally:
        (root / "pkg6" / "closed").chmod(0o755)


@pytest.mark.parametrize("split", [False, True], ids=["one-process", "split"])
def test_a_walk_with_the_folder_index_finds_what_a_plain_walk_finds(
    tmp_path: Path, children: list[int], split: bool
) -> None:
    """A folder found as the index has it is not decided again: its entries are the ancestor's, and what else the
    walk would report there (skipped, secrets, too large, links out) is replayed. A change anywhere, in a rule
    file above a folder too, makes that folder decided again."""
    root = _split_tree(tmp_path / "proj")
    try:

        def walk(index: dict[str, object] | None, token: bytes = b"settings") -> ScanResult:
            return scan_tree(root, rules(root, max_file_size=32), split=split, index=index, token=token)  # type: ignore[arg-type]

        def after(index: ScanResult, token: bytes = b"settings") -> tuple[ScanResult, tuple[object, ...]]:
            found = walk(index.records, token)  # type: ignore[arg-type]
            add_unchanged(found.unchanged, found.entries, index.entries)
            return found, _facts(walk(None))

        first = walk({})
        assert _facts(first) == _facts(walk(None)) and first.relisted == len(first.records)
        assert not any(path in first.records for path, _why in first.unreadable)  # never taken as unchanged

        again, plain = after(first)
        assert again.relisted == 0 and again.unchanged == set(first.records)
        assert _facts(again) == plain

        (root / "pkg2" / "sub2" / "m2.py").write_text("changed, and longer")
        changed, plain = after(first)
        assert changed.relisted == 1 and "pkg2/sub2" not in changed.unchanged and _facts(changed) == plain

        (root / ".gitignore").write_text("*.log\n*.py\n")  # the root's rules: every folder decides anew
        ruled, plain = after(changed)
        assert ruled.unchanged == set() and _facts(ruled) == plain
        assert not any(path.endswith(".py") for path in ruled.entries)

        other, plain = after(ruled, token=b"other settings")
        assert other.unchanged == set() and _facts(other) == plain
    finally:
        (root / "pkg6" / "closed").chmod(0o755)


def test_a_folder_whose_rule_file_is_a_link_is_never_taken_as_unchanged(tmp_path: Path) -> None:
    root = tree(tmp_path / "proj", {"rules.txt": "", "pkg/a.py": "", "pkg/sub/b.py": "", "other/c.py": ""})
    (root / "pkg" / ".gitignore").symlink_to("../rules.txt")
    first = scan_tree(root, rules(root), index={}, token=b"t")
    assert "pkg" not in first.records and "pkg/sub" not in first.records and "other" in first.records
    (root / "rules.txt").write_text("*.py\n")  # what pkg/.gitignore says changed; pkg's listing did not
    again = scan_tree(root, rules(root), index=first.records, token=b"t")
    add_unchanged(again.unchanged, again.entries, first.entries)
    assert again.unchanged == {"other"}
    assert _facts(again) == _facts(scan_tree(root, rules(root)))
    assert "pkg/a.py" not in again.entries and "pkg/sub/b.py" not in again.entries
