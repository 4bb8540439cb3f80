"""mkdocs hooks of the scoresde docs site: pages generated from the code and from benchmarks/results/.

- `<!-- samplers-table -->` becomes the table of registered samplers, read from their own records
  (`scoresde.samplers.SAMPLERS`): kind, summary, NFE rule, default grid, options.
- `<!-- cli-reference -->` becomes the `--help` text of the `scoresde` group and of every command.
- `<!-- results: NAME.md -->` becomes the benchmark result file `benchmarks/results/NAME.md` (or `.txt`),
  stamped with the date and commit of its last change; images of benchmarks/results are served under
  `results/`.
- `<!-- snippet: skip REASON -->` (read by tests/docs/test_snippets.py) is shown as a note saying why the
  next snippet is not run by the docs test; the other snippet markers are invisible.
"""
from __future__ import annotations

import inspect
import re
import subprocess
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _git_stamp(path: Path) -> str:
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%cs %h", "--", str(path)], cwd=ROOT,
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or "not committed yet"


def _samplers_table() -> str:
    from scoresde.samplers.core import SAMPLERS, sampler_info
    rows = ["| sampler | kind | what | NFE at `steps=10` | stochastic | default grid |", "|---|---|---|---|---|---|"]
    opts = ["| sampler | options and their defaults |", "|---|---|"]
    for name in sorted(SAMPLERS):
        info = sampler_info(name)
        try:
            nfe = info.nfe(10) if info.nfe is not None else None
        except TypeError:
            nfe = None
        rows.append(f"| `{name}` | {info.kind} | {info.summary} | {'adaptive' if nfe is None else nfe} | "
                    f"{'yes' if info.stochastic else 'no'} | {info.schedule or 'uniform'} |")
        options = ", ".join(f"`{k}={v!r}`" for k, v in info.option_defaults().items())
        opts.append(f"| `{name}` | {options or '-'} |")
    return "\n".join(rows) + "\n\nTheir options (`sample(..., KEY=VALUE)`, or `--set sample.KEY=VALUE`):\n\n" + "\n".join(opts)


def _cli_reference() -> str:
    import click
    from scoresde.cli.main import cli
    parts = []
    ctx = click.Context(cli, info_name="scoresde", terminal_width=88, max_content_width=88)
    parts.append("## `scoresde`\n\n```text\n" + cli.get_help(ctx) + "\n```")
    for name in sorted(cli.commands):
        cmd = cli.commands[name]
        sub = click.Context(cmd, info_name=name, parent=ctx, terminal_width=88, max_content_width=88)
        parts.append(f"## `scoresde {name}`\n\n```text\n{cmd.get_help(sub)}\n```")
    return "\n\n".join(parts)


def _results(name: str) -> str:
    path = RESULTS / name
    if not path.is_file():
        raise FileNotFoundError(f"docs: results file benchmarks/results/{name} does not exist")
    text = path.read_text()
    stamp = f"*From `benchmarks/results/{name}`, last changed {_git_stamp(path)}.*\n\n"
    if path.suffix == ".txt":
        return stamp + "```text\n" + text + "\n```"
    # the file's headings go one level below the page's; its image links point at the served copies
    text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)
    return stamp + text


def on_files(files, config):
    """Serve benchmarks/results/*.png under results/ so the pages can show them."""
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    markdown = markdown.replace("<!-- samplers-table -->", _samplers_table())
    markdown = markdown.replace("<!-- cli-reference -->", _cli_reference())
    markdown = re.sub(r"<!-- results: ([\w.\-]+) -->", lambda m: _results(m.group(1)), markdown)
    markdown = re.sub(r"<!-- snippet: skip (.+?) -->",
                      lambda m: f'!!! note "Not run by the docs test"\n    {m.group(1).strip()}\n', markdown)
    return markdown


__all__ = [n for n, v in dict(globals()).items() if inspect.isfunction(v) and n.startswith("on_")]
