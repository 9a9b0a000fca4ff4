"""The documentation site builds, covers the public API, and its examples run.

Method: `mkdocs build --strict` (mkdocs.yml turns a page missing from the nav, a link to a
missing page or anchor, and a docstring reference mkdocstrings cannot resolve into warnings,
which strict mode makes fatal) into a temporary directory. Then every class engine exports
must have its own entry in the generated API page, and every ```python block of the guide
pages runs in a fresh interpreter and prints what its `print(...)  # VALUE` comments promise.
"""

from __future__ import annotations

import ast
import html.parser
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import engine

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
BUILD_TIMEOUT_S = 120  # it takes a few seconds; a hang must fail, not stall the suite
EXAMPLE_TIMEOUT_S = 120


def build_site(site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


class _Ids(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(value for name, value in attrs if name == "id" and value)


def html_ids(page: Path) -> set[str]:
    parser = _Ids()
    parser.feed(page.read_text())
    return parser.ids


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    result = build_site(site)
    assert result.returncode == 0, result.stderr
    return site


def test_every_page_is_built(site: Path) -> None:
    for page in DOCS.glob("*.md"):
        name = "" if page.stem == "index" else page.stem
        assert (site / name / "index.html").is_file(), page


def exported_classes() -> list[type]:
    classes = []
    for name in engine.__all__:
        value = getattr(engine, name)
        if inspect.isclass(value):
            classes.append(value)
    return classes


def test_api_reference_documents_every_exported_class(site: Path) -> None:
    ids = html_ids(site / "api" / "index.html")
    missing = [f"{c.__module__}.{c.__qualname__}" for c in exported_classes()
               if f"{c.__module__}.{c.__qualname__}" not in ids]
    assert not missing, f"add to docs/api.md: {missing}"


def test_api_reference_shows_the_methods_the_guide_uses(site: Path) -> None:
    ids = html_ids(site / "api" / "index.html")
    for qualified in [
        "engine.aio.node.Node.propose", "engine.aio.node.Node.read",  # inherited from a mixin
        "engine.aio.node.Node.add_member", "engine.aio.node.Node.status",
        "engine.aio.local_cluster.LocalCluster.wait_leader", "engine.aio.client.Client.put",
        "engine.aio.client.Client.cas", "engine.kv.store.KVStore.apply",
        "engine.kv.commands.encode_put", "engine.errors.Timeout",
    ]:
        assert qualified in ids, qualified


def test_strict_build_fails_on_a_broken_link(tmp_path: Path) -> None:
    # A guide page with a dangling link, under this project's mkdocs.yml, must not build.
    copy = tmp_path / "project"
    (copy / "docs").mkdir(parents=True)
    (copy / "docs" / "index.md").write_text("# Guide\n\n[gone](no-such-page.md)\n")
    (copy / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
         str(tmp_path / "site")],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, cwd=copy,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0 and "no-such-page.md" in result.stderr, result.stderr


# The user-facing pages; interfaces.md and reliability.md are design notes whose snippets
# show signatures and long fault runs rather than programs to copy.
GUIDE_PAGES = ("index.md", "deployment.md", "security.md", "api.md")


def guide_examples() -> list[tuple[str, str]]:
    examples = []
    for name in GUIDE_PAGES:
        for block in re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S):
            examples.append((name, block))
    return examples


def promised_output(block: str) -> list[str]:
    """The repr of every value a `print(...)  # VALUE` comment promises, in order."""
    promised: list[str] = []
    for comment in re.findall(r"^\s*print\(.*\)\s*#\s*(.+?)\s*$", block, flags=re.M):
        value = ast.literal_eval(comment)
        promised.extend(repr(v) for v in (value if isinstance(value, tuple) else (value,)))
    return promised


def test_the_guide_has_examples() -> None:
    assert len([page for page, _ in guide_examples() if page == "index.md"]) >= 3


@pytest.mark.parametrize(("page", "block"), guide_examples(),
                         ids=[f"{page}-{i}" for i, (page, _) in enumerate(guide_examples())])
def test_guide_example_runs(page: str, block: str, tmp_path: Path) -> None:
    compile(block, page, "exec")  # a whole program: no top-level await
    result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                            timeout=EXAMPLE_TIMEOUT_S, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    printed = iter(result.stdout.splitlines())
    for expected in promised_output(block):  # in order
        assert any(line.strip() == expected for line in printed), (expected, result.stdout)
