"""Memory of two `cohort model lora` processes fine-tuning adapters on one base side by side.

Starts two runs at once and samples /proc/PID/smaps_rollup of both every 0.2 s, printing the
sample with the largest summed Pss (proportional set size: pages shared by the two processes,
such as a memory-mapped base, count half in each) with its summed Rss, Pss_Anon and Pss_File.
Linux only. Extra arguments go to both runs (e.g. --no-mmap to copy the base instead):

    python3 crates/model/examples/shared_base_memory.py --cohort target/release/cohort \
        --model /tmp/mmap-medium --data /tmp/mmap-data.txt [--no-mmap]
"""
import argparse
import subprocess
import tempfile
import time

ap = argparse.ArgumentParser()
ap.add_argument("--cohort", default="cohort")
ap.add_argument("--model", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--steps", default="6")
ap.add_argument("--batch", default="2")
args, extra = ap.parse_known_args()
out = tempfile.mkdtemp()


def cmd(i):
    return [args.cohort, "model", "lora", args.model, "--data", args.data,
            "--out", f"{out}/adapter-{i}", "--steps", args.steps, "--batch", args.batch,
            "--rank", "8", "--json"] + extra


def rollup(pid):
    d = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    d[parts[0][:-1]] = int(parts[1]) * 1024
    except OSError:
        pass
    return d


procs = [subprocess.Popen(cmd(i), stdout=subprocess.DEVNULL) for i in range(2)]
best = {}
while any(p.poll() is None for p in procs):
    rs = [rollup(p.pid) for p in procs]
    if all(rs):
        s = {k: sum(r.get(k, 0) for r in rs) for k in ("Rss", "Pss", "Pss_Anon", "Pss_File")}
        if s["Pss"] > best.get("Pss", 0):
            best = s
    time.sleep(0.2)
if any(p.returncode != 0 for p in procs):
    raise SystemExit("a run failed")
print(" ".join(f"{k}={v / 2**20:.0f}MiB" for k, v in best.items()), "base:",
      "copied" if "--no-mmap" in extra else "mapped")
