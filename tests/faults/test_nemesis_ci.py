"""Fault injection against real `serve` processes (engine.testing.nemesis), default suite.

For each protocol: the "crash" mix (kill -9 one / the leader / a minority / all, SIGSTOP
pauses, torn WAL tails on restart) and the "network" mix (majority/minority, leader isolation,
bridge, one-way partitions; 20 % loss, 20 % duplication, delay with reordering), on 3 and 5 nodes: 8
runs of 30 s of workload each (3 s quiet, 21 s of faults, 3 s recovery, 3 s quiet). Every run
checks linearizability of the register history, the grow-only set on every node, the node logs
and availability in the quiet windows; a failing run prints its report and leaves the history
(`python -m engine check DIR/history.jsonl`) and node logs in the pytest tmp dir.

The wrong-members and clock-step nemeses run once per protocol and nemesis in a short run of
their own (one injection and its heal): an impostor with a reused id and a wrong member list
must commit nothing and leave no trace on the real members; a node restarted with its clock an
hour back must still count in a quorum that needs it.

The seed of each case is fixed so a failure can be re-run with the command in its message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.testing.nemesis import RunConfig, run

# (protocol, mix, nodes) -> seed
CASES = {
    ("raft", "crash", 3): 101, ("raft", "crash", 5): 102,
    ("raft", "network", 3): 103, ("raft", "network", 5): 104,
    ("paxos", "crash", 3): 201, ("paxos", "crash", 5): 202,
    ("paxos", "network", 3): 203, ("paxos", "network", 5): 204,
}
QUIET_S, RECOVERY_S = 3.0, 3.0
FAULT_S = 30.0 - 2 * QUIET_S - RECOVERY_S


@pytest.mark.parametrize(("protocol", "mix", "nodes"), list(CASES),
                         ids=[f"{p}-{m}-n{n}" for p, m, n in CASES])
async def test_nemesis_run(protocol: str, mix: str, nodes: int, tmp_path: Path) -> None:
    seed = CASES[(protocol, mix, nodes)]
    config = RunConfig(protocol=protocol, nodes=nodes, mix=mix, seed=seed, fault_s=FAULT_S,
                       quiet_s=QUIET_S, recovery_s=RECOVERY_S, out_dir=tmp_path)
    result = await run(config)
    rerun = (f"python -m engine.testing.nemesis --protocol {protocol} --nodes {nodes} "
             f"--mix {mix} --seed {seed} --fault-s {FAULT_S} --quiet-s {QUIET_S} "
             f"--recovery-s {RECOVERY_S} --out /tmp/rerun")
    assert result.ok, f"{result.report()}\nre-run: {rerun}"
    # The run must have done what it says: faults injected, work done in every phase.
    assert sum(1 for f in result.faults if f != "heal") >= 3, result.report()
    assert result.outcomes.get("ok", 0) > 500, result.report()
    assert result.set_check is not None and result.set_check.acknowledged > 100


# (protocol, nemesis) -> seed
SINGLE_CASES = {
    ("raft", "wrong-members"): 301, ("paxos", "wrong-members"): 302,
    ("raft", "clock-step"): 303, ("paxos", "clock-step"): 304,
}
SINGLE_INTERVAL_S, SINGLE_QUIET_S = 2.5, 2.0
SINGLE_FAULT_S = 2 * SINGLE_INTERVAL_S + 0.5   # one injection, then its heal


@pytest.mark.parametrize(("protocol", "nemesis"), list(SINGLE_CASES),
                         ids=[f"{p}-{m}" for p, m in SINGLE_CASES])
async def test_nemesis_single_fault_run(protocol: str, nemesis: str, tmp_path: Path) -> None:
    seed = SINGLE_CASES[(protocol, nemesis)]
    config = RunConfig(protocol=protocol, nodes=3, mix=[nemesis], seed=seed,
                       fault_s=SINGLE_FAULT_S, interval_s=SINGLE_INTERVAL_S,
                       quiet_s=SINGLE_QUIET_S, recovery_s=SINGLE_QUIET_S, out_dir=tmp_path)
    result = await run(config)
    rerun = (f"python -m engine.testing.nemesis --protocol {protocol} --nodes 3 "
             f"--mix {nemesis} --seed {seed} --fault-s {SINGLE_FAULT_S} "
             f"--interval-s {SINGLE_INTERVAL_S} --quiet-s {SINGLE_QUIET_S} "
             f"--recovery-s {SINGLE_QUIET_S} --out /tmp/rerun")
    assert result.ok, f"{result.report()}\nre-run: {rerun}"
    assert any(f.startswith(nemesis + ":") for f in result.faults), result.report()
