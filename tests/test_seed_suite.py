"""The outside check: essential-paxos 2.0's own 205 tests pass against our ``paxos`` package.

``tools/seed_suite.py`` obtains the published sdist (``$PAXOS_SEED_SDIST``, its cache, or
``pip download``), ports the tests mechanically to Python 3 and runs them against our package. The
first test runs the script as a user would and requires "205 passed". The others check the script's
own parts on small fabricated inputs, so that a broken script cannot report success: only test
files are extracted, the edits are the mechanical ones, a wrong sdist hash is refused, and a suite
that does not have exactly 205 passing tests fails.
"""

import importlib.util
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "tools" / "seed_suite.py"


def load_script():
    spec = importlib.util.spec_from_file_location("seed_suite_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tarball(path, files):
    """Write a .tar.gz at ``path`` holding ``files`` ({archive name: text})."""
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_seed_suite_passes_all_205_tests():
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=1200, cwd=str(REPO_ROOT)
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "205 passed, 0 failed, 0 errors, 0 skipped, 205 collected" in output, output


def test_extract_takes_only_test_modules(tmp_path):
    script = load_script()
    sdist = tmp_path / "fake.tar.gz"
    make_tarball(sdist, {
        "pkg-1/test/test_a.py": "A = 1\n",
        "pkg-1/test/data.txt": "not python\n",
        "pkg-1/paxos/essential.py": "raise SystemExit('seed code must not be extracted')\n",
        "pkg-1/setup.py": "\n",
        "pkg-1/test/sub/test_deep.py": "\n",
    })
    dest = tmp_path / "out"
    dest.mkdir()
    assert script.extract_tests(sdist, dest) == ["test_a.py"]
    assert sorted(p.name for p in dest.iterdir()) == ["test_a.py"]


def test_mechanical_edits():
    script = load_script()
    source = (
        "from itertools import izip\n"
        "for a, b in itertools.izip(x, y):\n"
        "    self.assertEquals(a, b)\n"
        "    print 'hello', a\n"
        "try:\n"
        "    pass\n"
        "except ValueError, e:\n"
        "    pass\n"
        "data = '\\0'*24 + struct.pack('>Q', 5) + 'x'*5\n"
        "pdata = 'x'*5\n"
    )
    ported, counts = script.port_to_python3("test_durable.py", source)
    assert ported == (
        "\n"
        "for a, b in zip(x, y):\n"
        "    self.assertEqual(a, b)\n"
        "    print('hello', a)\n"
        "try:\n"
        "    pass\n"
        "except ValueError as e:\n"
        "    pass\n"
        "data = b'\\0'*24 + struct.pack('>Q', 5) + b'x'*5\n"
        "pdata = 'x'*5\n"
    )
    compile(ported, "ported", "exec")
    assert counts["assertEquals -> assertEqual"] == 1
    # Byte-literal edits are confined to the durable tests.
    other, _ = script.port_to_python3("test_essential.py", "data = '\\0'*3\n")
    assert other == "data = '\\0'*3\n"


def test_wrong_sdist_hash_is_refused(tmp_path):
    script = load_script()
    sdist = tmp_path / "essential-paxos-2.0.tar.gz"
    make_tarball(sdist, {"essential-paxos-2.0/test/test_x.py": "\n"})
    with pytest.raises(RuntimeError, match="sha256"):
        script.obtain_sdist(str(sdist))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--sdist", str(tmp_path / "missing.tar.gz")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "cannot obtain the sdist" in result.stderr


def test_wrong_test_count_fails(tmp_path):
    """A suite whose tests all pass but are not the expected 205 must not count as success."""
    script = load_script()
    sdist = tmp_path / "fake.tar.gz"
    make_tarball(sdist, {
        "essential-paxos-2.0/test/test_tiny.py": (
            "from paxos import essential\n"
            "def test_pid():\n"
            "    assert essential.ProposalID(1, 'A') == (1, 'A')\n"
        ),
    })
    assert script.run_suite(sdist) == 1


def test_failing_test_fails(tmp_path):
    script = load_script()
    sdist = tmp_path / "fake.tar.gz"
    make_tarball(sdist, {"essential-paxos-2.0/test/test_bad.py": "def test_bad():\n    assert False\n"})
    assert script.run_suite(sdist) == 1
