"""The shared HTTP surface: health, readiness, metrics, token scopes and JSON logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from trading_system.common.auth import Scope, TokenSet
from trading_system.common.http import Readiness, ServiceHttp, require
from trading_system.common.logging import JsonFormatter, request_id, transaction_id

pytestmark = pytest.mark.unit

TOKENS = TokenSet(api=("api-token",), admin=("admin-token",))


def test_token_scopes_are_separate() -> None:
    assert TOKENS.allows("Bearer api-token", Scope.API)
    assert not TOKENS.allows("Bearer api-token", Scope.ADMIN)
    assert TOKENS.allows("Bearer admin-token", Scope.ADMIN)
    assert TOKENS.allows("bearer admin-token", Scope.API)  # admin may do what the API may
    for bad in (None, "", "Bearer", "Basic api-token", "Bearer wrong"):
        assert not TOKENS.allows(bad, Scope.API)


def test_tokens_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "admin"
    secret.write_text("from-file\n")
    monkeypatch.setenv("TRADING_SYSTEM_API_TOKENS", "a, b")
    monkeypatch.setenv("TRADING_SYSTEM_ADMIN_TOKENS_FILE", str(secret))
    tokens = TokenSet.from_env()
    assert tokens.api == ("a", "b")
    assert tokens.admin == ("from-file",)


def test_the_operators_singular_token_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # The operator's pods get TRADING_SYSTEM_ADMIN_TOKEN / _API_TOKEN from their Secret.
    for var in ("API_TOKENS", "ADMIN_TOKENS", "API_TOKENS_FILE", "ADMIN_TOKENS_FILE"):
        monkeypatch.delenv(f"TRADING_SYSTEM_{var}", raising=False)
    monkeypatch.setenv("TRADING_SYSTEM_ADMIN_TOKEN", "op-admin")
    monkeypatch.setenv("TRADING_SYSTEM_API_TOKEN", "op-api")
    monkeypatch.setenv("TRADING_SYSTEM_API_TOKENS", "op-api,next-api")
    tokens = TokenSet.from_env()
    assert tokens.admin == ("op-admin",) and tokens.api == ("op-api", "next-api")
    assert tokens.allows("Bearer op-admin", Scope.ADMIN) and not tokens.allows("Bearer op-api", Scope.ADMIN)


async def test_health_ready_metrics_and_admin_auth_over_real_http() -> None:
    registry = CollectorRegistry()
    Counter("demo_things", "things", registry=registry).inc(3)
    state = {"ready": False}

    async def readiness() -> Readiness:
        return Readiness(state["ready"], {"role": "standby"})

    http = ServiceHttp(readiness, TOKENS, registry=registry)

    @require(Scope.ADMIN)
    async def promote(request: web.Request) -> web.Response:
        return web.json_response({"promoted": True})

    http.app.router.add_post("/promote", promote)
    port = await http.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["alive"] is True
            async with session.get(f"{base}/readyz") as resp:
                assert resp.status == 503 and (await resp.json()) == {"ready": False, "role": "standby"}
            state["ready"] = True
            async with session.get(f"{base}/readyz") as resp:
                assert resp.status == 200
            async with session.get(f"{base}/metrics") as resp:
                assert "demo_things_total 3.0" in await resp.text()
            async with session.post(f"{base}/promote") as resp:
                assert resp.status == 401 and "admin" in (await resp.json())["error"]
            async with session.post(f"{base}/promote", headers={"Authorization": "Bearer api-token"}) as resp:
                assert resp.status == 403
            async with session.post(
                f"{base}/promote", headers={"Authorization": "Bearer admin-token"}
            ) as resp:
                assert resp.status == 200 and (await resp.json()) == {"promoted": True}
            async with session.get(f"{base}/nope") as resp:
                assert resp.status == 404 and "error" in await resp.json()
    finally:
        await http.stop()


def test_json_log_lines_carry_request_and_transaction_ids() -> None:
    formatter = JsonFormatter("matching")
    record = logging.makeLogRecord(
        {"msg": "hello %s", "args": ("world",), "levelname": "INFO", "symbol": "BTC"}
    )
    token_r, token_t = request_id.set("req-1"), transaction_id.set("tx-9")
    try:
        line = json.loads(formatter.format(record))
    finally:
        request_id.reset(token_r)
        transaction_id.reset(token_t)
    assert line["msg"] == "hello world"
    assert (line["service"], line["request_id"], line["transaction_id"]) == ("matching", "req-1", "tx-9")
    assert line["symbol"] == "BTC"
