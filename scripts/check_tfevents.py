#!/usr/bin/env python3
"""Read a learner event file (or every events.out.tfevents.* in a directory) with TensorBoard's own
reader and check it against metrics.jsonl beside it.

Not run in CI (needs the `tensorboard` pip package). Usage:

    /tmp/venv-fx/bin/pip install tensorboard
    /tmp/venv-fx/bin/python scripts/check_tfevents.py OUTPUT_DIR

Checks, with TensorBoard's EventFileLoader (which verifies both masked CRC-32Cs of every record) and
EventAccumulator (what the TensorBoard UI reads): the first record is file_version "brain.Event:2";
every scalar tag of every step equals the float32 of the value in metrics.jsonl for that step.
Prints one summary line; exits 1 on any mismatch.
"""

import glob
import json
import math
import os
import struct
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    files = sorted(glob.glob(os.path.join(out_dir, "events.out.tfevents.*")))
    if not files:
        sys.exit(f"no events.out.tfevents.* in {out_dir}")
    metrics = {}
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            metrics[j["step"]] = j
    records = 0
    for path in files:
        raw = list(RawEventFileLoader(path).Load())  # raises on a CRC mismatch
        first = event_pb2.Event.FromString(raw[0])
        if first.file_version != "brain.Event:2":
            sys.exit(f"{path}: first record is not file_version brain.Event:2")
        records += len(raw)
    acc = event_accumulator.EventAccumulator(out_dir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    checked = 0
    bad = []
    for tag in tags:
        for ev in acc.Scalars(tag):
            want = metrics.get(ev.step, {}).get(tag)
            if want is None:
                continue  # a step later rewritten by a resume keeps its old event in an older file
            if not math.isclose(ev.value, f32(want), rel_tol=0, abs_tol=0) and not (
                    math.isnan(ev.value) and math.isnan(f32(want))):
                bad.append(f"{tag} step {ev.step}: event {ev.value} vs metrics.jsonl {want}")
            checked += 1
    print(f"{len(files)} event file(s), {records} records (CRCs verified by TensorBoard), "
          f"{len(tags)} scalar tags, {checked} values equal to metrics.jsonl, {len(bad)} mismatches")
    for b in bad[:10]:
        print("  " + b)
    sys.exit(1 if bad or checked == 0 else 0)


if __name__ == "__main__":
    main()
