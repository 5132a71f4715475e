#!/usr/bin/env python3
"""A toy RewardService (proto/reward.proto) in Python, to show that any language can serve
rewards to grpo's "remote" reward function. Not part of the build; run with Debian's python3
(scripts/setup.sh installs python3-grpcio, python3-grpc-tools, python3-protobuf):

    /usr/bin/python3 examples/reward_server.py [--port 0] [--host 127.0.0.1]

Prints "listening on HOST:PORT" once ready and serves until SIGINT/SIGTERM. Scoring rule: 1.0 if
the ground truth (a JSON string, or any JSON value's text) occurs in the completion, else 0.0;
bad JSON in ground_truth_json is that item's error. Stubs are generated from proto/reward.proto
into a temporary directory at start-up with grpc_tools.protoc.
"""
import argparse
import json
import os
import signal
import sys
import tempfile
import threading
from concurrent import futures

import grpc
from grpc_tools import protoc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_stubs():
    out = tempfile.mkdtemp(prefix="grpo_reward_pb_")
    rc = protoc.main(["protoc", f"-I{REPO}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(REPO, "proto", "reward.proto")])
    if rc != 0:
        sys.exit(f"reward_server.py: protoc failed on proto/reward.proto (rc {rc})")
    sys.path.insert(0, out)
    from proto import reward_pb2, reward_pb2_grpc  # noqa: E402 (generated above)
    return reward_pb2, reward_pb2_grpc


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    pb, pb_grpc = load_stubs()

    class Service(pb_grpc.RewardServiceServicer):
        def Score(self, request, context):
            resp = pb.ScoreResponse()
            for item in request.items:
                r = resp.results.add()
                try:
                    truth = json.loads(item.ground_truth_json) if item.ground_truth_json else None
                except ValueError as e:
                    r.score, r.error = 0.0, f"ground_truth_json: not valid JSON ({e})"
                    continue
                if truth is None:
                    r.score, r.error = 0.0, "missing ground truth"
                    continue
                needle = truth if isinstance(truth, str) else json.dumps(truth)
                r.score = 1.0 if needle in item.completion else 0.0
                r.components["contains"] = r.score
            return resp

        def Health(self, request, context):
            return pb.HealthResponse(rewards=["contains"])

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_RewardServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    if port == 0:
        sys.exit(f"reward_server.py: cannot listen on {args.host}:{args.port}")
    server.start()
    print(f"listening on {args.host}:{port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()


if __name__ == "__main__":
    main()
