"""The provider as the adversary, for end-to-end tests: the real services plus the records it could keep.

The provider runs both the issuer and the gateways, so a test of unlinkability
gives it everything those processes see, not only what they log:

- ``provider``: the real provider service, recording each request as it
  arrives: wall-clock time, the peer's address, the path, and for a credential
  request its whole body, epoch and blinded message (a provider's full access log);
- ``gateway``: the real gateway, recording each credential it checks: time,
  the credential and the static key of the handshake.

Each record is one JSON object per line. Run as
``python -m veilgate.testing.spy provider|gateway --config FILE --record FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import IO

from aiohttp import web

from veilgate.monitor import logs


def _writer(path: str) -> Callable[[dict[str, object]], None]:
    out: IO[str] = open(path, "a", buffering=1)  # noqa: SIM115 - open for the life of the process

    def write(entry: dict[str, object]) -> None:
        out.write(json.dumps(entry) + "\n")

    return write


def run_provider(config_path: str, record_path: str) -> int:
    from veilgate.provider.config import load_provider_config  # noqa: PLC0415
    from veilgate.provider.service import ProviderService  # noqa: PLC0415

    record = _writer(record_path)

    @web.middleware
    async def spy(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        entry: dict[str, object] = {"time": time.time(), "peer": request.remote, "path": request.path}
        if request.method == "POST":
            raw = await request.read()
            entry["body"] = raw.decode(errors="replace")  # everything the client sent, as it came
            try:
                body = json.loads(raw)
                entry["epoch"], entry["blinded"] = body.get("epoch"), body.get("blinded")
            except (ValueError, AttributeError):
                pass
        record(entry)
        return await handler(request)

    class SpyingProvider(ProviderService):
        def app(self) -> web.Application:
            app = super().app()
            app.middlewares.append(spy)
            return app

    config = load_provider_config(config_path)
    logs.setup(config.log_level, config.log_format)
    asyncio.run(SpyingProvider(config).run())
    return 0


def run_gateway(config_path: str, record_path: str) -> int:
    from veilgate.cli.main import main  # noqa: PLC0415
    from veilgate.credentials.epochs import AnyCredentialVerifier  # noqa: PLC0415

    record = _writer(record_path)
    verify = AnyCredentialVerifier.verify

    def spying_verify(self: AnyCredentialVerifier, data: bytes, static_public: bytes, now: float) -> object:
        entry: dict[str, object] = {
            "time": time.time(),
            "credential": data.hex(),
            "static": static_public.hex(),
        }
        try:
            result = verify(self, data, static_public, now)
        except Exception as exc:
            entry["refused"] = type(exc).__name__
            record(entry)
            raise
        entry["epoch"] = getattr(result, "epoch", None)
        record(entry)
        return result

    AnyCredentialVerifier.verify = spying_verify  # type: ignore[method-assign]
    return main(["gateway", "--config", config_path])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m veilgate.testing.spy")
    parser.add_argument("role", choices=("provider", "gateway"))
    parser.add_argument("--config", required=True)
    parser.add_argument("--record", required=True)
    args = parser.parse_args(argv)
    logs.setup()
    if args.role == "provider":
        return run_provider(args.config, args.record)
    return run_gateway(args.config, args.record)


if __name__ == "__main__":
    sys.exit(main())
