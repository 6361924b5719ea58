"""The workbench TUI: one key per screen (Textual modes), help, command palette, themes."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, cast

from textual import events
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widget import AwaitMount, Widget
from textual.widgets import Footer

from screens.keyorder import KeyOrder
from screens.source import Source
from workbench.paths import Home

# One line per screen: its mode name, key, title and where its class lives. A screen's module
# is imported the first time its key is pressed: the editor, plots and tables of the others
# stay out of the TUI's start-up.
SCREENS: list[tuple[str, str, str, str]] = [
    ("dashboard", "d", "Dashboard", "screens.dashboard:DashboardScreen"),
    ("queue", "j", "Queue", "screens.queue:QueueScreen"),
    ("data", "s", "Data", "screens.data:DataScreen"),
    ("runs", "r", "Runs", "screens.runs:RunsScreen"),
    ("models", "m", "Models", "screens.models:ModelsScreen"),
]


def _lazy(location: str) -> Callable[[], Screen[Any]]:
    def make() -> Screen[Any]:
        module, _, name = location.partition(":")
        screen: Screen[Any] = getattr(importlib.import_module(module), name)()
        return screen

    return make


class HelpScreen(ModalScreen[None]):
    """Every key of the app and of the screen underneath."""

    BINDINGS = [
        Binding(
            "escape,question_mark,q", "dismiss", "Close", id="help.close", tooltip="Close the help"
        )
    ]

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        from textual.widgets import Markdown  # markdown-it costs ~60 ms; only help needs it

        with VerticalScroll(id="help"):
            yield Markdown(self.text)
        yield Footer()


class WorkbenchApp(App[None]):
    """Dashboard, Queue, Data, Runs and Models over one workbench home."""

    TITLE = "gpu-workbench"
    CSS_PATH = "app.tcss"
    MODES: ClassVar[dict[str, Any]] = {}
    BINDINGS: ClassVar[list[Any]] = [
        # The title bar shows these, so the footer keeps its room for the screen's own keys.
        Binding(
            "question_mark", "help", "Help", id="app.help", tooltip="Show every key", show=False
        ),
        Binding(
            "T",
            "toggle_theme",
            "Theme",
            id="app.theme",
            tooltip="Switch between dark and light",
            show=False,
        ),
        Binding(
            "q",
            "quit",
            "Quit",
            id="app.quit",
            tooltip="Leave the TUI (jobs keep running)",
            show=False,
        ),
        *(
            Binding(
                key,
                f"switch_mode('{mode}')",
                title,
                id=f"app.{mode}",
                tooltip=f"Show {title}",
                show=False,
            )
            for mode, key, title, _ in SCREENS
        ),
    ]

    def __init__(
        self, source: Source | None = None, frozen: bool = False, start_daemon: bool = False
    ):
        super().__init__()
        self.source = source or Source(Home.current().ensure())
        self.frozen = frozen  # snapshot tests: read once, never poll again
        self.start_daemon = start_daemon  # `workbench`: start one after the first frame
        self.key_order = KeyOrder(self, lambda key: App.on_event(self, key))

    async def on_event(self, event: events.Event) -> None:
        """Fresh keys go through the key order (`screens.keyorder`): one at a time, each to the
        widget focused when its turn comes, however many arrived together."""
        if isinstance(event, events.Key) and (
            self._exit or (event.is_forwarded and not self.key_order.screen_ready())
        ):
            return  # quitting, or its screen went: a key has nowhere to go
        if isinstance(event, events.Key) and not event.is_forwarded:
            await self.key_order.arrived(event)
            return
        await super().on_event(event)

    def switch_mode(self, mode: str) -> AwaitMount:
        """Textual's `App.switch_mode`, except once the app is shutting down, when it does
        nothing. Textual's shutdown (`App._close_all`) walks the mode stacks, awaiting each
        screen's close, while the app's queue still runs: a screen key's switch landing then
        added a stack under that walk ("dictionary changed size during iteration", seen in
        the key-burst tests) or, later, found the modes already cleared (UnknownModeError)."""
        if self._exit or not self.is_running:
            return AwaitMount(cast(Widget, self), [])  # nothing to wait for
        return super().switch_mode(mode)

    def on_mount(self) -> None:
        self.theme = "textual-dark"
        self.switch_mode("dashboard")
        if self.start_daemon:
            # After the first frame, off the event loop: starting a daemon takes a second or
            # more, and the Dashboard samples by itself meanwhile.
            self.call_after_refresh(self._start_daemon)
        self.set_timer(1.0, self._warm_up)

    def _start_daemon(self) -> None:
        from workbench.daemon.client import ensure_daemon

        home = self.source.home
        self.run_worker(
            lambda: ensure_daemon(home),
            thread=True,
            exit_on_error=False,
            group="daemon",
            description="start the daemon",
        )

    def _warm_up(self) -> None:
        """Import the Queue's module in a thread once the first screen is up, so its key opens
        it without the import (the others load on first use: their editor and plots are big)."""
        self.run_worker(
            lambda: importlib.import_module("screens.queue"),
            thread=True,
            exit_on_error=False,
            group="warm-up",
        )

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    def key_names(self, binding: Binding) -> str:
        """Every key of a binding as the footer writes it: `plus,equals_sign` reads `+ / =`."""
        return " / ".join(
            self.get_key_display(Binding(key.strip(), binding.action))
            for key in binding.key.split(",")
        )

    def help_text(self) -> str:
        """The current screen's keys first, then the keys that work everywhere."""
        lines = ["# gpu-workbench keys"]
        screen = self.screen
        bindings = [b for b in getattr(screen, "BINDINGS", []) if isinstance(b, Binding)]
        if bindings:
            lines += ["", f"## {type(screen).__name__.removesuffix('Screen')}", ""]
            lines += [f"- `{self.key_names(b)}` {b.description}: {b.tooltip}" for b in bindings]
        lines += ["", "## Everywhere", ""]
        lines += [f"- `{key}` {title}" for _, key, title, _ in SCREENS]
        lines += [
            "- `?` this help",
            "- `T` dark/light theme",
            "- `ctrl+p` command palette",
            "- `q` quit (jobs keep running)",
            "- `tab` / `shift+tab` next / previous pane; `esc` leaves a text field or editor",
            "- letter keys act only when no text field or editor has the focus",
        ]
        return "\n".join(lines)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.help_text()))

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """The palette holds the same actions as the keys: screens, then the current screen's."""
        yield from super().get_system_commands(screen)
        for mode, key, title, _ in SCREENS:
            yield SystemCommand(
                f"Go to {title}",
                f"Switch to the {title} screen (key {key})",
                lambda m=mode: self.switch_mode(m),
            )
        yield SystemCommand("Toggle theme", "Dark or light (key T)", self.action_toggle_theme)
        for binding in getattr(screen, "BINDINGS", []):
            if isinstance(binding, Binding) and binding.description:
                yield SystemCommand(
                    f"{type(screen).__name__.removesuffix('Screen')}: {binding.description}",
                    f"{binding.tooltip} (key {self.key_names(binding)})",
                    lambda a=binding.action, s=screen: self.call_later(s.run_action, a),
                )


for _mode, _key, _title, _location in SCREENS:
    WorkbenchApp.MODES[_mode] = _lazy(_location)


def run_app() -> int:
    """`workbench` with no command: the TUI, which starts the daemon if needed once its first
    frame is up. In team mode (a system daemon installed, WORKBENCH_HOME unset:
    `workbench.system.system_socket`) its Queue and Dashboard show the system daemon's queue
    and telemetry (`screens.teamsource`), and no per-user daemon is started."""
    from workbench.system import system_socket

    home = Home.current().ensure()
    socket_path = system_socket()
    if socket_path is not None:
        from screens.teamsource import TeamSource

        WorkbenchApp(TeamSource(home, socket_path)).run()
        return 0
    WorkbenchApp(Source(home), start_daemon=True).run()
    return 0
