"""The test suite's Twilio and FCM fakes, counting, each in a process of its own.

    python -m benchmarks.fake_servers twilio --ready-file /tmp/twilio.json
    python -m benchmarks.fake_servers fcm --dir /tmp/bench --ready-file /tmp/fcm.json

The fakes (tests/fakes/) listen on an ephemeral 127.0.0.1 port; the ready file
says where, with what the clients need (Twilio account SID and token; the FCM
service-account file, whose `token_uri` is the fake OAuth endpoint). Every
accepted message is counted once by recipient (phone number or push token);
counts are read over the control endpoint described in `benchmarks._control`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._control import Arrivals, serve_control, serve_until_signalled, write_ready
from tests.fakes.fcm import FakeFcm, FakeOAuth
from tests.fakes.twilio import FakeTwilio

PROJECT_ID = "notify-bench"


class CountingTwilio(FakeTwilio):
    def __init__(self, arrivals: Arrivals, latency: float = 0.0) -> None:
        super().__init__()
        self.arrivals = arrivals
        self.latency = latency

    def _create(self, form: dict[str, str]) -> Any:
        time.sleep(self.latency)  # a real provider's answer takes this long
        answer = super()._create(form)
        if answer.status == 201:
            self.arrivals.add(form["To"])
        return answer


class CountingFcm(FakeFcm):
    def __init__(self, oauth: FakeOAuth, arrivals: Arrivals, latency: float = 0.0) -> None:
        super().__init__(oauth)
        self.arrivals = arrivals
        self.latency = latency

    def _send(self, project: str, bearer: str, body: bytes) -> Any:
        time.sleep(self.latency)
        answer = super()._send(project, bearer, body)
        if answer.status == 200:
            self.arrivals.add(json.loads(body)["message"]["token"])
        return answer


def _run_twilio(arrivals: Arrivals, latency: float) -> tuple[dict[str, Any], list[Any]]:
    fake = CountingTwilio(arrivals, latency).start()
    info = {"url": fake.url, "account_sid": fake.account_sid, "auth_token": fake.auth_token}
    return info, [fake]


def _run_fcm(arrivals: Arrivals, directory: Path, latency: float) -> tuple[dict[str, Any], list[Any]]:
    oauth = FakeOAuth().start()
    fcm = CountingFcm(oauth, arrivals, latency).start()
    credentials = oauth.service_account(directory, project_id=PROJECT_ID)
    info = {"url": fcm.url, "oauth_url": oauth.url, "credentials": str(credentials), "project_id": PROJECT_ID}
    return info, [fcm, oauth]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["twilio", "fcm"])
    parser.add_argument("--control-port", type=int, default=0, help="control endpoint port (0: any)")
    parser.add_argument("--dir", type=Path, help="fcm: where to write the service-account file")
    parser.add_argument("--ready-file", type=Path, help="where to write the addresses once listening")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each answer waits (default 0)")
    args = parser.parse_args()

    arrivals = Arrivals()
    if args.kind == "twilio":
        info, fakes = _run_twilio(arrivals, args.latency)
    else:
        directory = args.dir or Path(tempfile.mkdtemp(prefix="notify-bench-fcm-"))
        info, fakes = _run_fcm(arrivals, directory, args.latency)
    control = serve_control(arrivals, args.control_port)
    try:
        info["control_url"] = f"http://127.0.0.1:{control.server_address[1]}"
        if args.ready_file:
            write_ready(args.ready_file, info)
        print(json.dumps({k: v for k, v in info.items() if k != "auth_token"}), flush=True)
        serve_until_signalled()
    finally:
        control.shutdown()
        for fake in fakes:
            fake.stop()


if __name__ == "__main__":
    main()
