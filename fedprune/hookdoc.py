"""Render docs/hooks.md, the hook reference, from the docstrings of `fedprune.hookspecs`.

The specifications are the one source: this module only converts their reStructuredText-flavoured
docstrings to Markdown and adds the records and event objects hooks exchange. The test suite
fails when the committed page differs from what this renders.

    python -m fedprune.hookdoc --write docs/hooks.md
    python -m fedprune.hookdoc --check docs/hooks.md
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import textwrap
from pathlib import Path

from fedprune import hookspecs
from fedprune.registry import KINDS, SLOT_KINDS, Component, Method

COMMAND = "python -m fedprune.hookdoc --write docs/hooks.md"


def hook_specs() -> list[tuple[str, object]]:
    """(name, function) of every hook specification, in source order."""
    return [
        (name, obj)
        for name, obj in vars(hookspecs).items()
        if name.startswith("fedprune_") and inspect.isfunction(obj)
    ]


def _hook_section(hooks, kind_of: dict[str, str]) -> list[str]:
    """Summary-table rows, then one section per hook (with its kind, for registration hooks)."""
    rows, sections = [], []
    for name, func in hooks:
        kind = f" `{kind_of[name]}` |" if name in kind_of else ""
        rows.append(f"| [`{name}`](#{name}) |{kind} {_summary(func)} |")
        suffix = f", kind `{kind_of[name]}`" if name in kind_of else ""
        sections += [f"### {name}", "", f"`{_signature(name, func)}`{suffix}", ""]
        sections += [rst_to_markdown(inspect.getdoc(func) or "").strip(), ""]
    return rows + [""] + sections


def rst_to_markdown(text: str) -> str:
    """The subset of reST the hookspec docstrings use: ``literal`` and ``Example::`` blocks."""
    lines = inspect.cleandoc(text).splitlines()
    out: list[str] = []
    prose: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.rstrip().endswith("::"):
            prose.append(line)
            i += 1
            continue
        head = line.rstrip()[:-2].rstrip()
        prose.append(f"{head}:" if head else "")
        out.append(_inline("\n".join(prose)))
        prose = []
        i += 1
        block = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
            block.append(lines[i])
            i += 1
        code = textwrap.dedent("\n".join(block)).strip("\n")
        out += ["", "```python", code, "```", ""]
    out.append(_inline("\n".join(prose)))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def _inline(line: str) -> str:
    return re.sub(r"``([^`]+?)``", lambda m: "`" + " ".join(m.group(1).split()) + "`", line)


def _cell(text: str) -> str:
    """Table cell text: a pipe would end the cell."""
    return text.replace("|", "\\|")


def _summary(func) -> str:
    return _cell(_inline((inspect.getdoc(func) or "").split("\n\n")[0].replace("\n", " ")))


def _signature(name: str, func) -> str:
    return f"{name}{inspect.signature(func)}"


def _fields(cls) -> list[str]:
    rows = ["| field | type | default |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f"`{f.default!r}`"
        elif f.default_factory is not dataclasses.MISSING:
            default = f"`{f.default_factory()!r}`"
        else:
            default = "required"
        rows.append(f"| `{f.name}` | {_cell(f'`{f.type}`')} | {_cell(default)} |")
    return rows


def _record(title: str, cls) -> list[str]:
    doc = rst_to_markdown(cls.__doc__ or "").strip()
    return [f"### {title}", "", doc, "", *_fields(cls), ""]


def _method_record() -> list[str]:
    rows = ["| keyword | holds | kind |", "|---|---|---|"]
    for slot, kind in SLOT_KINDS.items():
        holds = "a sequence of names" if kind.many else "a name"
        default = f" (default `{kind.default}`)" if kind.default else ""
        rows.append(f"| `{slot}` | {holds}{default} | `{kind.name}` |")
    rows += ["| `sparse` | bool (default `True`) | |", "| `options` | mapping | |"]
    doc = rst_to_markdown(Method.__doc__ or "").strip()
    return ["### fedprune.Method", "", doc, "", *rows, ""]


def _contract(cls) -> list[str]:
    """A component base class: its doc, then each method and declared attribute."""
    out = [f"### fedprune.{cls.__name__}", "", rst_to_markdown(cls.__doc__ or "").strip(), ""]
    for name, member in vars(cls).items():
        if name.startswith("_") or name == "required":
            continue
        if inspect.isfunction(member):
            doc = inspect.getdoc(member)
            line = f"- `{name}{inspect.signature(member)}`"
            out.append(line + (f": {_inline(doc.splitlines()[0])}" if doc else ""))
        elif not callable(member):
            out.append(f"- `{name} = {member!r}` (class attribute)")
    required = getattr(cls, "required", ())
    if required:
        out.append(f"- must define: {', '.join(f'`{n}`' for n in required)}")
    return out + [""]


def render() -> str:
    """The whole page."""
    from fedprune import contracts
    from fedprune.engine import events
    from fedprune.engine.config import RunConfig
    from fedprune.ops import layers

    kind_of = {f"fedprune_{kind.hook}": kind.name for kind in KINDS}
    specs = hook_specs()
    registration = [(n, f) for n, f in specs if n in kind_of]
    lifecycle = [(n, f) for n, f in specs if n not in kind_of]
    out = [
        "# Hook reference",
        "",
        f"<!-- Rendered from fedprune/hookspecs.py by `{COMMAND}`; edit the docstrings there. -->",
        "",
        rst_to_markdown(hookspecs.__doc__ or "").strip(),
        "",
        "Implement a hook with `@fedprune.hookimpl` on a function (or method) of the same name in",
        "your plugin module; see [the tutorial](tutorial.md) and [testing](testing_plugins.md).",
        "",
        "## Registration hooks",
        "",
        "| hook | registers records of kind | summary |",
        "|---|---|---|",
    ]
    out += _hook_section(registration, kind_of)
    out += ["## Lifecycle hooks", "", "| hook | summary |", "|---|---|"]
    out += _hook_section(lifecycle, {})
    out += ["## Component contracts", "", rst_to_markdown(contracts.__doc__ or "").strip(), ""]
    for kind in KINDS:
        if kind.contract is not None:
            out += _contract(kind.contract)
    out += ["## Layer protocols", "", rst_to_markdown(layers.__doc__ or "").strip(), ""]
    out += ["## Records", ""]
    out += _record("fedprune.Component", Component)
    out += _method_record()
    out += ["## Objects components and observers receive", "",
            rst_to_markdown(events.__doc__ or "").strip(), ""]
    for record in (contracts.RoundPlan, contracts.ClientContext, contracts.ClientResult):
        out += _record(f"fedprune.{record.__name__}", record)
    for event in (events.BenchInfo, events.RunInfo, events.ClientReport):
        out += _record(f"fedprune.engine.events.{event.__name__}", event)
    out += _record("fedprune.engine.config.RunConfig", RunConfig)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedprune.hookdoc", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="PATH", help="write the page to PATH")
    group.add_argument("--check", metavar="PATH", help="exit 1 if PATH is out of date")
    args = parser.parse_args(argv)
    page = render()
    if args.write:
        Path(args.write).write_text(page)
    elif args.check:
        path = Path(args.check)
        if not path.exists() or path.read_text() != page:
            print(f"{path} is out of date; run: {COMMAND}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
