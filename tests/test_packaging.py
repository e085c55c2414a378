"""What the built distributions hold, built from a copy of the files git tracks: the sdist is the whole source
tree (its tests need conftest.py, media_helpers.py, the docs, configs and benchmarks; 0.1.15's held the test
modules only, and none of them could be collected), the wheel the package with its built-in suites, the
license and one version, ``crossan.__version__``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import crossan

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.subprocess


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
    if listed.returncode != 0:
        pytest.skip("not a git checkout (an sdist, say): nothing to compare the distributions with")
    tracked = [f for f in listed.stdout.decode().split("\0") if f and (ROOT / f).is_file()]
    tree, out = tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("dist")
    for f in tracked:
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, tree / f)
    script = ("import sys, setuptools.build_meta as b; out = sys.argv[1]; "
              "s = b.build_sdist(out); w = b.build_wheel(out); print('BUILT', s, w)")
    done = subprocess.run([sys.executable, "-c", script, str(out)], cwd=tree, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    built = next(line for line in done.stdout.splitlines() if line.startswith("BUILT "))
    sdist, wheel = (out / name for name in built.split()[1:])
    return tracked, sdist, wheel


def test_the_sdist_holds_every_tracked_file(built: tuple[list[str], Path, Path]) -> None:
    tracked, sdist, _ = built
    with tarfile.open(sdist) as tar:
        top = f"crossan-{crossan.__version__}/"
        held = {m.name.removeprefix(top) for m in tar.getmembers() if m.isfile()}
        info = tar.extractfile(top + "PKG-INFO").read().decode()
    missing = sorted(set(tracked) - held - {".gitignore"})
    assert not missing, f"the sdist lacks {len(missing)} tracked files: {missing[:10]}"
    assert f"\nVersion: {crossan.__version__}\n" in info and "\nLicense-Expression: MIT\n" in info


def test_the_wheel_holds_the_package_its_suites_and_the_license(built: tuple[list[str], Path, Path]) -> None:
    tracked, _, wheel = built
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(f"crossan-{crossan.__version__}.dist-info/METADATA").decode()
    package = {f.removeprefix("src/") for f in tracked if f.startswith("src/crossan/")}
    assert package <= names, sorted(package - names)[:10]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert f"\nVersion: {crossan.__version__}\n" in meta
