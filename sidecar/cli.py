"""The ``llm-sidecar`` command: serve, check-config, injector, fake-provider, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from sidecar import config as config_module
from sidecar.config import Config, ConfigError

log = logging.getLogger("sidecar")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-sidecar", description="A fast LLM gateway sidecar.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the API and admin ports")
    serve.add_argument("--config", default=os.environ.get("SIDECAR_CONFIG"),
                       help="config file (default: $SIDECAR_CONFIG)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=4000)
    serve.add_argument("--admin-host", default="0.0.0.0")
    serve.add_argument("--admin-port", type=int, default=4001)
    serve.set_defaults(func=_serve)

    check = commands.add_parser("check-config", help="validate a config file; exit non-zero on problems")
    check.add_argument("path")
    check.add_argument("--skip-secrets", action="store_true",
                       help="do not require os.environ/ and file: secrets to resolve (e.g. in CI)")
    check.add_argument("--strict", action="store_true",
                       help="treat every warning (a LiteLLM key the sidecar ignores, an unknown key) as an error")
    check.set_defaults(func=_check_config)

    fake = commands.add_parser("fake-provider", help="run a fault-injecting fake upstream")
    fake.add_argument("--port", type=int, required=True)
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--name", default="fake")
    fake.add_argument("--error-rate", type=float, default=0.0)
    fake.add_argument("--error-status", type=int, default=429)
    fake.add_argument("--retry-after", type=float, default=None)
    fake.add_argument("--latency", type=float, default=0.0)
    fake.add_argument("--ttft", type=float, default=0.0)
    fake.add_argument("--chunk-delay", type=float, default=0.0)
    fake.add_argument("--chunks", type=int, default=5)
    fake.add_argument("--hang", action="store_true")
    fake.add_argument("--reset", action="store_true")
    fake.add_argument("--drop-after", type=int, default=None)
    fake.add_argument("--malformed", action="store_true")
    fake.add_argument("--require-key", default=None)
    fake.add_argument("--seed", type=int, default=None)
    sglang = fake.add_argument_group("SGLang emulation (--sglang: an SGLang server per replica, prefix cache and all)")
    sglang.add_argument("--sglang", action="store_true")
    sglang.add_argument("--replicas", type=int, default=1, help="replicas on ports PORT..PORT+N-1")
    sglang.add_argument("--max-running", type=int, default=8)
    sglang.add_argument("--max-queued", type=int, default=None)
    sglang.add_argument("--cache-tokens", type=int, default=20_000)
    sglang.add_argument("--prefill-per-token", type=float, default=0.00002)
    sglang.add_argument("--decode-per-token", type=float, default=0.002)
    sglang.add_argument("--output-tokens", type=int, default=8)
    sglang.add_argument("--startup-delay", type=float, default=0.0)
    sglang.add_argument("--health-delay", type=float, default=0.0)
    fake.set_defaults(func=_fake_provider)

    injector = commands.add_parser("injector", help="serve the mutating admission webhook that adds the sidecar")
    injector.add_argument("--template", required=True, help="the injection template the Helm chart renders")
    injector.add_argument("--tls-cert", required=True)
    injector.add_argument("--tls-key", required=True)
    injector.add_argument("--host", default="0.0.0.0")
    injector.add_argument("--port", type=int, default=8443)
    injector.set_defaults(func=_injector)

    demo = commands.add_parser("demo", help="show failover in front of local fake providers")
    demo.add_argument("--requests", type=int, default=300)
    demo.add_argument("--concurrency", type=int, default=8)
    demo.set_defaults(func=_demo)
    return parser


def _check_config(args: argparse.Namespace) -> int:
    """Every problem (exit 1) and every warning (exit 1 too with ``--strict``), each with its location."""
    try:
        config = config_module.load(args.path, resolve_secrets=not args.skip_secrets)
    except ConfigError as exc:
        problems, warnings = exc.problems, exc.warnings
    else:
        problems, warnings = [], config.warnings
    if args.strict:
        problems, warnings = [*problems, *warnings], ()
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {args.path}", file=sys.stderr)
        return 1
    groups = len(config.groups) + len(config.wildcards)
    print(f"{args.path}: ok — {groups} model group(s), {len(config.deployments)} deployment(s)"
          + (f", {len(warnings)} warning(s)" if warnings else ""))
    return 0


def _serve(args: argparse.Namespace) -> int:
    if not args.config:
        print("llm-sidecar serve: --config PATH or SIDECAR_CONFIG is required", file=sys.stderr)
        return 2
    try:
        with open(args.config, "rb") as handle:
            text = handle.read()
        config = config_module.parse_yaml(text, args.config)
    except OSError as exc:
        print(f"{args.config}: cannot read: {exc.strerror}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    _setup_logging(config)  # also logs the config's warnings: what it asks for that the sidecar ignores
    args.config = os.path.abspath(args.config)
    from sidecar.server.lifecycle import StartupError

    try:
        _run(_serve_async(config, hashlib.sha256(text).hexdigest(), args))
    except StartupError as exc:  # one line, like a config problem (a log line would mask the address)
        print(f"llm-sidecar serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _setup_logging(config: Config) -> None:
    """JSON lines on stderr at ``sidecar_settings.log_level``; the process's redactor is compiled for this
    configuration (its keys and hosts are masked in logs, spans and errors to the app)."""
    from sidecar.config.redaction import configure_redactor
    from sidecar.telemetry.logs import REDACT, setup_logging

    configure_redactor(REDACT, config)
    setup_logging(config.sidecar.log_level)
    for warning in config.warnings:
        log.warning("config: %s", warning)


async def _serve_async(config: Config, digest: str, args: argparse.Namespace) -> None:
    from sidecar.server.lifecycle import Servers

    servers = Servers(config, args.host, args.port, args.admin_host, args.admin_port, config_path=args.config,
                      digest=digest)
    state = servers.state
    loop = asyncio.get_running_loop()
    # SIGHUP reloads the config (its default action would end the process, even while starting).
    loop.add_signal_handler(signal.SIGHUP, lambda: state.reloader.request() if state.reloader else None)
    await servers.start()
    _tune_gc()
    log.info("serving", extra={"fields": {"api": f"{args.host}:{args.port}",
                                          "admin": f"{args.admin_host}:{args.admin_port}"}})
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await servers.stop()


GC_GEN0_THRESHOLD = 20_000


def _tune_gc() -> None:
    """Move everything loaded at start-up (modules, config, app) out of the collector's sight, and collect
    the young generation less often. A request allocates a few hundred short-lived objects that reference
    counting frees; with the default threshold (700) the cyclic collector ran every few requests and its
    full passes re-scanned every long-lived object: measurable CPU per request and milliseconds at p99.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _fake_provider(args: argparse.Namespace) -> int:
    if args.sglang:
        return _fake_sglang(args)
    from sidecar.testing.fake_provider import Faults, run

    faults = Faults(error_rate=args.error_rate, error_status=args.error_status, retry_after=args.retry_after,
                    latency=args.latency, ttft=args.ttft, chunk_delay=args.chunk_delay, chunks=args.chunks,
                    hang=args.hang, reset=args.reset, drop_after=args.drop_after, malformed=args.malformed,
                    require_key=args.require_key, seed=args.seed)
    with contextlib.suppress(KeyboardInterrupt):
        _run(run(args.port, faults, args.host, args.name))
    return 0


def _fake_sglang(args: argparse.Namespace) -> int:
    from sidecar.testing.fake_sglang import SGLangSettings, run_sglang

    settings = SGLangSettings(max_running=args.max_running, max_queued=args.max_queued, cache_tokens=args.cache_tokens,
                              prefill_per_token=args.prefill_per_token, decode_per_token=args.decode_per_token,
                              output_tokens=args.output_tokens, startup_delay=args.startup_delay,
                              health_delay=args.health_delay)
    ports = [args.port + i for i in range(max(1, args.replicas))]
    with contextlib.suppress(KeyboardInterrupt):
        _run(run_sglang(ports, settings, args.host, args.name if args.name != "fake" else "sglang"))
    return 0


def _injector(args: argparse.Namespace) -> int:
    from sidecar.injector.server import Files, serve
    from sidecar.injector.template import TemplateError
    from sidecar.telemetry.logs import setup_logging

    setup_logging("info")
    try:
        _run(serve(Files(args.template, args.tls_cert, args.tls_key), args.host, args.port))
    except (OSError, TemplateError) as error:
        print(f"llm-sidecar injector: {error}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sidecar.testing.demo import run_demo

    return _run(run_demo(args.requests, args.concurrency))


def _run(coro):  # type: ignore[no-untyped-def]
    """Run on uvloop when available (it is a dependency; the fallback keeps `python -m` usable anywhere)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)
