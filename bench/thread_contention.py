"""What an SFT step costs alone and beside a second busy process, with torch's thread count and ours.

torch gives every process as many threads as there are cores. Two such processes on the same cores
oversubscribe them; ours (``pixelreasoner.threads.configure_threads``) gives each of N processes
side by side cores / N threads. Two worker processes build the same batch (``--batch`` synthesized
traces for the tiny model); a step is forward + backward in ``--micro`` micro-batches, shared
prefix, grouped by length (what ``train_sft`` does). For each thread choice, worker A times
``--steps`` steps in each phase (after a warm-up step):

- alone (worker B idle), with the threads that choice gives one process;
- beside worker B running the same steps without pause (the concurrent load), both with the
  threads that choice gives each of two processes;

and, for reference, A alone with one thread.

The five phases run ``--rounds`` times, interleaved, so that other load on the machine falls on
all of them alike; each figure is the median over the rounds. All figures and ratios are measured
in the same run (about a minute on 2 cores with the defaults):

    python bench/thread_contention.py --batch 2 --steps 2 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from sft_step_speed import sft_batch, step_seconds

from pixelreasoner.threads import OVERRIDE, PROCESS_COUNTS, available_cores, configure_threads

SCRIPT = Path(__file__).resolve()


def worker(args: argparse.Namespace) -> None:
    """Prepare a batch, say ready, then obey one command a line (the parent drives the phases)."""
    default = torch.get_num_threads()  # torch's own choice: the parent cleared OMP_NUM_THREADS
    model, renderer, sequences = sft_batch(args.batch, args.preset)
    size = -(-len(sequences) // args.micro)
    ordered = sorted(sequences, key=len)
    chunks = [ordered[k : k + size] for k in range(0, len(ordered), size)]

    def step() -> float:
        return step_seconds(model, renderer, chunks, share=True)[0]

    step()  # warm-up: allocations, thread pools
    print(f"ready {sum(len(s) for s in sequences)}", flush=True)
    for line in sys.stdin:
        command, *rest = line.split()
        if command in ("torch", "one"):  # torch's default thread count, or one thread
            torch.set_num_threads(default if command == "torch" else 1)
            print(f"threads {torch.get_num_threads()}", flush=True)
        elif command == "ours":  # ours, as one of rest[0] processes started by a launcher
            print(f"threads {configure_threads(env={'LOCAL_WORLD_SIZE': rest[0]})}", flush=True)
        elif command == "steps":
            print(json.dumps([step() for _ in range(int(rest[0]))]), flush=True)
        elif command == "load":  # steps without pause until the next line ("stop")
            while not select.select([sys.stdin], [], [], 0)[0]:
                step()
            sys.stdin.readline()
            print("stopped", flush=True)


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        env = {k: v for k, v in os.environ.items() if k not in (OVERRIDE, *PROCESS_COUNTS)}
        command = [sys.executable, str(SCRIPT), "--worker", "--batch", str(args.batch)]
        command += ["--micro", str(args.micro), "--preset", args.preset]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, bufsize=1
        )

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def reply(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a worker stopped (exit {self.proc.wait()})")
        return line.strip()

    def ask(self, line: str) -> str:
        self.send(line)
        return self.reply()


# one thread alone is the reference: what a step costs where no thread of its waits on another
PHASES = [("one", False)] + [(threads, beside) for threads in ("torch", "ours") for beside in (False, True)]


def measure(a: Worker, b: Worker, threads: str, steps: int, beside_load: bool) -> tuple[int, list[float]]:
    """A's thread count and step seconds, alone or while B runs steps, both with ``threads``."""
    choice = f"ours {2 if beside_load else 1}" if threads == "ours" else threads
    count = int(a.ask(choice).split()[1])
    if beside_load:
        b.ask(choice)
        b.send("load")
    seconds = json.loads(a.ask(f"steps {steps}"))
    if beside_load and b.ask("stop") != "stopped":
        raise RuntimeError("the load worker did not stop")
    return count, seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=2, help="sequences per step")
    parser.add_argument("--micro", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--steps", type=int, default=2, help="measured steps per phase and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the five phases (interleaved)")
    parser.add_argument("--preset", default="tiny-1m")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    began, load = time.perf_counter(), os.getloadavg()[0]
    a, b = Worker(args), Worker(args)
    threads: dict[tuple[str, bool], int] = {}
    seconds: dict[tuple[str, bool], list[float]] = {phase: [] for phase in PHASES}
    try:
        tokens = int(a.reply().split()[1])
        b.reply()
        for _ in range(args.rounds):
            for phase in PHASES:
                threads[phase], measured = measure(a, b, phase[0], args.steps, beside_load=phase[1])
                seconds[phase] += measured
    finally:
        for worker_ in (a, b):
            worker_.proc.kill()
            worker_.proc.wait()
    median = {phase: statistics.median(seconds[phase]) for phase in PHASES}
    print(
        f"preset {args.preset}, {args.batch} sequences ({tokens} tokens) in {args.micro} micro-batches"
        f" per step, {available_cores()} cores; median of {args.rounds} x {args.steps} steps"
    )
    print(f"{'threads per process':<26} {'alone':>14} {'beside a load':>20} {'slow-down':>10}")
    for name, label in (("torch", "torch's default"), ("ours", "ours (cores / processes)")):
        solo, beside = (name, False), (name, True)
        print(
            f"{label:<26} {median[solo]:7.2f} s ({threads[solo]:>2})"
            f" {median[beside]:12.2f} s ({threads[beside]:>2}) {median[beside] / median[solo]:9.1f}x"
        )
    print(f"{'one thread (reference)':<26} {median['one', False]:7.2f} s ( 1)")
    ratio = median["torch", True] / median["ours", True]
    print(f"beside the load, a step with our threads is {ratio:.1f}x faster than with torch's default")
    print(
        f"({time.perf_counter() - began:.0f} s in all; thread counts in parentheses;"
        f" load average {load:.1f} before, {os.getloadavg()[0]:.1f} after, this run included)"
    )


if __name__ == "__main__":
    main()
