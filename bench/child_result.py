"""Run a benchmark's child process and read the JSON it prints on its last `RESULT ` line (shared by the benches
that measure each case in a fresh process, so its peak RSS is its own)."""

from __future__ import annotations

import json
import subprocess


def run_child_result(job: str, command: list[str]) -> dict:
    print(f"... {job}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{job} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])
