"""The daemons' event loop: asyncio, with the data-path descriptors served straight from the poll.

asyncio turns every readiness event into a ``Handle`` queued on the loop's ready list, run by
``_run_once`` after it has scanned its timers; for a packet that arrives after an idle gap, that
bookkeeping runs on a CPU whose caches the gap has emptied, and it shows in the round-trip time
(docs/performance.md). A daemon therefore registers its TUN device and UDP sockets as *direct*
readers: ``DispatchSelector.select`` calls their callbacks the moment ``epoll_wait`` returns,
before it hands the remaining events (TCP, the status socket, the provider API) to asyncio as
usual. Timers, tasks and everything else stay asyncio's.

Where the compiled data path is built (veilgate.fastpath), a daemon may register a *compiled*
reader instead: ``epoll_wait`` is then called from C, which runs the compiled TUN or UDP loop for
that descriptor before returning (and keeps serving compiled readers for up to 2 ms while nothing
else is ready), and the descriptor's Python callback runs afterwards for the bookkeeping. A packet
of an established session is then sealed and sent (or opened and written) before any Python runs
after the wake-up, and so is the reply that comes back soon after it.

No maintained library offers this (uvloop and the selectors module only report readiness), so
the selector is written here against the documented ``selectors.BaseSelector`` interface, which
``asyncio.SelectorEventLoop`` accepts as its selector.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import select
import selectors
import weakref
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from veilgate import fastpath

log = logging.getLogger(__name__)

T = TypeVar("T")
Callback = Callable[..., object]

QUIET_GAP = 0.001
"""Seconds without a wake-up after which a data-path reader takes a packet for a lone one: it is
sent at once rather than batched, and no receive is spent finding the socket empty after it."""

REPOLL_ROUNDS = 3
"""After serving direct readers, how many more times select looks for ready ones before returning."""

_EVENT_READ = selectors.EVENT_READ
_EVENT_WRITE = selectors.EVENT_WRITE


class DispatchSelector(selectors.BaseSelector):
    """An epoll selector whose *direct* readers are run inside ``select`` itself."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._keys: dict[int, selectors.SelectorKey] = {}
        self._direct: dict[int, tuple[Callback, tuple[Any, ...]]] = {}
        self._compiled: fastpath.Poller | None = None
        self._compiled_fds: set[int] = set()
        self.on_error: Callable[[BaseException, Callback], None] = _log_error

    # ---------------------------------------------------------------- the direct readers

    def add_direct_reader(self, fd: int, callback: Callback, *args: Any) -> None:
        """Run ``callback(*args)`` from ``select`` whenever ``fd`` is readable.

        As with asyncio's readers, remove it before closing ``fd``: a number the kernel hands out
        again must not find a stale entry here."""
        if fd in self._keys:
            raise KeyError(f"fd {fd} is already registered with the event loop")
        if fd in self._direct:
            self._direct[fd] = (callback, args)
            return
        self._epoll.register(fd, select.EPOLLIN)
        self._direct[fd] = (callback, args)

    def add_compiled_reader(
        self, fd: int, path: fastpath.DataPath, kind: int, sock: int, callback: Callback, *args: Any
    ) -> None:
        """Serve ``fd`` with the compiled loop ``kind`` of ``path`` (for a gateway's UDP socket, the
        one ``path.add_socket`` numbered ``sock``), then run ``callback(*args)``."""
        if self._compiled is None:
            self._compiled = fastpath.Poller()
        self.add_direct_reader(fd, callback, *args)
        if fd in self._compiled_fds:
            self._compiled.remove(fd)
        self._compiled.add(fd, path, kind, sock)
        self._compiled_fds.add(fd)

    def remove_direct_reader(self, fd: int) -> bool:
        if fd in self._compiled_fds and self._compiled is not None:
            self._compiled.remove(fd)
            self._compiled_fds.discard(fd)
        if self._direct.pop(fd, None) is None:
            return False
        with contextlib.suppress(OSError, ValueError):  # closed already: the kernel dropped it
            self._epoll.unregister(fd)
        return True

    # ---------------------------------------------------------------- selectors.BaseSelector

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(_EVENT_READ | _EVENT_WRITE):
            raise ValueError(f"invalid events: {events!r}")
        fd = _fileno(fileobj)
        if fd in self._keys or fd in self._direct:
            raise KeyError(f"{fileobj!r} (fd {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._epoll.register(fd, _epoll_mask(events))
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = _fileno(fileobj)
        key = self._keys.pop(fd, None)
        if key is None:
            raise KeyError(f"{fileobj!r} is not registered")
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = _fileno(fileobj)
        key = self._keys.get(fd)
        if key is None:
            raise KeyError(f"{fileobj!r} is not registered")
        if events != key.events:
            if not events or events & ~(_EVENT_READ | _EVENT_WRITE):
                raise ValueError(f"invalid events: {events!r}")
            self._epoll.modify(fd, _epoll_mask(events))
        key = key._replace(events=events, data=data)
        self._keys[fd] = key
        return key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            wait = -1.0
        elif timeout <= 0:
            wait = 0.0
        else:
            # epoll_wait counts milliseconds: round up, or a timer due in 0.4 ms spins the loop.
            wait = math.ceil(timeout * 1e3) * 1e-3
        ready: list[tuple[selectors.SelectorKey, int]] = []
        most = max(len(self._keys) + len(self._direct), 1)
        poll = self._poll_compiled if self._compiled_fds else self._epoll.poll
        events = poll(wait, most)
        direct = self._direct
        keys = self._keys
        rounds = REPOLL_ROUNDS
        while True:
            served = False
            for fd, mask in events:
                entry = direct.get(fd)
                if entry is not None:
                    served = True
                    try:
                        entry[0](*entry[1])
                    except Exception as exc:  # a daemon reports it and serves on
                        self.on_error(exc, entry[0])
                    continue
                key = keys.get(fd)
                if key is None:
                    continue
                got = 0
                if mask & ~select.EPOLLIN:  # EPOLLOUT, EPOLLERR, EPOLLHUP wake writers, as in selectors
                    got |= _EVENT_WRITE
                if mask & ~select.EPOLLOUT:
                    got |= _EVENT_READ
                if got & key.events:
                    ready.append((key, got & key.events))
            # What the data path just did often made more of it ready (a packet written to the
            # TUN is answered on it at once; a reply arrives while a send was under way): look
            # again before going back through asyncio's loop, a few times at most, and only
            # while asyncio has nothing waiting.
            if not served or ready or rounds == 0:
                return ready
            rounds -= 1
            events = poll(0, most)
            if not events:
                return ready

    def _poll_compiled(self, wait: float, most: int) -> list[tuple[int, int]]:
        """``epoll.poll`` through the compiled poller, which serves the compiled readers first."""
        assert self._compiled is not None
        return self._compiled.poll(self._epoll.fileno(), -1 if wait < 0 else round(wait * 1e3), most)

    def close(self) -> None:
        self._epoll.close()
        self._keys.clear()
        self._direct.clear()
        self._compiled = None
        self._compiled_fds.clear()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return _KeyMap(self._keys)


class _KeyMap(Mapping[Any, selectors.SelectorKey]):
    __slots__ = ("_keys",)

    def __init__(self, keys: dict[int, selectors.SelectorKey]) -> None:
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        try:
            return self._keys[_fileno(fileobj)]
        except ValueError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def __iter__(self) -> Any:
        return iter(self._keys)


def _fileno(fileobj: Any) -> int:
    fd = fileobj if isinstance(fileobj, int) else int(fileobj.fileno())
    if fd < 0:
        raise ValueError(f"invalid file descriptor: {fd}")
    return fd


def _epoll_mask(events: int) -> int:
    mask = 0
    if events & _EVENT_READ:
        mask |= select.EPOLLIN
    if events & _EVENT_WRITE:
        mask |= select.EPOLLOUT
    return mask


def _log_error(exc: BaseException, callback: Callback) -> None:
    log.error("unexpected error in %s", getattr(callback, "__qualname__", callback), exc_info=exc)


# -------------------------------------------------------------------- loops and readers

_selectors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DispatchSelector] = (
    weakref.WeakKeyDictionary()
)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """An asyncio loop on a DispatchSelector; errors in direct readers go to its exception handler."""
    selector = DispatchSelector()
    loop = asyncio.SelectorEventLoop(selector)

    def report(exc: BaseException, callback: Callback) -> None:
        loop.call_exception_handler(
            {
                "message": f"Exception in direct reader {getattr(callback, '__qualname__', callback)}",
                "exception": exc,
            }
        )

    selector.on_error = report
    _selectors[loop] = selector
    return loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a loop from ``new_event_loop``."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def add_data_reader(loop: asyncio.AbstractEventLoop, fd: int, callback: Callback, *args: Any) -> None:
    """Watch a data-path descriptor: directly on a loop from ``new_event_loop``, else via add_reader."""
    selector = _selectors.get(loop)
    if selector is not None:
        selector.add_direct_reader(fd, callback, *args)
    else:
        loop.add_reader(fd, callback, *args)


def add_compiled_reader(
    loop: asyncio.AbstractEventLoop,
    fd: int,
    path: fastpath.DataPath,
    kind: int,
    sock: int,
    callback: Callback,
    *args: Any,
) -> bool:
    """Serve a data-path descriptor with a compiled loop, then ``callback``; False where the loop
    cannot (not from ``new_event_loop``): use add_data_reader. Whether to run the compiled data
    path at all is the daemon's choice (``fastpath.wanted``)."""
    selector = _selectors.get(loop)
    if selector is None:
        return False
    selector.add_compiled_reader(fd, path, kind, sock, callback, *args)
    return True


def remove_data_reader(loop: asyncio.AbstractEventLoop, fd: int) -> bool:
    selector = _selectors.get(loop)
    if selector is not None:
        return selector.remove_direct_reader(fd)
    return loop.remove_reader(fd)
