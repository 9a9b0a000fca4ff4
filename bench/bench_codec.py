#!/usr/bin/env python
"""Codec micro-benchmarks: compiled (codec_c) vs pure-Python (codec_py), authenticated frames.

Run:  python -m pytest bench/bench_codec.py -p no:cacheprovider      # pytest-benchmark, both impls
      python bench/bench_codec.py [--repeat 7]                        # timeit script: ratios

Shapes (Raft's replication hot path):
  64x1   one frame of 64 APPEND messages, each carrying one 100-byte entry (~11.6 KB)
  1x64   one APPEND carrying 64 entries of 100 bytes (~7.9 KB)

Every encode computes and every decode verifies the 16-byte AES-256-GCM tag (GMAC) over the
whole frame (`cryptography`, the same call in both implementations; codec_py docstring,
"Authentication"), so the tag is a fixed cost that bounds the Cython/Python ratio. The script
therefore also times the codec with a null AEAD (its own work) and the tag alone over the same
bytes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import struct
import sys
import timeit
from functools import partial
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY = bytes(range(32))
CLUSTER_ID = 1


def append_messages(codec: ModuleType, messages: int, entries: int) -> list[Any]:
    """`messages` APPENDs of `entries` 100-byte entries each (type 5 = MessageType.APPEND)."""
    return [
        codec.Message(
            5, src=1, dst=2, term=7, log_term=7, index=1000 + k * entries, commit=1000,
            entries=[
                codec.Entry(7, 1001 + k * entries + j, bytes([j]) * 100) for j in range(entries)
            ],
        )
        for k in range(messages)
    ]


SHAPES = {"64x1": (64, 1), "1x64": (1, 64)}


# ---------------------------------------------------------------- pytest-benchmark


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_codec_encode_decode_frame(benchmark: Any, impl: SimpleNamespace, shape: str) -> None:
    codec = impl.codec.FrameCodec(KEY, CLUSTER_ID)
    messages = append_messages(impl.codec, *SHAPES[shape])
    benchmark.group = f"codec encode+decode {shape}"

    def round_trip() -> Any:
        return codec.decode(codec.encode(1, 1, 1, messages))

    frame = benchmark(round_trip)
    assert frame.messages == messages


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_codec_encode_frame(benchmark: Any, impl: SimpleNamespace, shape: str) -> None:
    codec = impl.codec.FrameCodec(KEY, CLUSTER_ID)
    messages = append_messages(impl.codec, *SHAPES[shape])
    benchmark.group = f"codec encode {shape}"
    datagram = benchmark(codec.encode, 1, 1, 1, messages)
    assert codec.decode(datagram).messages == messages


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_codec_decode_frame(benchmark: Any, impl: SimpleNamespace, shape: str) -> None:
    codec = impl.codec.FrameCodec(KEY, CLUSTER_ID)
    messages = append_messages(impl.codec, *SHAPES[shape])
    datagram = codec.encode(1, 1, 1, messages)
    benchmark.group = f"codec decode {shape}"
    frame = benchmark(codec.decode, datagram)
    assert frame.messages == messages


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_codec_mac_only(benchmark: Any, shape: str) -> None:
    """The authentication share alone: one GMAC tag computed and one verified."""
    from engine._core import codec_py

    datagram = codec_py.FrameCodec(KEY, CLUSTER_ID).encode(
        1, 1, 1, append_messages(codec_py, *SHAPES[shape])
    )
    benchmark.group = f"codec encode+decode {shape}"
    benchmark(mac_encode_and_verify, AESGCM(bytes(32)), datagram)


def mac_encode_and_verify(aead: Any, datagram: bytes) -> None:
    """What one encode + one decode spend on the tag: one GMAC computed, one verified (the
    subkey is cached in both: a steady-state sender and receiver)."""
    body = memoryview(datagram)[:-16]
    nonce = bytes(12)
    tag = aead.encrypt(nonce, b"", body)
    aead.decrypt(nonce, tag, body)


# ---------------------------------------------------------------- script mode


def best_seconds(function: Any, repeat: int) -> float:
    """Best per-call time over `repeat` timeit runs of about 0.2 s each."""
    timer = timeit.Timer(function)
    number, _ = timer.autorange()
    number = max(1, number)
    return min(timer.repeat(repeat=repeat, number=number)) / number


def conditions() -> str:
    import Cython

    from engine._core import IMPLEMENTATION

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (
        f"Python {platform.python_version()} ({sys.implementation.name}), Cython "
        f"{Cython.__version__}, {cpu}, {os.cpu_count()} cores, selected engine._core: "
        f"{IMPLEMENTATION}; best of --repeat timeit runs, 1 thread"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    implementations = {
        name: importlib.import_module(f"engine._core.codec_{name}") for name in ("py", "c")
    }
    print(conditions())
    print(
        "authenticated: the real codec (AES-256-GCM tag computed on encode, verified on "
        "decode);\nno MAC: the same codec with a null AEAD (the codec's own work);\n"
        "mac: one GMAC tag over the frame alone (x2 for encode+decode)."
    )
    print(
        f"{'shape':6} {'bytes':>6} {'op':14} {'py us':>8} {'c us':>7} {'ratio':>6} | "
        f"{'py us':>8} {'c us':>6} {'ratio':>6} | {'mac us':>6} {'mac/c':>6}"
    )
    print(f"{'':29}{'authenticated':^24}|{'no MAC':^25}|")
    for shape, (count, entries) in SHAPES.items():
        real: dict[str, dict[str, float]] = {}
        bare: dict[str, dict[str, float]] = {}
        datagram = b""
        for name, module in implementations.items():
            real[name], datagram = time_codec(module, count, entries, args.repeat)
            bare[name], _ = time_codec(module, count, entries, args.repeat, authenticated=False)
        one_mac = best_seconds(partial(seal_only, AESGCM(bytes(32)), datagram), args.repeat)
        for operation in ("encode", "decode", "encode+decode"):
            mac_s = one_mac * (2 if operation == "encode+decode" else 1)
            py_s, c_s = real["py"][operation], real["c"][operation]
            bare_py, bare_c = bare["py"][operation], bare["c"][operation]
            print(
                f"{shape:6} {len(datagram):>6} {operation:14} {py_s * 1e6:8.1f} {c_s * 1e6:7.2f} "
                f"{py_s / c_s:5.1f}x | {bare_py * 1e6:8.1f} {bare_c * 1e6:6.2f} "
                f"{bare_py / bare_c:5.1f}x | {mac_s * 1e6:6.2f} {mac_s / c_s:6.0%}"
            )


class NullAead:
    """Stands in for the (sender, epoch)'s AESGCM to time the codec's own work: a constant
    tag that always verifies."""

    def encrypt(self, nonce: bytes, data: bytes, associated_data: Any) -> bytes:
        return bytes(16)

    def decrypt(self, nonce: bytes, data: bytes, associated_data: Any) -> bytes:
        return b""


def time_codec(
    module: ModuleType, count: int, entries: int, repeat: int, authenticated: bool = True
) -> tuple[dict[str, float], bytes]:
    """Best per-call seconds of encode, decode and both for one shape; and the frame."""
    codec = module.FrameCodec(KEY, CLUSTER_ID)
    if not authenticated:
        # The subkey cache key is the header's (sender_id, epoch) bytes; a cached entry is
        # used as is, so this swaps the AEAD of sender 1, epoch 1 (codec_py._remember).
        codec._aeads[struct.pack("<QQ", 1, 1)] = NullAead()
    messages = append_messages(module, count, entries)
    datagram = codec.encode(1, 1, 1, messages)
    assert codec.decode(datagram).messages == messages

    def round_trip() -> Any:
        return codec.decode(codec.encode(1, 1, 1, messages))

    times = {
        "encode": best_seconds(partial(codec.encode, 1, 1, 1, messages), repeat),
        "decode": best_seconds(partial(codec.decode, datagram), repeat),
        "encode+decode": best_seconds(round_trip, repeat),
    }
    return times, datagram


def seal_only(aead: Any, datagram: bytes) -> bytes:
    tag: bytes = aead.encrypt(bytes(12), b"", memoryview(datagram)[:-16])
    return tag


if __name__ == "__main__":
    main()
