"""Keys applied one at a time, each to the widget that has the focus when its turn comes.

Textual forwards every key to the focused widget as the app reads it, and a key that changes the
focus (Tab, a screen key, Enter in a find field) does so only once it has bubbled back to the
app. Keys that arrive together (one SSH packet, a paste into the terminal) were therefore all
forwarded to the widget focused before the first of them: text typed after three Tabs landed in
the field the Tabs left. `KeyOrder` holds each key until the one before it has travelled its
whole way (widget, its parents, screen, app) and what it started there has drained, and until
the screen it opened is mounted; a key held longer than `HOLD_S` is let go regardless, so a lost
callback can never stall the keyboard."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from textual import events
from textual.message_pump import MessagePump

HOLD_S = 1.0  # the longest one key waits for the one before it
DRAIN_ROUNDS = 5  # passes over the focus chain for the messages a key started


class KeyOrder:
    """The app's queue of keys that arrived while another was still being handled.

    `send` is the app's own forwarding (`App.on_event` for a fresh key); `arrived` is called with
    every fresh key and returns at once, holding it when another key is in flight."""

    def __init__(self, app: Any, send: Callable[[events.Key], Awaitable[None]]) -> None:
        self.app = app
        self.send = send
        self.held: deque[events.Key] = deque()
        self.in_flight: events.Key | None = None
        self.since = 0.0

    async def arrived(self, key: events.Key) -> None:
        if self.in_flight is not None and time.monotonic() - self.since > HOLD_S:
            self.in_flight = None
        if self.in_flight is not None or self.held:
            self.held.append(key)
            if self.in_flight is None:
                await self._next()
            return
        await self._start(key)

    def closing(self) -> bool:
        return bool(getattr(self.app, "_exit", False)) or not self.app.is_running

    def screen_ready(self) -> bool:
        """Whether the current screen is there and mounted (between a mode switch and its
        screen's mount, the app has no screen to give a key to)."""
        try:
            return bool(self.app.screen.is_mounted)
        except Exception:  # ScreenStackError, UnknownModeError: a mode being set up
            return False

    async def _start(self, key: events.Key) -> None:
        if self.closing():
            self.held.clear()
            return
        if not self.screen_ready():  # wait for the screen, then start with this key
            self.held.appendleft(key)
            self.app.set_timer(0.02, self._next)
            return
        self.in_flight, self.since = key, time.monotonic()
        target = self.app.focused or self.app.screen
        await self.send(key)
        if not key.is_forwarded:  # a priority binding took it at the app: done already
            self._done(key, target, 0)
            return
        self.app.set_timer(HOLD_S, lambda: self._expire(key))
        target.call_later(self._follow, key, target, target, 0)

    def _follow(self, key: events.Key, node: MessagePump, target: MessagePump, rounds: int) -> None:
        """Runs on `node` after `key` was handled there: on to its parent, which the key bubbled
        to (or, once the key stopped, the drain pass walks on anyway)."""
        if key is not self.in_flight:
            return
        parent = node._parent
        if node is self.app or parent is None or (key._stop_propagation and rounds == 0):
            self._done(key, target, rounds)
            return
        if not parent.call_later(self._follow, key, parent, target, rounds):
            self._done(key, target, rounds)

    def _done(self, key: events.Key, target: MessagePump, rounds: int) -> None:
        """The key has been handled: wait for what it started, then let the next one go."""
        if key is not self.in_flight:
            return
        # The app's queue too: a focus change (`Widget.focus`) is a callback posted there.
        busy = [node for node in self._chain(target) if node._message_queue.qsize() > 0]
        if (
            busy
            and rounds < DRAIN_ROUNDS
            and target.call_later(self._follow, key, target, target, rounds + 1)
        ):
            return
        waited = time.monotonic() - self.since
        if not self.screen_ready() and self.held and not self.closing() and waited < HOLD_S:
            self.app.set_timer(0.02, lambda: self._done(key, target, DRAIN_ROUNDS))
            return
        self.in_flight = None
        if self.held:
            self.app.call_later(self._next)

    @staticmethod
    def _chain(node: MessagePump) -> list[MessagePump]:
        chain = []
        current: MessagePump | None = node
        while current is not None:
            chain.append(current)
            current = current._parent
        return chain

    def _expire(self, key: events.Key) -> None:
        if key is self.in_flight:
            self.in_flight = None
            if self.held:
                self.app.call_later(self._next)

    async def _next(self) -> None:
        if self.closing():
            self.held.clear()
        elif self.in_flight is None and self.held:
            await self._start(self.held.popleft())
