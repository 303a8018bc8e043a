"""SMS and push: `notify worker sms|push` against the raw provider client in a loop, side by side.

    python -m benchmarks.provider_throughput [--count 1000] [--rounds 2] [--channels sms push]
                                             [--contenders notify notify-many raw]

Every contender sends the same `--count` welcome messages to the same local fake
(tests/fakes/, each in its own process): Twilio's Messages API for SMS, FCM
HTTP v1 plus its OAuth token endpoint for push. notify goes the whole way
(notify.send() per message, or notify.send_many() in chunks of `--many-batch`
for notify-many -> PostgreSQL store -> Redis -> worker subprocess with
`--concurrency` threads -> twilio / pyfcm); the baseline is the bare client
sending pre-rendered messages one after another from this process. Legs
alternate per channel (notify, notify-many, raw, notify, ...); see
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from jinja2 import Environment, FileSystemLoader

from benchmarks._harness import (
    REPO,
    Child,
    Control,
    CpuMeter,
    PgCounters,
    Processes,
    backend_pids,
    clean_environ,
    close_notify_producer,
    delivery_statuses,
    flush_redis,
    process_tree,
    redis_pid,
)
from benchmarks._legs import (
    Leg,
    add_common_arguments,
    add_contender_arguments,
    in_chunks,
    measure,
    parse_arguments,
    print_cpu_ratio,
    print_legs,
    print_ratios,
    run,
    summarize_pairs,
    times,
    warm_up,
)
from benchmarks._stores import RedisCommands

NAME = "provider_throughput"
NOTIFY, NOTIFY_MANY, RAW = "notify", "notify-many", "raw"
LEGS = (NOTIFY, NOTIFY_MANY, RAW)
NOTIFY_LEGS = (NOTIFY, NOTIFY_MANY)  # notify's producer two ways; the same notify worker
SMS_FROM = "+15005550006"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
CHANNEL_CODE = {"sms": 1, "push": 2}


# NANP area codes every exchange of which is valid
AREA = {NOTIFY: "201", NOTIFY_MANY: "312", RAW: "212", "warmup": "415"}


def recipient(channel: str, leg: str, round_no: int, i: int) -> str:
    """A distinct phone number (E.164, valid in its numbering plan) or push token per message."""
    if channel == "sms":  # exchanges 2RX for round R (< 80) and i < 100,000: prefix +1<area>2R
        index = round_no * 100_000 + i
        return f"+1{AREA[leg]}{200 + index // 10_000}{index % 10_000:04d}"
    return f"{recipient_prefix(channel, leg, round_no)}{i:07d}"


def recipient_prefix(channel: str, leg: str, round_no: int) -> str:
    """What every recipient() of a leg, and no other leg's, starts with."""
    if channel == "sms":
        return f"+1{AREA[leg]}{20 + round_no}"
    leg_code = {NOTIFY: 1, RAW: 2, NOTIFY_MANY: 3, "warmup": 9}[leg]
    return f"bench-{leg_code}-{round_no}-"


class Renderer:
    """The welcome templates, rendered with plain Jinja2 for the raw loops (before timing)."""

    def __init__(self) -> None:
        self.env = Environment(
            loader=FileSystemLoader(REPO / "templates"), trim_blocks=True, lstrip_blocks=True
        )

    def __call__(self, part: str, name: str) -> str:
        return self.env.get_template(f"welcome/{part}.j2").render(name=name).strip()


def raw_twilio(info: dict[str, Any]) -> Callable[[str, str], object]:
    """twilio's own client against the fake: its HTTP client rebased, as teams do for a mock."""
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    base = urlsplit(info["url"])

    class RebasedHttpClient(TwilioHttpClient):  # type: ignore[misc]
        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            parts = urlsplit(url)
            url = urlunsplit((base.scheme, base.netloc, parts.path, parts.query, parts.fragment))
            return super().request(method, url, *args, **kwargs)

    client = Client(info["account_sid"], info["auth_token"], http_client=RebasedHttpClient(timeout=30))
    return lambda to, body: client.messages.create(to=to, from_=SMS_FROM, body=body)


def raw_fcm(info: dict[str, Any]) -> Callable[[str, str, str], object]:
    """pyfcm with service-account credentials, its endpoint pointed at the fake."""
    from google.oauth2 import service_account
    from pyfcm import FCMNotification

    load = service_account.Credentials.from_service_account_file
    credentials = load(info["credentials"], scopes=[FCM_SCOPE])  # type: ignore[no-untyped-call]
    client = FCMNotification(credentials=credentials)
    client.FCM_END_POINT_BASE = info["url"] + "/v1/projects"
    return lambda token, title, body: client.notify(
        fcm_token=token, notification_title=title, notification_body=body, data_payload={"source": "bench"}
    )


class ProviderBenchmark:
    def __init__(self, args: argparse.Namespace, procs: Processes, database_url: str) -> None:
        self.args = args
        self.procs = procs
        self.database_url = database_url
        self.render = Renderer()
        self.servers: dict[str, dict[str, Any]] = {}
        self.controls: dict[str, Control] = {}
        if "sms" in args.channels:
            self._start_fake("sms", "twilio")
        if "push" in args.channels:
            self._start_fake("push", "fcm", "--dir", str(procs.log_dir))
        self.redis_pid = redis_pid(args.redis_url)
        self.environ = self._environ()
        os.environ.update(self.environ)  # notify.send() reads these

    def _start_fake(self, channel: str, kind: str, *extra: str) -> None:
        latency = ["--latency", str(self.args.latency_ms / 1000)]
        argv = [sys.executable, "-m", "benchmarks.fake_servers", kind, *latency, *extra]
        info = self.procs.start_server(f"fake-{kind}", argv, clean_environ())
        self.servers[channel] = info
        self.controls[channel] = Control(info["control_url"], info["child"])

    def _environ(self) -> dict[str, str]:
        env = {
            "NOTIFY_HOME": str(self.procs.log_dir / "notify-home"),
            "NOTIFY_BROKER_URL": self.args.redis_url,
            "NOTIFY_DATABASE_URL": self.database_url,
            "NOTIFY_TEMPLATES_DIR": str(REPO / "templates"),
            "NOTIFY_EMAIL_BACKEND": "outbox",
            "NOTIFY_SMS_BACKEND": "twilio",
            "NOTIFY_PUSH_BACKEND": "fcm",
        }
        if "sms" in self.servers:
            twilio = self.servers["sms"]
            env |= {
                "NOTIFY_TWILIO_ACCOUNT_SID": twilio["account_sid"],
                "NOTIFY_TWILIO_AUTH_TOKEN": twilio["auth_token"],
                "NOTIFY_TWILIO_FROM": SMS_FROM,
                "NOTIFY_TWILIO_BASE_URL": twilio["url"],
            }
        if "push" in self.servers:
            env |= {"NOTIFY_FCM_CREDENTIALS": self.servers["push"]["credentials"],
                    "NOTIFY_FCM_BASE_URL": self.servers["push"]["url"]}  # fmt: skip
        return env

    def legs(self) -> Iterator[Leg]:
        for channel in self.args.channels:
            for round_no in range(1, self.args.rounds + 1):
                for leg in self.args.contenders:
                    print(f"{channel} round {round_no}: {leg} ...", flush=True)
                    yield self.run(channel, round_no, leg)

    def run(self, channel: str, round_no: int, leg: str) -> Leg:
        recipients = [recipient(channel, leg, round_no, i) for i in range(self.args.count)]
        warmup_round = round_no * 10 + LEGS.index(leg)  # a warm-up's numbers are its leg's alone
        warmup = [recipient(channel, "warmup", warmup_round, i) for i in range(self.args.warmup)]
        server = self.controls[channel]
        common: dict[str, Any] = {
            "round_no": round_no,
            "leg": leg,
            "channel": channel,
            "server": server,
            "recipients": recipients,
            "timeout": self.args.timeout,
            "settle": self.args.settle,
        }
        if leg == RAW:
            send = self._raw_sender(channel)
            warm_up(server, [], send, warmup)
            result = measure(watch=[], send=send, meter=self._meter(channel, []), **common)
            result.check(expect_sent=False)
            return result
        flush_redis(self.args.redis_url)  # before the worker starts: it declares its queues
        env = {**clean_environ(), **self.environ, "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "notify.cli", "worker", channel, "--concurrency",
                str(self.args.concurrency), "--pool", self.args.pool, "-l", "warning"]  # fmt: skip
        if self.args.profile:
            out = self.procs.log_dir / f"profile-{channel}-{leg}-round{round_no}.prof"
            argv = [sys.executable, "-m", "benchmarks.profiled", "--out", str(out), *argv[1:]]
        worker = self.procs.start(f"worker-{channel}-{leg}-round{round_no}", argv, env)
        pg = PgCounters(self.database_url)
        commands = RedisCommands(self.args.redis_url)
        try:
            send = _notify_sender(channel)
            many = in_chunks(_many_sender(channel, self.args.many_batch), self.args.many_batch,
                             lambda: [worker])  # fmt: skip
            send_all = many if leg == NOTIFY_MANY else None
            warm_up(server, [worker], send, warmup, send_all=send_all)
            close_notify_producer()  # its PostgreSQL sessions publish their counters as they end
            pg.start()
            commands.start()
            meter = self._meter(channel, [worker])
            result = measure(watch=[worker], send=send, meter=meter, send_all=send_all, **common)
            result.redis_per_msg = commands.per_message(result.count)
        finally:
            commands.close()
            self.procs.stop(worker)
        prefix = recipient_prefix(channel, leg, round_no)
        result.store = delivery_statuses(self.database_url, f"{prefix}%")
        close_notify_producer()
        result.pg_per_msg = pg.per_message(result.count)
        result.tx_per_msg = {
            "transactions": result.pg_per_msg["xact_commit"] + result.pg_per_msg["xact_rollback"]
        }
        result.check(expect_sent=True)
        return result

    def _meter(self, channel: str, workers: list[Child]) -> CpuMeter:
        fake = self.controls[channel].child
        return CpuMeter({
            "producer": lambda: [os.getpid()],
            "worker": lambda: [pid for w in workers if w.alive for pid in process_tree(w.process.pid)],
            "fake": lambda: [fake.process.pid],
            "postgres": lambda: backend_pids(self.database_url),
            "redis": lambda: [self.redis_pid] if self.redis_pid else [],
        })  # fmt: skip

    def _raw_sender(self, channel: str) -> Callable[[int, str], object]:
        """A send(i, recipient) over pre-rendered messages: only the client call is timed."""
        names = [f"User {i}" for i in range(max(self.args.count, self.args.warmup))]
        if channel == "sms":
            bodies = [self.render("sms.txt", name) for name in names]
            sms = raw_twilio(self.servers["sms"])
            return lambda i, to: sms(to, bodies[i])
        titles = [self.render("push.title", name) for name in names]
        bodies = [self.render("push.body", name) for name in names]
        push = raw_fcm(self.servers["push"])
        return lambda i, token: push(token, titles[i], bodies[i])


def _notify_sender(channel: str) -> Callable[[int, str], object]:
    import notify

    field = "phone" if channel == "sms" else "push_token"

    def send(i: int, to: str) -> object:
        return notify.send("welcome", to={field: to}, data={"name": f"User {i}"}, channels=[channel])

    return send


def _many_sender(channel: str, batch: int) -> Callable[[int, Sequence[str]], object]:
    """send_chunk(first, recipients): one notify.send_many() of their intents (names from `first`)."""
    import notify

    field = "phone" if channel == "sms" else "push_token"

    def send_chunk(first: int, recipients: Sequence[str]) -> object:
        intents = [notify.Intent("welcome", to={field: to}, data={"name": f"User {first + i}"},
                                 channels=[channel]) for i, to in enumerate(recipients)]  # fmt: skip
        return notify.send_many(intents, batch_size=batch)

    return send_chunk


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.provider_throughput", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_common_arguments(
        parser,
        default_count=1000,
        help_for={
            "--count": "messages per leg (default %(default)s)",
            "--rounds": "rounds of every contender per channel (default %(default)s)",
            "--concurrency": "notify worker threads (default %(default)s)",
            "--redis-url": "broker; this db is FLUSHED before each notify leg (default db 14)",
            "--profile": "run notify workers under cProfile (slower); see results/logs/",
        },
    )
    parser.add_argument(
        "--pool",
        choices=["threads", "prefork", "solo"],
        default="threads",
        help="the notify worker's Celery pool (default threads)",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="how long the fakes take to answer, like a real provider (default 0)",
    )
    parser.add_argument("--channels", nargs="+", choices=["sms", "push"], default=["sms", "push"])
    add_contender_arguments(parser, LEGS)
    return parse_arguments(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(NAME, args, ProviderBenchmark)
    summaries: dict[str, Any] = {}
    for channel in args.channels:
        legs = [leg for leg in result.legs if leg.channel == channel]
        summaries[channel] = summarize_pairs(legs, NOTIFY_LEGS, (RAW, NOTIFY))
    print()
    print_legs(result.legs, producer_header="producer s")
    print()
    for channel, summary in summaries.items():
        _print_summary(channel, summary)
    correct = bool(result.legs) and all(leg.ok for leg in result.legs)
    suffix = (f"_latency{args.latency_ms:g}ms" if args.latency_ms else "") + (
        "_profile" if args.profile else ""
    )
    return result.finish(NAME + suffix, summaries, correct=correct)


def _print_summary(channel: str, summary: dict[str, Any]) -> None:
    for pair, versus in summary.items():
        print_ratios(versus, f"{channel}: {pair}")
        print_cpu_ratio(versus, f"{channel}: {pair}")
        if versus["baseline"] == NOTIFY:
            producer = times(versus["producer_ratio_median"])
            print(
                f"{channel}: {pair} producer (notify.send_many vs notify.send, per second): median {producer}"
            )


if __name__ == "__main__":
    sys.exit(main())
