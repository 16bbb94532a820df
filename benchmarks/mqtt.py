#!/usr/bin/env python3
"""Does the MQTT bridge cost detection anything? `edged run` on the bundled clip, unpaced
(`realtime: false`: the interpreter is the bottleneck), with events and an event history on,
three ways in one run:

  off     mqtt.enabled: false
  up      MQTT to a real mosquitto on loopback (Debian's package), discovery on
  down    MQTT to a loopback port nobody listens on (the broker is down: reconnect attempts)

    python benchmarks/mqtt.py [--rounds 3] [--seconds 20] [--threads 2]

The modes alternate within each round (their order rotates from round to round), so a drift of
the machine's speed spreads over all three. Prints det messages per second and CPU ms per frame
of each run, their means, and each mode against `off` (the issue's target: within 3 %),
measured, never asserted.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from pipeline import Run, free_port  # noqa: E402

MODES = ("off", "up", "down")
TARGET = 0.03


def start_broker(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise SystemExit("needs mosquitto: apt-get install mosquitto")
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    if proc.poll() is not None:
        raise SystemExit(f"mosquitto exited with {proc.returncode}")
    return proc, port


def sections(mode: str, tmp: Path, port: int, dead_port: int, n: int) -> dict[str, Any]:
    events = {"history": str(tmp / f"events-{mode}-{n}.db"), "snapshots": str(tmp / "snaps")}
    mqtt = {"enabled": mode != "off", "host": "127.0.0.1",
            "port": port if mode == "up" else dead_port, "node": f"bench{n}"}
    return {"events": events, "mqtt": mqtt}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="edged-mqtt-bench-") as d:
        tmp = Path(d)
        broker, port = start_broker(tmp)
        dead_port = free_port()
        try:
            n = 0
            for r in range(args.rounds):
                order = MODES[r % 3:] + MODES[:r % 3]
                for mode in order:
                    n += 1
                    run = Run(tmp, args.threads, False, **sections(mode, tmp, port, dead_port, n))
                    try:
                        run.collect(args.warmup)
                        cpu0 = run.cpu_s()
                        got, _, _ = run.collect(args.seconds)
                        cpu = run.cpu_s() - cpu0
                    finally:
                        code = run.stop()
                    if code != 0:
                        raise SystemExit(f"edged ({mode}) exited with {code}")
                    fps = got / args.seconds
                    results[mode].append((fps, cpu * 1000 / max(got, 1)))
                    print(f"round {r + 1} {mode:5s} {fps:7.1f} det/s  "
                          f"{cpu * 1000 / max(got, 1):5.1f} CPU ms/frame", flush=True)
        finally:
            broker.terminate()
            broker.wait(10)
    base = statistics.mean(f for f, _ in results["off"])
    print(f"\n{'mode':6s} {'det/s runs':28s} {'mean':>7s} {'vs off':>7s} {'CPU ms/frame':>13s}")
    for mode in MODES:
        fps = [f for f, _ in results[mode]]
        mean = statistics.mean(fps)
        cpu = statistics.mean(c for _, c in results[mode])
        print(f"{mode:6s} {', '.join(f'{f:.1f}' for f in fps):28s} {mean:7.1f} "
              f"{(mean - base) / base:+7.1%} {cpu:13.2f}")
    for mode in ("up", "down"):
        mean = statistics.mean(f for f, _ in results[mode])
        ok = (base - mean) / base <= TARGET
        print(f"MQTT {mode}: throughput {mean:.1f} vs {base:.1f} det/s with MQTT off: "
              f"{'PASS' if ok else 'MISS'} (within {TARGET:.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
