"""pytest options for the simulator: ``--seed N`` replays one seed instead of the fixed list.

``pytest tests/sim --seed N`` runs seed N for 3 and 5 nodes in every mode (the tests that take
``sim_seed``), and deselects the batches that run many seeds (marked ``sim_batch``), so a replay is
quick. A seed found by the random batch replays the same way: its mode is one of those tests'.

Environment: ``SIM_SECONDS`` (default 20) is the random batch's time box; ``SIM_FAILED_SEEDS`` names a
file outside the source tree to which the batch appends the line of a failing seed (default: a file
in the test's pytest temporary directory). No test writes into the source tree.
"""
from __future__ import annotations


def pytest_addoption(parser):
    parser.addoption("--seed", type=int, default=None, help="replay one simulator seed (tests/sim)")


def pytest_configure(config):
    config.addinivalue_line("markers", "sim_seeds(seeds): the seeds a sim_seed test runs without --seed")
    config.addinivalue_line("markers", "sim_batch: runs many seeds; deselected when --seed is given")


def _seed_option(config):
    try:
        return config.getoption("--seed")
    except ValueError:  # this conftest was not loaded at startup, so the option does not exist
        return None


def pytest_generate_tests(metafunc):
    if "sim_seed" not in metafunc.fixturenames:
        return
    seed = _seed_option(metafunc.config)
    if seed is not None:
        seeds = [seed]
    else:
        marker = metafunc.definition.get_closest_marker("sim_seeds")
        assert marker is not None, "a sim_seed test needs @pytest.mark.sim_seeds(...)"
        seeds = list(marker.args[0])
    metafunc.parametrize("sim_seed", seeds, ids=[f"seed{s}" for s in seeds])


def pytest_collection_modifyitems(config, items):
    if _seed_option(config) is None:
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("sim_batch") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
