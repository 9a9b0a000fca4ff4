"""The long soak (opt-in): ENGINE_SOAK=1 python -m pytest tests/faults/test_soak.py -n 2.

Every mix ("crash", "network", "all") x 3/5/7 nodes x both protocols, ENGINE_SOAK_S seconds of
faults each (default 120). Without ENGINE_SOAK=1 no test is generated here at all (nothing
is skipped). Last results: docs/reliability.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.testing.nemesis import MIXES, RunConfig, run

if os.environ.get("ENGINE_SOAK") == "1":
    import pytest

    SOAK_FAULT_S = float(os.environ.get("ENGINE_SOAK_S", "120"))
    SOAK_CASES = [(protocol, mix, nodes) for protocol in ("raft", "paxos") for mix in MIXES
                  for nodes in (3, 5, 7)]

    @pytest.mark.slow
    @pytest.mark.timeout(SOAK_FAULT_S + 240)
    @pytest.mark.parametrize(("protocol", "mix", "nodes"), SOAK_CASES,
                             ids=[f"{p}-{m}-n{n}" for p, m, n in SOAK_CASES])
    async def test_soak(protocol: str, mix: str, nodes: int, tmp_path: Path) -> None:
        seed = int(os.environ.get("ENGINE_SOAK_SEED", "0")) * 1000 + \
            SOAK_CASES.index((protocol, mix, nodes))
        config = RunConfig(protocol=protocol, nodes=nodes, mix=mix, seed=seed,
                           fault_s=SOAK_FAULT_S, interval_s=5.0, quiet_s=5.0, recovery_s=10.0,
                           out_dir=tmp_path)
        result = await run(config)
        print(result.report())
        assert result.ok, result.report()
