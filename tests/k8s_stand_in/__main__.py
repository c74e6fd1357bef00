"""`python -m tests.k8s_stand_in`: serve the stand-in on 127.0.0.1 (the token comes from K8S_STAND_IN_TOKEN so that
it is not visible in the process list; the chosen port is written to --port-file once the socket is bound)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

import uvicorn

from .app import create_app
from .options import Options


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.k8s_stand_in")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--cpu", type=float, default=4)
    parser.add_argument("--memory", default="8Gi")
    parser.add_argument("--gpus", type=int, default=0)
    parser.add_argument("--missing-image", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = Options(workdir=args.workdir.resolve(), token=os.environ["K8S_STAND_IN_TOKEN"], cpu=args.cpu,
                      memory=args.memory, gpus=args.gpus, missing_images=set(args.missing_image))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    args.port_file.write_text(str(sock.getsockname()[1]))
    config = uvicorn.Config(create_app(options), log_level="warning", timeout_graceful_shutdown=1)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
