"""``-w table``: columns aligned by display width (a CJK character takes two columns on a terminal, and
len() counted one), and ``kv -w table health`` keeps the summary line the simple output prints (the
table has no leader or quorum column, so without it the table said less than the simple output).
"""
from __future__ import annotations

import re
import unicodedata

from kv_cli.output import display_width, render_table
from tests.cli.test_parse_output import DOWN, EP, FULL, PARTIAL, run


def _columns(text: str) -> int:
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def test_display_width_counts_wide_characters_twice():
    assert display_width("abc") == 3
    assert display_width("日本語") == 6
    assert display_width("ｋｖ") == 4  # fullwidth Latin
    assert display_width("e\u0301") == 1  # a combining accent takes no column


def test_cjk_keys_line_up_in_a_table(fake):
    fake.set("日本語のキー", "値")
    fake.set("ascii", "v")
    result = run(*EP, "-w", "table", "get", "--prefix", "")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # each column after the first (VALUE, VERSION, MOD_REVISION) starts at the same terminal column on
    # every line (no cell here has a space in it)
    cells = [[(_columns(line[:m.start()]), m.group()) for m in re.finditer(r"\S+", line)] for line in lines]
    assert [cell[1] for cell in cells[0]] == ["KEY", "VALUE", "VERSION", "MOD_REVISION"]
    assert [cell[1][1] for cell in cells[2:]] == ["v", "値"]  # (ascii sorts first)
    for column in (1, 2, 3):
        assert len({row[column][0] for row in cells}) == 1, result.stdout
    text = render_table(["A", "B"], [["漢字", 1], ["xy", 2]])
    assert [_columns(line[:line.rindex(last)]) for line, last in zip(text.splitlines(), "B-12", strict=True)] == [6] * 4


def test_health_table_ends_with_the_summary_line(fake):
    fake.statuses = [FULL, PARTIAL, DOWN]
    simple = run(*EP, "health")
    table = run(*EP, "-w", "table", "health")
    assert table.exit_code == simple.exit_code == 0, table.output
    summary = simple.stdout.splitlines()[-1]
    assert summary.startswith("cluster is healthy: 2/3 reachable (quorum 2), leader 1")
    assert table.stdout.splitlines()[0].split() == ["ADDRESS", "REACHABLE", "LEADER"]
    assert table.stdout.splitlines()[-1] == summary
