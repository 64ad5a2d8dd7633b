"""The local source: a plain directory tree and a git repository."""

import asyncio
import os
import subprocess

from data_pipeline.sources.local import LocalSource

EXTENSIONS = (".ex", ".exs")


def code(path):
    return path.endswith(EXTENSIONS)


def read_all(source: LocalSource):
    async def collect():
        return [(unit, await unit.fetch()) async for unit in source.units()]
    return asyncio.run(collect())


def write(path, text="defmodule A do\nend\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_directory_tree_in_batches(tmp_path):
    root = tmp_path / "shop"
    for name in ("lib/a.ex", "lib/b.ex", "test/a_test.exs", "mix.exs", "deps/jason/lib/jason.ex",
                 "_build/dev/x.ex", ".elixir_ls/y.ex", "README.md"):
        write(root / name)
    write(root / "lib" / "big.ex", "# " + "x" * 5000 + "\n")
    os.symlink("/etc/hostname", root / "lib" / "link.ex")
    source = LocalSource((str(root),), "LicenseRef-own-code", batch_files=2, wanted=code,
                         max_file_bytes=4000)
    units = read_all(source)
    assert [unit.id.rsplit("/", 1)[1] for unit, _ in units] == ["00000", "00001", "00002"]
    assert {unit.package for unit, _ in units} == {"shop"} and units[0][0].licences == ("LicenseRef-own-code",)
    files = sorted(f.path for _, fetched in units for f in fetched.files)
    assert files == ["lib/a.ex", "lib/b.ex", "mix.exs", "test/a_test.exs"]
    skipped = {s.path: s.reason for _, fetched in units for s in fetched.skipped}
    assert skipped["lib/link.ex"].startswith("symlink") and skipped["lib/big.ex"].startswith("too large")

    version = units[0][0].version
    write(root / "lib" / "a.ex", "defmodule A do\n  def changed, do: true\nend\n")
    assert read_all(source)[0][0].version != version  # an edited tree is new work


def test_git_repository_uses_tracked_files(tmp_path):
    root = tmp_path / "company_app"
    write(root / "lib" / "tracked.ex")
    write(root / "lib" / "ignored.ex")
    write(root / ".gitignore", "lib/ignored.ex\n")
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    write(root / "lib" / "untracked.ex")
    source = LocalSource((str(root),), "LicenseRef-own-code", batch_files=10, wanted=code,
                         max_file_bytes=4000)
    ((unit, fetched),) = read_all(source)
    assert unit.id.startswith("local/company_app/tree-")
    assert [f.path for f in fetched.files] == ["lib/tracked.ex"]
