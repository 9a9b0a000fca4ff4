# The compiled twin has the same public surface as kvput_py (DESIGN.md §6).
from engine._core.kvput_py import FLAG_EXISTED as FLAG_EXISTED
from engine._core.kvput_py import FLAG_PREVIOUS as FLAG_PREVIOUS
from engine._core.kvput_py import FLAG_REVISION as FLAG_REVISION
from engine._core.kvput_py import FLAG_SESSION as FLAG_SESSION
from engine._core.kvput_py import FLAG_WANT_PREVIOUS as FLAG_WANT_PREVIOUS
from engine._core.kvput_py import OP_PUT as OP_PUT
from engine._core.kvput_py import STATUS_OK as STATUS_OK
from engine._core.kvput_py import VERSION as VERSION
from engine._core.kvput_py import VERSION_OVERHEAD_BYTES as VERSION_OVERHEAD_BYTES
from engine._core.kvput_py import Versions as Versions
from engine._core.kvput_py import apply_put as apply_put
from engine._core.kvput_py import parse_put as parse_put
from engine._core.kvput_py import put_result as put_result
