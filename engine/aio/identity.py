"""A node's identity on the wire, kept in its data dir: cluster id and boot epoch.

Cluster id (docs/reliability.md, "Authenticated wire and cluster identity"). Fixed when the
node first starts and stored in `<data_dir>/cluster_id`: NodeConfig.cluster_id if set, else
derived from the bootstrap members (ids and addresses) and the cluster key
(engine.config.derive_cluster_id),
so every node of one bootstrap list agrees without talking and a node started with another
list is refused by the others. A node started with join=True has none yet (0, unbound): its
transport takes the id of the first authenticated frame of a member and `store_cluster_id`
persists it. Later starts use the stored id whatever the configured member list says (it
changes with membership; the cluster's identity does not).

Boot epoch. Every restart must send under an epoch above all its earlier ones, or peers'
replay windows drop it as an old incarnation (engine._core.codec_py.ReplayWindow). The clock
alone does not guarantee that (it may step back), so the epoch is max(stored + 1, clock) and
is stored, fsynced (file and directory), before the socket binds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from engine import errors
from engine.aio.udp import new_boot_epoch, wall_clock_ns
from engine.aio.wal import replace_file_durably
from engine.config import NodeConfig
from engine.types import U64_MAX

BOOT_EPOCH_FILE = "boot_epoch"
CLUSTER_ID_FILE = "cluster_id"

Clock = Callable[[], int]   # wall-clock nanoseconds, engine.aio.udp.wall_clock_ns by default


@dataclass(frozen=True)
class WireIdentity:
    """What a node's transport starts with (engine.aio.udp.UdpTransport arguments)."""

    cluster_id: int
    epoch: int
    min_client_epoch: int


def open_identity(config: NodeConfig, clock: Clock = wall_clock_ns) -> WireIdentity:
    """The cluster id and a fresh boot epoch, stored durably in the data dir first if any.
    Blocking (file I/O and fsync): run it in an executor."""
    now = clock()
    skew_ns = config.limits.max_client_clock_skew_s * 1_000_000_000
    directory = config.data_dir
    if directory is None:
        return WireIdentity(config.bootstrap_cluster_id(), new_boot_epoch(clock), now - skew_ns)
    os.makedirs(directory, exist_ok=True)
    cluster_id = _stored_cluster_id(config)
    stored_epoch = _read_int(os.path.join(directory, BOOT_EPOCH_FILE))
    epoch = max(stored_epoch + 1, new_boot_epoch(clock))
    _write_int(directory, BOOT_EPOCH_FILE, epoch, config.fsync)
    return WireIdentity(cluster_id, epoch, now - skew_ns)


def store_cluster_id(config: NodeConfig, cluster_id: int) -> None:
    """Persist the cluster id a joining node learned (no-op without a data dir)."""
    if config.data_dir is not None:
        _write_int(config.data_dir, CLUSTER_ID_FILE, cluster_id, config.fsync)


def _stored_cluster_id(config: NodeConfig) -> int:
    assert config.data_dir is not None
    path = os.path.join(config.data_dir, CLUSTER_ID_FILE)
    if not os.path.exists(path):
        cluster_id = config.bootstrap_cluster_id()
        if cluster_id:
            _write_int(config.data_dir, CLUSTER_ID_FILE, cluster_id, config.fsync)
        return cluster_id
    stored = _read_int(path)
    if config.cluster_id and config.cluster_id != stored:
        raise errors.ConfigError(
            f"cluster_id {config.cluster_id:#x} is configured but {path} holds {stored:#x}: "
            "this data dir belongs to another cluster")
    return stored


def _read_int(path: str) -> int:
    """The decimal u64 in `path`, 0 if it does not exist; ConfigError naming it if garbled."""
    try:
        with open(path, encoding="ascii") as file:
            text = file.read().strip()
    except FileNotFoundError:
        return 0
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.ConfigError(f"cannot read {path}: {exc}") from None
    if not text.isdigit() or int(text) > U64_MAX:
        raise errors.ConfigError(f"{path} does not hold a u64: {text[:40]!r}")
    return int(text)


def _write_int(directory: str, name: str, value: int, fsync: bool) -> None:
    """Durably replace `<directory>/<name>` with `value` in decimal."""
    replace_file_durably(os.path.join(directory, name), f"{value}\n".encode("ascii"),
                         fsync=fsync)
