"""CPU cost of refusing hostile command payloads (issue 13: a flood must not starve the
loop), next to the cost of verifying one genuine signed STOP in the same run.

    uv run python bench/command_verify.py [--repeats 20]

Measured in CPU seconds of this thread (`time.thread_time`), so a loaded machine does
not inflate the figure. Target: every hostile input refused in ≤ 0.25 CPU s (typical
is well under 1 ms), and the worst hostile input within 50× a genuine STOP's verify.
The test suite (tests/security/test_fuzz.py) checks the refusals and their reasons; the
timing lives here, because timed unit tests are noise on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.security import (
    CommandName,
    Role,
    SecuritySettings,
    SenderConfig,
    SenderRegistry,
    SqliteCounterStore,
    StopBody,
    public_key_to_text,
    sign_command,
    verify_command,
)

TARGET_CPU_S = 0.25
TARGET_RATIO = 50.0
DEVICE_ID = "neb-bench"
NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def _cpu_s(action: Callable[[], object], repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.thread_time()
        action()
        samples.append(time.thread_time() - started)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    registry = SenderRegistry.from_settings(
        SecuritySettings(
            senders=(
                SenderConfig(
                    id="ward",
                    public_key=public_key_to_text(key.public_key()),
                    role=Role.WARD_STATION,
                ),
            )
        )
    )
    with tempfile.TemporaryDirectory() as data_dir:
        counters = SqliteCounterStore.in_data_dir(Path(data_dir))
        counter = iter(range(1, 10**9))

        def verify(raw: bytes) -> object:
            return verify_command(
                raw,
                retained=False,
                now=NOW,
                device_id=DEVICE_ID,
                registry=registry,
                counters=counters,
            )

        def genuine() -> object:
            raw = sign_command(
                key=key,
                sender_id="ward",
                device_id=DEVICE_ID,
                counter=next(counter),
                command=CommandName.STOP,
                body=StopBody(reason="bench"),
                issued_at_ms=int(NOW.timestamp() * 1000),
                validity_s=30,
            )
            started = time.thread_time()
            verify(raw)
            return time.thread_time() - started

        reference = [float(genuine()) for _ in range(args.repeats)]  # type: ignore[arg-type]
        hostile = {
            "nesting 20,000 deep ([)": b"[" * 20000 + b"1" + b"]" * 20000,
            'nesting 20,000 deep ({"a":)': b'{"a":' * 20000 + b"1" + b"}" * 20000,
            "10 MB of digits": b"7" * 10_000_000,
            "2 KB of 0xff": b"\xff" * 2048,
        }
        counters.close()
        ref_median = statistics.median(reference)
        print(f"reference: genuine signed STOP verified, median {ref_median * 1e3:.3f} CPU ms")
        worst_verdict = True
        for name, raw in hostile.items():
            samples = _cpu_s(lambda raw=raw: verify(raw), args.repeats)
            worst = max(samples)
            ratio = worst / ref_median
            ok = worst <= TARGET_CPU_S and ratio <= TARGET_RATIO
            worst_verdict &= ok
            print(
                f"{name:30s} median {statistics.median(samples) * 1e3:8.3f} CPU ms, "
                f"max {worst * 1e3:8.3f} CPU ms, max/reference {ratio:6.1f}× "
                f"(target ≤ {TARGET_CPU_S * 1e3:.0f} ms and ≤ {TARGET_RATIO:.0f}×) "
                f"{'met' if ok else 'NOT MET'}"
            )
    print(f"verdict: {'met' if worst_verdict else 'NOT MET'}")
    return 0 if worst_verdict else 1


if __name__ == "__main__":
    raise SystemExit(main())
