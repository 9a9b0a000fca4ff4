"""Settings from flags, then ENGINE_* variables, then a TOML file (--config), checked through
the command line: the cluster key file each layer names shows up in the one-line error."""

from __future__ import annotations

import os
from pathlib import Path

from cli_support import one_line_error, run

from engine.cli.exitcodes import USAGE


def env_with(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env.update(values)
    return env


def test_flags_beat_environment_beat_config_file(tmp_path: Path) -> None:
    config = tmp_path / "engine.toml"
    config.write_text('cluster-key-file = "/from/config"\n'
                      '[members]\n1 = "127.0.0.1:7001"\n2 = "127.0.0.1:7002"\n')
    status = ("status", "--config", str(config))
    assert "/from/config" in one_line_error(run(*status, env=env_with()), USAGE)
    env = env_with(ENGINE_CLUSTER_KEY_FILE="/from/env")
    assert "/from/env" in one_line_error(run(*status, env=env), USAGE)
    flagged = run(*status, "--cluster-key-file", "/from/flag", env=env)
    assert "/from/flag" in one_line_error(flagged, USAGE)
    # ENGINE_CONFIG names the file when --config is absent; the flag's members win over it.
    env = env_with(ENGINE_CONFIG=str(config))
    bad_members = run("status", "--members", "1=nowhere", env=env)
    assert "nowhere" in one_line_error(bad_members, USAGE)


def test_a_missing_setting_names_all_three_places() -> None:
    line = one_line_error(run("kv", "get", "k", env=env_with()), USAGE)
    assert "--members" in line and "ENGINE_MEMBERS" in line and "--config" in line


def test_config_file_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    typo = tmp_path / "typo.toml"
    typo.write_text('member = "1=127.0.0.1:7001"\n')
    line = one_line_error(run("status", "--config", str(typo), env=env_with()), USAGE)
    assert str(typo) in line and "'member'" in line
    broken = tmp_path / "broken.toml"
    broken.write_text("members = \n")
    line = one_line_error(run("status", "--config", str(broken), env=env_with()), USAGE)
    assert str(broken) in line and "TOML" in line
    bad_env = run("serve", "--members", "1=127.0.0.1:7001", env=env_with(ENGINE_NODE_ID="x"))
    assert "ENGINE_NODE_ID" in one_line_error(bad_env, USAGE)
