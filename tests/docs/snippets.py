"""Extract the code snippets of the README and the docs pages, and run one page's snippets in order.

A fenced block whose language is `python` runs in one interpreter per page (later blocks see earlier
ones' names); `bash`/`sh`/`shell` blocks run with bash -e in the page's working directory, with
`./dev CMD` run as `CMD` and `.venv/bin/` as the running interpreter's bin directory. Other languages
(`text`, `toml`, ...) are shown, not run. A marker on the line before a block changes how it runs:

    <!-- snippet: skip REASON -->                 not run; the page shows REASON (tools/mkdocs_hooks.py)
    <!-- snippet: sub "OLD" "NEW" ; "OLD" "NEW" -->  run with OLD replaced by NEW (a tiny config for a long run)

Usage as a script: `python tests/docs/snippets.py PAGE WORKDIR` runs PAGE's runnable snippets in WORKDIR.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_LANGS = {"python": "python", "py": "python", "bash": "shell", "sh": "shell", "shell": "shell"}
SHOWN_LANGS = {"text", "toml", "json", "console-output", "csv", "yaml"}
_FENCE = re.compile(r"^(\s*)```([\w\-]*)\s*$")
_MARKER = re.compile(r"^\s*<!-- snippet: (skip|sub) (.*?) -->\s*$")
_PAIR = re.compile(r'"((?:[^"\\]|\\.)*)"\s+"((?:[^"\\]|\\.)*)"')


@dataclasses.dataclass
class Snippet:
    page: Path
    line: int                     # 1-based line of the opening fence
    lang: str                     # the fence's language as written
    code: str
    skip: str | None = None       # the reason, for a skipped snippet
    subs: tuple[tuple[str, str], ...] = ()

    @property
    def kind(self) -> str | None:
        return RUN_LANGS.get(self.lang)

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def runnable_code(self) -> str:
        if not self.subs:
            return self.code
        for old, _ in self.subs:
            if old not in self.code:
                raise ValueError(f"{self.id}: the marker replaces {old!r}, which the snippet does not contain")
        table = dict(self.subs)       # all at once, the longest match first: "a_b" is not seen as "a" + "_b"
        pattern = "|".join(re.escape(old) for old in sorted(table, key=len, reverse=True))
        return re.sub(pattern, lambda m: table[m.group(0)], self.code)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def snippets(page: Path) -> list[Snippet]:
    lines = page.read_text().split("\n")
    out, i, marker = [], 0, None
    while i < len(lines):
        m = _MARKER.match(lines[i])
        if m:
            marker = (m.group(1), m.group(2), i)
            i += 1
            continue
        f = _FENCE.match(lines[i])
        if f:
            indent, lang, start = f.group(1), f.group(2), i
            body = []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
                i += 1
            snip = Snippet(page, start + 1, lang, "\n".join(body) + "\n")
            if marker is not None and marker[2] == start - 1:
                kind, arg = marker[0], marker[1]
                if kind == "skip":
                    snip.skip = arg.strip()
                else:
                    pairs = [tuple(bytes(x, "utf-8").decode("unicode_escape") for x in p) for p in _PAIR.findall(arg)]
                    if not pairs:
                        raise ValueError(f"{page}:{start}: a sub marker needs \"OLD\" \"NEW\" pairs, found {arg!r}")
                    snip.subs = tuple(pairs)
            out.append(snip)
            marker = None
        i += 1
    return out


def shell_code(code: str) -> str:
    bindir = str(Path(sys.executable).parent)
    code = re.sub(r"(^|[\s;&|(])\./dev\s+", r"\1", code, flags=re.M)
    return code.replace(".venv/bin/", bindir + "/")


def prepare_workdir(workdir: Path) -> None:
    """The repository's configs, examples and benchmarks, as a user's clone has them."""
    for name in ("configs", "examples", "benchmarks"):
        if not (workdir / name).exists():
            (workdir / name).symlink_to(ROOT / name)


def run_page(page: Path, workdir: Path) -> None:
    prepare_workdir(workdir)
    os.chdir(workdir)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MPLBACKEND": "Agg"}
    ns: dict = {"__name__": "__docs__"}
    for s in snippets(page):
        if s.skip is not None or s.kind is None:
            continue
        code = s.runnable_code()
        print(f"--- {s.id} ({s.kind})", flush=True)
        if s.kind == "python":
            exec(compile(code, s.id, "exec"), ns)
        else:
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", shell_code(code)], cwd=workdir, env=env)
            if r.returncode != 0:
                raise SystemExit(f"{s.id}: the shell snippet exited with {r.returncode}")


if __name__ == "__main__":
    run_page(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())
