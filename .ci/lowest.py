"""Print pip constraints that pin each runtime dependency, and the test runners, at its declared minimum.

``.ci/run`` installs the project with these into a second virtualenv and runs a short subset of the
tests there, so that pyproject.toml's minimums stay true (session 29: it said cbor2>=5.4 and typer>=0.9,
and with those every frame was "not valid CBOR" and every CLI error a traceback). Only ``>=`` bounds are
pinned; the lint and browser extras (mypy, ruff, selenium, matplotlib) are left to pip.
"""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PINNED_TEST_EXTRAS = ("pytest", "pytest-trio", "hypothesis")


def main() -> None:
    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    tests = project["optional-dependencies"]["test"]
    wanted = list(project["dependencies"]) + [
        r for r in tests if re.split(r"[<>=!~ \[]", r, maxsplit=1)[0] in PINNED_TEST_EXTRAS]
    for requirement in wanted:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", requirement)
        if match is None:
            sys.exit(f".ci/lowest.py: cannot pin {requirement!r} (only NAME>=VERSION is understood)")
        print(f"{match.group(1)}=={match.group(2)}")


if __name__ == "__main__":
    main()
