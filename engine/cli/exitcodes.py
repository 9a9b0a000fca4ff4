"""Exit codes of `python -m engine` (the `engine` script): one table, used by every command.

A script or supervisor can branch on them; `status` uses them as a health check.

    0   OK           done; `status`: every member answered, one leader, none lagging
    1   REJECTED     the cluster refused the request: it definitely did not happen
    2   USAGE        bad arguments or settings: unknown flag, bad address, missing key file,
                     a host that does not resolve, an address already in use, a data dir
                     path that is a file
    3   TIMEOUT      no definite answer in time (a write may still apply; a read changed
                     nothing)
    4   UNREACHABLE  `status`: a member did not answer (a client command that reaches no
                     member cannot tell that from a slow cluster: TIMEOUT)
    5   NO_LEADER    `status`: the members that answered know no leader
    6   LAGGING      `status`: a member's applied index trails the leader's commit index by
                     more than --max-lag entries
    7   STORAGE      `serve`: a fatal storage error (a failed WAL write or fsync, a corrupt
                     data dir); the node stopped, restart it once the disk is fixed.
                     `snapshot save`: the snapshot failed its checksum (nothing written),
                     or the disk refused FILE
    70  INTERNAL     an unexpected error (a bug: the traceback is printed)
    130 INTERRUPTED  SIGINT
"""

from __future__ import annotations

import errno

from engine import errors

# OSErrors of a disk that failed or filled up, as opposed to a file named wrongly.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT})

OK = 0
REJECTED = 1
USAGE = 2
TIMEOUT = 3
UNREACHABLE = 4
NO_LEADER = 5
LAGGING = 6
STORAGE = 7
INTERNAL = 70
INTERRUPTED = 130


def for_error(exc: BaseException) -> int:
    """The exit code of a command that failed with `exc`."""
    if isinstance(exc, errors.ConfigError):
        return USAGE
    if isinstance(exc, errors.StorageError):
        return STORAGE
    if isinstance(exc, errors.Rejected):
        return REJECTED
    if isinstance(exc, errors.Timeout):
        return TIMEOUT
    if isinstance(exc, errors.NotLeader):
        return NO_LEADER
    if isinstance(exc, OSError):
        # A full or failed disk, else a file named on the command line that cannot be used.
        return STORAGE if exc.errno in _DISK_ERRNOS else USAGE
    return INTERNAL
