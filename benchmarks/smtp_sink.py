"""A counting SMTP sink (aiosmtpd) in its own process, so it never shares the benchmark's GIL.

    python -m benchmarks.smtp_sink --port 2525 --ready-file /tmp/sink.json

Accepts every message and counts it once per envelope recipient; nothing is
parsed or stored beyond the recipient address. Counts are read over the
control endpoint described in `benchmarks._control`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from benchmarks._control import Arrivals, serve_control, serve_until_signalled, write_ready


class _Handler:
    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals = arrivals

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for recipient in envelope.rcpt_tos:
            self.arrivals.add(recipient)
        return "250 2.0.0 Ok: queued"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="SMTP port on 127.0.0.1")
    parser.add_argument("--control-port", type=int, default=0, help="control endpoint port (0: any)")
    parser.add_argument("--ready-file", type=Path, help="where to write the addresses once listening")
    args = parser.parse_args()

    arrivals = Arrivals()
    controller = Controller(_Handler(arrivals), hostname="127.0.0.1", port=args.port)
    controller.start()
    control = serve_control(arrivals, args.control_port)
    try:
        info = {"smtp_port": args.port, "control_url": f"http://127.0.0.1:{control.server_address[1]}"}
        if args.ready_file:
            write_ready(args.ready_file, info)
        print(info, flush=True)
        serve_until_signalled()
    finally:
        control.shutdown()
        controller.stop()


if __name__ == "__main__":
    main()
