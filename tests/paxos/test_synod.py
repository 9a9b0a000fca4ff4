"""Single-decree Paxos (the write-once register): rules and duelling-proposer simulations."""

from __future__ import annotations

import functools
import random
from typing import Any

import pytest
from sim_helpers import Faults, SynodSim, seeds_from_env

from engine.errors import ConfigError
from engine.messages import Entry, Message, MessageType
from engine.paxos import Synod, SynodConfig
from engine.paxos.ballot import make_ballot
from engine.types import HardState, Ready

MT = MessageType


def make(node: int = 1, n: int = 3, hard_state: HardState | None = None,
         **kwargs: Any) -> Synod:
    config = SynodConfig(node, tuple(range(1, n + 1)), check_invariants=True, **kwargs)
    return Synod(config, hard_state or HardState())


def drain(synod: Synod) -> Ready:
    ready = synod.ready()
    synod.advance(ready)
    return ready


def test_quorum_sizes_are_checked() -> None:
    with pytest.raises(ConfigError):
        SynodConfig(1, (1, 2, 3), phase1_quorum=1, phase2_quorum=2)
    assert SynodConfig(1, (1, 2, 3, 4), phase1_quorum=3, phase2_quorum=2).q2 == 2


def test_lone_proposer_gets_its_value_chosen() -> None:
    proposer = make(1)
    proposer.propose(b"v")
    ready = drain(proposer)
    assert ready.hard_state is not None and ready.hard_state.term == proposer.ballot
    prepares = [m for m in ready.messages_after_persist if m.type == MT.PREPARE]
    assert {m.dst for m in prepares} == {2, 3}
    proposer.step(Message(MT.PROMISE, 2, 1, proposer.ballot))
    ready = drain(proposer)
    accepts = [m for m in ready.messages if m.type == MT.ACCEPT]
    assert accepts and accepts[0].entries[0].data == b"v"
    assert ready.entries[0].term == proposer.ballot  # its own acceptance is persisted
    proposer.step(Message(MT.ACCEPTED, 2, 1, proposer.ballot))
    ready = drain(proposer)
    assert proposer.chosen == b"v"
    assert [e.data for e in ready.committed_entries] == [b"v"]
    assert {m.type for m in ready.messages} == {MT.CHOSEN}


def test_acceptor_answers_only_after_persisting_and_refuses_lower_ballots() -> None:
    acceptor = make(2)
    high, low = make_ballot(3, 1), make_ballot(2, 3)
    acceptor.step(Message(MT.PREPARE, 1, 2, high))
    ready = drain(acceptor)
    assert ready.hard_state == HardState(high, 0, 0)
    assert [m.type for m in ready.messages_after_persist] == [MT.PROMISE]
    assert not ready.messages
    acceptor.step(Message(MT.ACCEPT, 3, 2, low, entries=[Entry(low, 1, b"x")]))
    (refusal,) = drain(acceptor).messages_after_persist
    assert refusal.reject and refusal.reject_term == high and acceptor.accepted_ballot == 0
    acceptor.step(Message(MT.ACCEPT, 1, 2, high, entries=[Entry(high, 1, b"y")]))
    ready = drain(acceptor)
    assert [(e.term, e.data) for e in ready.entries] == [(high, b"y")]
    assert [m.type for m in ready.messages_after_persist] == [MT.ACCEPTED]


def test_proposer_adopts_the_highest_accepted_value() -> None:
    proposer = make(1, n=5, hard_state=HardState(term=make_ballot(5, 2)))
    proposer.propose(b"mine")
    drain(proposer)
    b_low, b_high = make_ballot(1, 2), make_ballot(2, 3)
    for src, accepted in ((2, Entry(b_low, 1, b"low")), (3, Entry(b_high, 1, b"high"))):
        proposer.step(Message(MT.PROMISE, src, 1, proposer.ballot, entries=[accepted]))
    accepts = [m for m in drain(proposer).messages if m.type == MT.ACCEPT]
    assert accepts and accepts[0].entries[0].data == b"high"


def test_restart_keeps_promise_and_accepted_value() -> None:
    acceptor = make(2)
    ballot = make_ballot(4, 1)
    acceptor.step(Message(MT.ACCEPT, 1, 2, ballot, entries=[Entry(ballot, 1, b"z")]))
    ready = drain(acceptor)
    assert ready.hard_state is not None
    again = Synod(SynodConfig(2, (1, 2, 3)), ready.hard_state, ready.entries)
    assert (again.promised, again.accepted_ballot, again.accepted_value) == (ballot, ballot, b"z")
    again.step(Message(MT.PREPARE, 3, 2, make_ballot(5, 3)))
    (promise,) = drain(again).messages_after_persist
    assert [(e.term, e.data) for e in promise.entries] == [(ballot, b"z")]


def test_a_replica_that_knows_the_value_answers_with_chosen() -> None:
    replica = make(2)
    replica.step(Message(MT.CHOSEN, 1, 2, make_ballot(1, 1),
                         entries=[Entry(make_ballot(1, 1), 1, b"done")]))
    assert replica.chosen == b"done"
    drain(replica)
    replica.step(Message(MT.PREPARE, 3, 2, make_ballot(2, 3)))
    (answer,) = drain(replica).messages
    assert answer.type == MT.CHOSEN and answer.entries[0].data == b"done"


def test_learn_reports_nothing_chosen_when_a_phase1_quorum_accepted_nothing() -> None:
    reader = make(1)
    reader.learn()
    drain(reader)
    reader.step(Message(MT.PROMISE, 2, 1, reader.ballot))
    ready = drain(reader)
    assert [(r.index, r.context) for r in ready.read_states] == [(0, b"")]
    assert not [m for m in ready.messages if m.type == MT.ACCEPT]  # a read proposes nothing
    assert reader.state == Synod.IDLE and reader.chosen is None


def test_learn_completes_an_accepted_value_and_learns_it() -> None:
    reader = make(1, hard_state=HardState(term=make_ballot(5, 2)))
    reader.learn()
    drain(reader)
    earlier = make_ballot(2, 3)
    reader.step(Message(MT.PROMISE, 2, 1, reader.ballot, entries=[Entry(earlier, 1, b"w")]))
    ready = drain(reader)
    assert not ready.read_states  # something may be chosen: finish phase 2 with it (P2c)
    accepts = [m for m in ready.messages if m.type == MT.ACCEPT]
    assert accepts and accepts[0].entries[0].data == b"w"
    reader.step(Message(MT.ACCEPTED, 2, 1, reader.ballot))
    assert [e.data for e in drain(reader).committed_entries] == [b"w"]


def test_abandoned_proposer_sends_no_more_ballots_but_still_answers() -> None:
    proposer = make(1)
    proposer.propose(b"v")
    drain(proposer)
    proposer.abandon()
    for _ in range(200):
        proposer.tick()
    assert not proposer.has_ready() and proposer.counters["ballots"] == 1
    proposer.step(Message(MT.PREPARE, 2, 1, make_ballot(9, 2)))
    (promise,) = drain(proposer).messages_after_persist
    assert promise.type == MT.PROMISE and not promise.reject


def everyone_learned(sim: SynodSim) -> bool:
    return len(sim.learned) == len(sim.node_ids)


def test_duelling_proposers_converge_through_randomized_backoff() -> None:
    preempted = 0
    for seed in range(30):
        sim = SynodSim(5, seed, Faults(max_delay=3))
        for node in sim.node_ids:  # everyone proposes at the same instant
            sim.propose(node, b"value-%d" % node)
        assert sim.run_until(functools.partial(everyone_learned, sim), 20_000), f"seed {seed}"
        assert len(set(sim.learned.values())) == 1
        preempted += sum(s.counters["preempted"] for s in sim.nodes.values())
    assert preempted > 0, "the scenario must actually make proposers duel"


@pytest.mark.parametrize("seed", seeds_from_env(range(300)))
def test_synod_swarm(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([1, 3, 5])
    faults = Faults(loss=rng.choice([0.0, 0.1, 0.3]), duplicate=rng.choice([0.0, 0.2]),
                    max_delay=rng.choice([3, 20, 60]), unsynced_crash=rng.choice([0.0, 0.02]))
    sim = SynodSim(n, seed, faults)
    for node in sim.node_ids:
        sim.propose(node, b"value-%d" % node)

    def nemesis() -> None:
        if sim.rng.random() < 0.03 and sim.up:
            sim.crash(sim.rng.choice(sorted(sim.up)))
        down = [i for i in sim.node_ids if i not in sim.up]
        if down and sim.rng.random() < 0.1:
            sim.restart(sim.rng.choice(down))

    sim.run_until(lambda: False, 1_500, nemesis)
    sim.faults = Faults(max_delay=faults.max_delay)
    for node in sim.node_ids:
        sim.restart(node)
    assert sim.run_until(lambda: len(sim.learned) == n, 30_000), (
        f"ENGINE_SIM_SEED={seed}: no value learned everywhere after healing")
    assert len(set(sim.learned.values())) == 1, f"ENGINE_SIM_SEED={seed}"
    assert sim.chosen in sim.learned.values()
