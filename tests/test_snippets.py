"""Every code block in README.md and docs/*.md runs as written, or says why it does not.

How a block is checked is read from its language tag:

* ``python``: run in a fresh interpreter, in a scratch directory that holds links to the
  repository's examples/, infra/ and docs/, with ``LAMBDAPOOL_DSN`` and ``DATABASE_URL`` naming a
  throwaway Postgres (the ``pg_server`` fixture); a ``<!-- then: CODE -->`` comment right after
  the block runs CODE after it, in the same module (the block's own assertions, hidden from
  readers). ``<!-- run: pytest -->`` before the block runs it as a test module under pytest.
* ``sh``: run by bash (``-e -o pipefail``) in that scratch directory; it must exit 0.
  ``<!-- run: in a clone -->`` runs it in a fresh copy of the repository's files instead.
* ``console``: each ``$ command`` is run there and what follows it, up to the next ``$``, is what
  it must print (stdout and stderr; compared with whitespace collapsed, since the docs wrap
  long lines).
* ``text``, ``toml``, ``ini``, ``json``, ``hcl``, ``yaml``: data, formulas or output; not run.

A block right after ``<!-- not run: REASON -->`` is not run, and the reason is required. A block
with any other tag, or none, fails ``test_every_block_says_how_it_is_checked``: a block that
cannot be run must say so, or it would rot unseen.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = ("python", "sh", "console")
DATA = ("text", "toml", "ini", "json", "hcl", "yaml")
LINKED = ("examples", "infra", "docs", "benchmarks")  # what snippets may name by relative path
TIMEOUT = 240

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[^`\s]*)\s*$")
_COMMENT = re.compile(r"<!--(.*?)-->", re.S)
_DIRECTIVE = re.compile(r"\s*(not run|then|run):\s*(.*?)\s*$", re.S)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    before: dict[str, str]  # directives in the comment right above the fence
    after: dict[str, str]  # directives in the comment right below the closing fence

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in RUN and "not run" not in self.before


def _comments(text: str) -> list[tuple[int, int, dict[str, str]]]:
    """(first line, last line, {directive: value}) of each HTML comment that holds one."""
    found = []
    for match in _COMMENT.finditer(text):
        directive = _DIRECTIVE.fullmatch(match.group(1))
        if directive:
            first = text.count("\n", 0, match.start()) + 1
            last = text.count("\n", 0, match.end()) + 1
            found.append((first, last, {directive.group(1): directive.group(2)}))
    return found


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    lines = text.splitlines()
    comments = _comments(text)
    out, i = [], 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent = fence.group("indent")
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        body = [line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[i + 1 : end]]
        before = {k: v for first, last, d in comments if last == i for k, v in d.items()}  # last == fence line - 1
        after = {k: v for first, last, d in comments if first == end + 2 for k, v in d.items()}
        out.append(Block(page, i + 1, fence.group("lang"), "\n".join(body) + "\n", before, after))
        i = end + 1
    return out


ALL = [b for page in PAGES for b in blocks(page)]


def test_every_block_says_how_it_is_checked():
    unsaid = [
        f"{b.id} ({b.lang or 'no language tag'})" for b in ALL if b.lang not in RUN + DATA and "not run" not in b.before
    ]
    assert not unsaid, (
        "blocks that are neither run nor marked: tag them (python, sh, console; text for output) or put "
        f"`<!-- not run: why -->` right above them: {unsaid}"
    )
    assert not [b.id for b in ALL if "not run" in b.before and not b.before["not run"]], "a reason is required"
    assert not [b.id for b in ALL if "then" in b.after and b.lang != "python"], "`then` follows python blocks"
    runs = {("python", "pytest"), ("sh", "in a clone")}
    assert not [b.id for b in ALL if "run" in b.before and (b.lang, b.before["run"]) not in runs], (
        f"`run:` says one of {sorted(runs)}"
    )


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def clone(into: Path) -> Path:
    """A fresh copy of the repository's files (tracked, and new ones not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


def environment(dsn: str) -> dict[str, str]:
    """The snippet's environment: this interpreter's bin first (python, lambdapool), a throwaway
    database, and nothing of the caller's AWS or LAMBDAPOOL_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAMBDAPOOL_", "AWS_", "DATABASE_URL"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # LAMBDAPOOL_TEST_DSN: the fixtures of a snippet run under pytest reuse that database too
    env.update(LAMBDAPOOL_DSN=dsn, DATABASE_URL=dsn, LAMBDAPOOL_TEST_DSN=dsn, PYTHONDONTWRITEBYTECODE="1")
    return env


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL
    )


def commands(console: str) -> list[tuple[str, str]]:
    """``$ command`` lines (continued by a trailing backslash) and the output that follows each."""
    pairs: list[tuple[str, list[str]]] = []
    lines = console.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command = [line[2:]]
            while command[-1].endswith("\\") and i + 1 < len(lines):
                i += 1
                command.append(lines[i])
            pairs.append(("\n".join(command), []))
        elif pairs:
            pairs[-1][1].append(line)
        i += 1
    return [(command, "\n".join(output)) for command, output in pairs]


def _said(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


@pytest.mark.parametrize("block", [b for b in ALL if b.runs], ids=lambda b: b.id)
def test_block_runs_as_written(block: Block, pg_server, scratch: Path):
    env = environment(pg_server.dsn)
    if block.lang == "python":
        code = block.code + ("\n" + textwrap.dedent(block.after["then"]) + "\n" if "then" in block.after else "")
        if block.before.get("run") == "pytest":
            (scratch / "test_snippet.py").write_text(code)
            argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_snippet.py"]
        else:
            (scratch / "snippet.py").write_text(code)
            argv = [sys.executable, "snippet.py"]
        proc = run(argv, scratch, env)
        assert proc.returncode == 0, f"{block.id}:\n{block.code}\n{_said(proc)}"
    elif block.lang == "sh":
        cwd = clone(scratch / "clone") if block.before.get("run") == "in a clone" else scratch
        (scratch / "snippet.sh").write_text(block.code)
        proc = run(["bash", "-e", "-o", "pipefail", str(scratch / "snippet.sh")], cwd, env)
        assert proc.returncode == 0, f"{block.id}:\n{block.code}\n{_said(proc)}"
    else:
        pairs = commands(block.code)
        assert pairs, f"{block.id}: a console block with no `$ command`"
        for command, expected in pairs:
            proc = run(["bash", "-o", "pipefail", "-c", command], scratch, env)
            printed = proc.stdout + proc.stderr
            assert " ".join(printed.split()) == " ".join(expected.split()), (
                f"{block.id}: `{command}` printed\n{printed}\nbut the page says\n{expected}"
            )
