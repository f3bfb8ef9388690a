"""The essential-paxos modules import neither trio nor cbor2.

Checked in a fresh interpreter (this test process has both loaded already by other tests), by
listing ``sys.modules`` after importing the five modules.
"""

import subprocess
import sys

CHECK = """
import sys
import paxos.essential, paxos.practical, paxos.functional, paxos.external, paxos.durable
print(sorted(m for m in ('trio', 'cbor2') if m in sys.modules))
"""


def test_compat_modules_do_not_load_trio_or_cbor2():
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
