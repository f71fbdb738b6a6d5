"""`BlockingCalls`: the RPC's context reaches the worker thread; an expired deadline does not."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from crmcore.adapters.grpc.calls import BlockingCalls, DeadlineExpired, rpc_deadline
from crmcore.application.principal import Principal, acting_as, current_principal

who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


@pytest.fixture
def calls() -> BlockingCalls:
    return BlockingCalls(2, name="test-calls")


class TestContext:
    async def test_context_variables_reach_the_worker_thread(self, calls: BlockingCalls) -> None:
        principal = Principal(token_id="t-1", name="desk", scopes=frozenset({"admin"}))
        who.set("agent-7")
        with acting_as(principal):
            seen = await calls(
                lambda: (who.get(), current_principal.get(), threading.current_thread().name)
            )
        assert seen[:2] == ("agent-7", principal)
        assert seen[2].startswith("test-calls")

    async def test_changes_in_the_worker_do_not_leak_back(self, calls: BlockingCalls) -> None:
        who.set("before")
        await calls(who.set, "inside")
        assert who.get() == "before"


class TestDeadline:
    async def test_an_expired_deadline_does_not_start_the_call(self, calls: BlockingCalls) -> None:
        ran: list[int] = []
        token = rpc_deadline.set(time.monotonic() - 0.001)
        try:
            with pytest.raises(DeadlineExpired):
                await calls(ran.append, 1)
        finally:
            rpc_deadline.reset(token)
        assert ran == []

    async def test_a_deadline_ahead_or_none_lets_the_call_run(self, calls: BlockingCalls) -> None:
        ran: list[int] = []
        await calls(ran.append, 1)
        token = rpc_deadline.set(time.monotonic() + 60)
        try:
            await calls(ran.append, 2)
        finally:
            rpc_deadline.reset(token)
        assert ran == [1, 2]
