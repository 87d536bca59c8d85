"""Secret-vault reads off the event loop, bounded in time.

The vault's interface is synchronous (the CLI and the signature verifier call it as it is)
and answers from memory once a secret was read. A read that is not cached may be a round
trip to a shared vault's database; run on the event loop, a database that stops answering
would stall every request of the bridge, not just the one that needs the secret. So the
bridge's async code asks `SecretVault.needs_io` first and runs a miss here: in a worker
thread, given up after `VAULT_WAIT_S` as the store being out of reach (a 503 with a
reason, like any other shared-backend outage). A thread that is still stuck on a dead
link ends when the vault's TCP timeouts cut it; the vault serializes its one connection
and refuses to queue behind a stuck call for long, so threads do not pile up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from events import StoreUnavailable
from security import SecretVault

VAULT_WAIT_S = 6.0
"""Longer than the PostgreSQL vault's statement timeout (5 s): a slow answer still lands."""
T = TypeVar("T")


async def off_loop(read: Callable[[], T], doing: str) -> T:
    """`read()` in a worker thread; `StoreUnavailable` if it takes over `VAULT_WAIT_S`."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(read), VAULT_WAIT_S)
    except TimeoutError:
        raise StoreUnavailable(
            f"secret vault did not answer within {VAULT_WAIT_S:g} s while {doing}"
        ) from None


async def on_vault(vault: SecretVault, work: Callable[[], T], doing: str) -> T:
    """`work()`, which calls `vault`: off the loop when the vault is remote (`off_loop`), in
    place for a local file (whose SQLite connection belongs to this thread)."""
    return await off_loop(work, doing) if vault.remote else work()
