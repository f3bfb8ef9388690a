"""How long a whole ``kv`` process takes for one-shot commands, against ``python -c pass``.

What it measures: the wall time of ``kv --help``, ``kv get KEY``, ``kv put KEY VALUE`` (and a few
others with ``--all``), each started as a fresh process exactly as a user would (the ``kv`` script beside
this interpreter), against a local 3-node cluster that it starts itself with ``kv cluster up --detach``
on free ports in a temporary directory (``--endpoints`` uses a running cluster instead). The runs of the
commands are interleaved (one of each per round, round after round), so a slow stretch of the machine
hits every command alike; it prints the median and the ratio to the median of ``python -c pass`` from
the same rounds, and with ``--json FILE`` writes the figures and the machine facts (bare ``--json``:
to ``bench/results/cli_startup-DATE.json``, as the other scripts save theirs).

    python bench/cli_startup.py                 # 15 rounds
    python bench/cli_startup.py --rounds 31 --json bench/results/cli_startup.json

The target (issue 23): ``kv get``/``kv put`` and ``kv --help`` at most 0.15 s each (reported, never
asserted). By default the children may cache bytecode (in a temporary ``PYTHONPYCACHEPREFIX``) and kv's
help pages (``XDG_CACHE_HOME``), as a user's installation does after its first run; the warm-up run
fills both. ``--no-bytecode-cache`` measures with ``PYTHONDONTWRITEBYTECODE`` as the environment has it.
``--kv 'python -m kv_cli'`` with ``PYTHONPATH`` pointing at another checkout's package times that one.
``-X importtime`` shows where the rest goes:
``python -X importtime -m kv_cli get k 2>&1 | sort -t'|' -k2 -n | tail``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchargs  # noqa: E402  (beside this script: python bench/SCRIPT.py puts bench/ on sys.path)

TARGET_SECONDS = 0.15
RESULTS = Path(__file__).resolve().parent / "results"  # where a bare --json saves, as the other scripts do


def json_path(arg: str) -> Path:
    """Where ``--json`` writes: its FILE, or with none a dated file under bench/results."""
    return Path(arg) if arg else RESULTS / f"cli_startup-{time.strftime('%Y%m%d-%H%M%S')}.json"


def kv_command() -> list[str]:
    beside = Path(sys.executable).parent / "kv"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("kv")
    return [found] if found else [sys.executable, "-m", "kv_cli"]


def free_base_port(count: int = 3) -> int:
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = sock.getsockname()[1]
        if base + count > 65535:
            continue
        ok = True
        for i in range(count):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", base + i))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise SystemExit("no free ports")


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process: user + system). CPU time is the steadier figure on a
    busy machine; wall time is what the user waits."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=benchargs.positive_int, default=15, help="runs of each command (interleaved)")
    parser.add_argument("--endpoints", help="use this running cluster instead of starting one")
    parser.add_argument("--all", action="store_true", help="also ls, del, status, health, cluster status")
    parser.add_argument("--json", metavar="FILE", nargs="?", const="",
                        help="write the figures here too (no FILE: bench/results/cli_startup-DATE.json)")
    parser.add_argument("--kv", metavar="COMMAND",
                        help="the kv command to time (default: the kv script beside this Python), e.g. "
                             "'python -m kv_cli' with PYTHONPATH set to an older tree, to compare")
    parser.add_argument("--before", metavar="DIR",
                        help="also time an older kv_cli: DIR holds a kv_cli package (e.g. a link to an older "
                             "checkout's cli/ folder), run as 'python -m kv_cli' with PYTHONPATH=DIR; the new one then "
                             "runs the same way")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="measure as PYTHONDONTWRITEBYTECODE is set (every project module compiled each run); "
                             "by default .pyc files are cached in a temporary PYTHONPYCACHEPREFIX, as a user has them "
                             "after the first run")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    import shlex

    kv = shlex.split(args.kv) if args.kv else kv_command()
    if args.before:
        kv = [sys.executable, "-m", "kv_cli"]
    env = dict(os.environ)
    env.pop("KV_CACERT", None)
    env.pop("KV_CERT", None)
    env.pop("KV_KEY", None)
    pycache = None
    if not args.no_bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        pycache = tempfile.mkdtemp(prefix="kv-cli-startup-pycache-")
        env["PYTHONPYCACHEPREFIX"] = pycache
        env["XDG_CACHE_HOME"] = pycache  # kv --help's cache (kv_cli.helpcache), filled by the warm-up run
    temp = None
    if args.endpoints:
        env["KV_ENDPOINTS"] = args.endpoints
    else:
        temp = tempfile.mkdtemp(prefix="kv-cli-startup-")
        env["KV_CLUSTER_DIR"] = temp
        env.pop("KV_ENDPOINTS", None)
        base = free_base_port()
        subprocess.run(kv + ["cluster", "up", "--detach", "--base-port", str(base)], env=env, check=True,
                       stdout=subprocess.DEVNULL, timeout=120)
    commands: dict[str, list[str]] = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "kv --help": kv + ["--help"],
        "kv get --help": kv + ["get", "--help"],
        "kv get": kv + ["get", "bench-key"],
        "kv put": kv + ["put", "bench-key", "bench-value"],
        "kv -w json get": kv + ["-w", "json", "get", "bench-key"],
    }
    if args.all:
        commands.update({
            "kv ls": kv + ["ls"],
            "kv del": kv + ["del", "no-such-key"],
            "kv status": kv + ["status"],
            "kv health": kv + ["health"],
        })
        if temp is not None:
            commands["kv cluster status"] = kv + ["cluster", "status"]
    envs: dict[str, dict[str, str]] = {}
    if args.before:
        before_env = dict(env, PYTHONPATH=os.path.abspath(args.before))
        for name in ("kv --help", "kv get", "kv put"):
            label = f"before: {name}"
            commands[label] = [sys.executable, "-m", "kv_cli"] + commands[name][len(kv):]
            envs[label] = before_env
    try:
        subprocess.run(kv + ["--command-timeout", "20", "put", "bench-key", "bench-value"], env=env, check=True,
                       stdout=subprocess.DEVNULL, timeout=60)
        for name, argv in commands.items():  # warm the page cache and the .pyc files
            timed(argv, envs.get(name, env))
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpu_times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, argv in commands.items():
                wall, cpu = timed(argv, envs.get(name, env))
                times[name].append(wall)
                cpu_times[name].append(cpu)
    finally:
        if temp is not None:
            subprocess.run(kv + ["cluster", "down"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=120)
            shutil.rmtree(temp, ignore_errors=True)
        if pycache is not None:
            shutil.rmtree(pycache, ignore_errors=True)

    baseline = statistics.median(times["python -c pass"])
    cpu_baseline = statistics.median(cpu_times["python -c pass"])
    print(f"{args.rounds} rounds; {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; bytecode "
          f"{'compiled every run' if pycache is None else 'cached'}")
    print(f"{'command':<24} {'median s':>9} {'min s':>7} {'x python':>9} {'CPU s':>7} {'CPU x python':>13}")
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        ratio = median / baseline
        cpu = statistics.median(cpu_times[name])
        mark = "" if name.startswith("python") or median <= TARGET_SECONDS else f"  (target {TARGET_SECONDS} s)"
        print(f"{name:<24} {median:9.3f} {min(values):7.3f} {ratio:9.2f} {cpu:7.3f} {cpu / cpu_baseline:13.2f}{mark}")
        rows.append({"command": name, "median_s": median, "min_s": min(values), "ratio_to_python": ratio,
                     "cpu_median_s": cpu, "cpu_ratio_to_python": cpu / cpu_baseline, "runs_s": values})
    if args.json is not None:
        path = json_path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "rounds": args.rounds, "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "load": os.getloadavg(), "bytecode_cached": pycache is not None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "results": rows,
        }, indent=2) + "\n")
        print(f"results: {path}")


if __name__ == "__main__":
    main()
