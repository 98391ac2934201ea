"""Meta-tests: the plugin contract is documented and tested, and the docs cannot drift.

Every hook specification carries an example and is really called (a tiny bench monitors the
calls); docs/hooks.md is what `fedprune.hookdoc` renders from the specifications; the tutorial's
code blocks are the files of examples/fedprune-snip, byte for byte.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from pathlib import Path

import pytest

from fedprune import hookdoc, hookspecs
from fedprune.plugins import get_plugin_manager
from fedprune.registry import KINDS

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
DOCS = ROOT / "docs"
EXAMPLE = ROOT / "examples" / "fedprune-snip"
SPECS = [name for name, _ in hookdoc.hook_specs()]

#: A fenced block that shows a file: ```lang title="fedprune-snip/path"
FILE_BLOCK = re.compile(r'^```\w* title="fedprune-snip/([^"]+)"\n(.*?)^```$', re.S | re.M)


def test_the_hookspecs_module_is_read_completely():
    registration = {f"fedprune_{kind.hook}" for kind in KINDS}
    assert registration <= set(SPECS)
    assert {"fedprune_bench_start", "fedprune_bench_end"} <= set(SPECS)
    hooks = vars(get_plugin_manager(autoload=False).hook)
    specified = {name for name, caller in hooks.items() if caller.spec}
    assert set(SPECS) == specified


@pytest.mark.parametrize("name", SPECS)
def test_every_hookspec_has_a_docstring_with_an_example_implementing_it(name):
    doc = inspect.getdoc(getattr(hookspecs, name))
    assert doc, f"{name} has no docstring"
    assert "Example::" in doc, f"{name}'s docstring has no 'Example::' block"
    block = []
    for line in doc.split("Example::", 1)[1].splitlines():
        if line.strip() and not line.startswith(" "):
            break
        block.append(line)
    tree = ast.parse(textwrap.dedent("\n".join(block)))  # the example is valid Python
    defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert name in defined, f"{name}'s example does not implement {name}"


def test_every_hookspec_is_called_by_a_bench(tmp_path):
    """A spy implements every registration hook, and a recorder every lifecycle hook; a tiny
    bench of a method that fills every kind of slot must call each of them."""
    import types

    import fedprune
    from fedprune.testing import TinyFederation, host_plugin_manager

    called: set[str] = set()
    spy = types.ModuleType("spy")
    for kind in KINDS:
        name = f"fedprune_{kind.hook}"

        def impl(name=name):
            called.add(name)
            return []

        setattr(spy, name, fedprune.hookimpl(impl))
    pm = host_plugin_manager()
    pm.register(spy, name="spy")
    federation = TinyFederation(pm, tmp_path)
    [result] = federation.run(["fedmef"])
    assert result["status"] == "ok", result.get("error")
    registration = {f"fedprune_{kind.hook}" for kind in KINDS}
    assert called == registration
    assert set(SPECS) - registration <= set(federation.event_names())


def test_builtin_plugins_implement_only_specified_hooks():
    get_plugin_manager(autoload=False).check_pending()


def test_hook_reference_is_up_to_date():
    page = (DOCS / "hooks.md").read_text()
    assert page == hookdoc.render(), f"docs/hooks.md is out of date; run: {hookdoc.COMMAND}"


def test_hook_reference_check_mode_agrees(tmp_path, capsys):
    stale = tmp_path / "hooks.md"
    stale.write_text("# stale\n")
    assert hookdoc.main(["--check", str(stale)]) == 1
    assert hookdoc.COMMAND in capsys.readouterr().err
    assert hookdoc.main(["--write", str(stale)]) == 0
    assert hookdoc.main(["--check", str(stale)]) == 0


def test_docs_show_the_example_package_files_byte_for_byte():
    shown = 0
    for page in sorted(DOCS.glob("*.md")):
        for path, body in FILE_BLOCK.findall(page.read_text()):
            assert (EXAMPLE / path).is_file(), f"{page.name} shows {path}, which does not exist"
            assert body == (EXAMPLE / path).read_text(), (
                f"{page.name}'s block for {path} differs from examples/fedprune-snip/{path}"
            )
            shown += 1
    assert shown


def test_the_tutorial_shows_every_file_of_the_example_package():
    shown = {path for path, _ in FILE_BLOCK.findall((DOCS / "tutorial.md").read_text())}
    files = {
        p.relative_to(EXAMPLE).as_posix()
        for p in EXAMPLE.rglob("*")
        if p.is_file() and p.suffix in (".py", ".toml")
        and not any(part.endswith((".egg-info", "__pycache__", "build")) for part in p.parts)
    }
    assert files, "examples/fedprune-snip has no files"
    assert files <= shown, f"the tutorial does not show {sorted(files - shown)}"


def test_the_distribution_ships_every_package_and_data_file():
    """A wheel holds what pyproject.toml lists, not what the source tree has: a package or data
    file missing from the list works in a checkout and is absent once installed."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {dist: ROOT / path for dist, path in setup["package-dir"].items()}
    shipped = set()
    for package in setup["packages"]:
        top, _, rest = package.partition(".")
        folder = roots[top].joinpath(*rest.split(".")) if rest else roots[top]
        assert (folder / "__init__.py").is_file(), package
        shipped |= {f for f in folder.glob("*.py")}
        for pattern in setup["package-data"].get(package, []):
            shipped |= set(folder.glob(pattern))
    files = {
        f for root in roots.values() for f in root.rglob("*")
        if f.is_file() and "__pycache__" not in f.parts
    }
    assert sorted(str(f.relative_to(ROOT)) for f in files - shipped) == []
