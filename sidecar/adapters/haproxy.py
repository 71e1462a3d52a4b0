"""The local HAProxy: read what it runs, write and validate configs, start, reload, and
change servers through its runtime API.

Two ways to run it (no policy here; the reconcile loop decides what to do):

* **managed** (default): this process starts HAProxy in master-worker mode in the
  foreground (`haproxy -W -db -S <master socket> -f <config> -p <pid file>`), reloads it
  seamlessly through the master socket (`reload`, then `show proc` until the master's reload
  counter moves), and sends runtime commands to the current worker through the master
  (`@1 <command>`), so the template's admin socket path does not matter. A master that is
  already answering on the socket (left serving by an earlier run) is adopted. When the
  HAProxy it started exits, `on_exit` is called so the loop can start it again.
* **external** (Go's way, sidecar-behaviour.md §5.1): `reload_command` and
  `verify_command` run through `/bin/bash -c`; runtime commands go to the admin socket.

Every config is written to a temporary file beside the real one, validated, and renamed
into place only when valid; before a managed reload the master's own load is the check, and
a config it refuses is replaced by the old file at once. Errors are the
`sidecar.reconcile.errors` types, with HAProxy's own words in the message. HAProxy's answers
(`show proc`, `show servers state`, `show stat`) are parsed by the pure
`sidecar.reconcile.haproxy_answers`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shlex
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from sidecar.reconcile.errors import ConfigRejected, ProcessFailed, RuntimeRefused, ServerBusy
from sidecar.reconcile.haproxy_answers import (
    ProcInfo,
    ServerStat,
    parse_server_stats,
    parse_servers_state,
    parse_show_proc,
)
from sidecar.reconcile.plans import Actual

log = logging.getLogger("sidecar.haproxy")

CLI_TIMEOUT: Final = 5.0
START_TIMEOUT: Final = 10.0
RELOAD_TIMEOUT: Final = 15.0
VALIDATE_TIMEOUT: Final = 30.0
DRAIN_TIMEOUT: Final = 0.2  # then ServerBusy: it stays in maintenance and the loop retries
# How long `close(stop=True)` waits for HAProxy to finish its requests in flight; after that
# it finishes them on its own, bounded by the config's `hard-stop-after`.
STOP_GRACE: Final = 0.5
# A soft stop sent while the master re-executes itself for a reload is lost (measured: every
# SIGUSR1 within ~30 ms of `reload`), and a master that re-executes after it said it exits
# (a `reload` that reached it just after the stop) has forgotten the stop: it is sent again
# at this interval until HAProxy says it is exiting and has not re-executed since.
STOP_REPEAT: Final = 0.05
# While the master re-executes, a stop waits for the new master (at most this long from the
# stop's start) rather than leave it serving.
STOP_DURING_RELOAD: Final = 5.0
_EXITING: Final = "Exiting Master process"
_REEXECUTING: Final = "Reloading HAProxy"
_LOADED: Final = ("Loading success", "Loading failure")

# HAProxy processes left to finish their requests on their own. Kept for the life of this
# process: asyncio closes the transport of a child it collects, which kills a running child.
_LEFT_RUNNING: list[asyncio.subprocess.Process] = []
_LAST_WORDS: Final = 40


@dataclass(frozen=True, slots=True)
class HaproxyOptions:
    """Where HAProxy's files are and how it is run. The paths have no default here: the
    configuration's `[haproxy]` section holds them (Go's), and `parts.haproxy_options`
    passes them in."""

    config_file: Path
    pid_file: Path
    master_socket: Path
    admin_socket: Path
    binary: str = "haproxy"
    mode: Literal["managed", "external"] = "managed"
    reload_command: str = ""  # external mode; empty = Go's default
    verify_command: str = ""  # external mode; empty = `<binary> -c -f <config>`
    drain_timeout: float = DRAIN_TIMEOUT


async def cli(path: Path, command: str, *, limit: float = CLI_TIMEOUT) -> str:
    """Return HAProxy's answer to one command on a CLI socket (admin or master).

    Raises OSError (or TimeoutError) when the socket does not answer.
    """
    async with asyncio.timeout(limit):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            return (await reader.read()).decode(errors="replace")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _run(argv: list[str], *, limit: float) -> tuple[int, str]:
    """Return the exit code and the combined output of a command."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(limit):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return -1, f"timed out after {limit:g}s"
    return proc.returncode or 0, out.decode(errors="replace").strip()


@dataclass
class Counters:
    """What this adapter has done since it was made."""

    starts: int = 0
    restarts: int = 0  # starts after HAProxy exited on its own
    reloads: int = 0
    runtime_ops: int = 0
    exits: int = 0


@dataclass
class _Child:
    proc: asyncio.subprocess.Process
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stopping: bool = False
    exiting: bool = False  # the master said so, and has not re-executed since
    reexecuting: bool = False  # between the master's "Reloading" and its "Loading ..."
    said: asyncio.Event = field(default_factory=asyncio.Event)  # set on each of those lines

    def hear(self, line: str) -> None:
        """Follow what the master says about stopping and re-executing."""
        if _EXITING in line:
            self.exiting = True
        elif _REEXECUTING in line:
            self.exiting, self.reexecuting = False, True
        elif any(word in line for word in _LOADED):
            self.reexecuting = False
        else:
            return
        self.said.set()


async def _said_or_after(child: _Child | None, seconds: float) -> None:
    """Return when `child`'s master says something of note, or after `seconds`."""
    if child is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await child.said.wait()
    child.said.clear()


class Haproxy:
    """This host's HAProxy, managed or external (see the module docstring)."""

    def __init__(
        self, options: HaproxyOptions, *, on_exit: Callable[[int], None] | None = None
    ) -> None:
        self.options = options
        self.counters = Counters()
        self.on_exit = on_exit
        self._child: _Child | None = None
        self._last_words: collections.deque[str] = collections.deque(maxlen=_LAST_WORDS)
        self._exited = False
        self._written: str | None = None  # the text this adapter last put in the config file
        # A config written for a reload to check, and the old file kept aside meanwhile.
        self._unchecked: tuple[str, Path] | None = None

    # ------------------------------------------------------------------ reading

    def read_config(self) -> str | None:
        """Return the config file's text (bytes that are not UTF-8 replaced by U+FFFD), or
        None when there is none.

        When the file still holds what this adapter last wrote, that very string is returned:
        one copy of a big config, not two equal ones, and the planner's caches hit.
        """
        try:
            raw = self.options.config_file.read_bytes()
        except FileNotFoundError:
            return None
        # Bytes that are not text (a file damaged by hand) are drift like any other edit:
        # replaced, they differ from what is wanted, and the file is written again.
        text = raw.decode(errors="replace")
        return self._written if text == self._written else text

    async def runtime(self, command: str) -> str:
        """Return the running worker's answer to a runtime API command.

        Raises RuntimeRefused when nothing answers.
        """
        if self.options.mode == "managed":
            path, line = self.options.master_socket, f"@1 {command}"
        else:
            path, line = self.options.admin_socket, command
        try:
            return await cli(path, line)
        except (OSError, TimeoutError) as exc:
            raise RuntimeRefused(f"{command!r}: no answer on {path}: {exc}") from None

    async def server_stats(self) -> tuple[ServerStat, ...]:
        """Return every server's state and sessions as HAProxy reports them now.

        Raises RuntimeRefused when nothing answers, ValueError on an answer that is not stats.
        """
        return parse_server_stats(await self.runtime("show stat -1 4 -1"))

    async def proc_info(self) -> ProcInfo | None:
        """Return the master's `show proc` (managed mode), or None when it does not answer."""
        try:
            return parse_show_proc(await cli(self.options.master_socket, "show proc"))
        except (OSError, TimeoutError, ValueError):
            return None

    async def running(self) -> bool:
        """Return whether an HAProxy answers: a master with a worker (managed), the admin
        socket (external)."""
        if self.options.mode == "managed":
            info = await self.proc_info()
            return info is not None and len(info.workers) > 0
        try:
            await cli(self.options.admin_socket, "show info")
        except (OSError, TimeoutError):
            return False
        return True

    async def read_actual(self) -> Actual:
        """Return what runs now: the config on disk, whether HAProxy answers, its servers
        and those in maintenance (bound addresses are the ipbind adapter's; left empty).

        Reads only; never writes anything.
        """
        config = self.read_config()
        if not await self.running():
            return Actual(config=config, running=False)
        try:
            answer = await self.runtime("show servers state")
        except RuntimeRefused:
            return Actual(config=config, running=False)
        servers, disabled = parse_servers_state(answer, config=config)
        return Actual(config=config, running=True, servers=servers, disabled=disabled)

    # ------------------------------------------------------------------ the config file

    def _verify_argv(self, path: Path) -> list[str]:
        command = self.options.verify_command
        if self.options.mode == "external" and command:
            real = str(self.options.config_file)
            text = command.replace("{config}", str(path)).replace(real, str(path))
            return ["/bin/bash", "-c", text]
        return [self.options.binary, "-c", "-f", str(path)]

    async def validate(self, config: str) -> None:
        """Validate a config without touching the real file; raise ConfigRejected with
        HAProxy's message when it is not valid."""
        candidate = await asyncio.to_thread(self._write_candidate, config)
        try:
            await self._check(candidate)
        finally:
            candidate.unlink(missing_ok=True)

    async def _check(self, candidate: Path) -> None:
        code, output = await _run(self._verify_argv(candidate), limit=VALIDATE_TIMEOUT)
        if code != 0:
            lines = [ln for ln in output.splitlines() if "[ALERT]" in ln] or output.splitlines()
            message = "\n".join(lines[-10:]).replace(str(candidate), "<new config>")
            raise ConfigRejected(f"HAProxy refused the new config: {message}")

    def _write_candidate(self, config: str) -> Path:
        target = self.options.config_file
        target.parent.mkdir(parents=True, exist_ok=True)
        candidate = target.with_name(f".{target.name}.{os.getpid()}.new")
        with candidate.open("w") as out:
            out.write(config)
            out.flush()
            os.fsync(out.fileno())
        return candidate

    async def write(self, config: str, *, reload_follows: bool = False) -> None:
        """Write a config: a temporary file beside the real one, validated, then renamed
        into place. On ConfigRejected the real file is as it was.

        With `reload_follows` (managed mode, a file to replace), the check is left to the
        reload: the master checks the config as it loads it, and a separate check is a
        whole HAProxy start more (~20 ms of CPU, the most of a new frontend's delay on a
        busy host). The file is replaced at once, the old one kept aside; should the load
        fail, `reload` checks the config and, when HAProxy refuses it, puts the old file
        back and raises ConfigRejected — the outcome of a check before the write."""
        self._forget_unchecked()
        target = self.options.config_file
        candidate = await asyncio.to_thread(self._write_candidate, config)
        try:
            if reload_follows and self.options.mode == "managed" and target.exists():
                kept = target.with_name(f".{target.name}.{os.getpid()}.old")
                kept.unlink(missing_ok=True)
                os.link(target, kept)
                os.replace(candidate, target)
                self._unchecked = (config, kept)
            else:
                await self._check(candidate)
                os.replace(candidate, target)
            self._written = config
        finally:
            candidate.unlink(missing_ok=True)
        log.debug("wrote %s (%d bytes)", target, len(config))

    def _forget_unchecked(self) -> None:
        """Drop the old file kept aside for an unchecked write: it is no longer needed."""
        if self._unchecked is not None:
            self._unchecked[1].unlink(missing_ok=True)
            self._unchecked = None

    async def _put_back_if_refused(self) -> None:
        """After a failed load of an unchecked write: check that config; when HAProxy refuses
        it, put the old file back and raise ConfigRejected (else return: the load failed
        for another reason, and the file stays for the next reload)."""
        if self._unchecked is None:
            return
        config, kept = self._unchecked
        candidate = await asyncio.to_thread(self._write_candidate, config)
        try:
            await self._check(candidate)
        except ConfigRejected:
            os.replace(kept, self.options.config_file)
            self._unchecked, self._written = None, None
            raise
        finally:
            candidate.unlink(missing_ok=True)
        self._forget_unchecked()

    # ------------------------------------------------------------------ the process

    async def start(self) -> None:
        """Start HAProxy from the config on disk (or adopt a master already answering).

        Raises ProcessFailed with HAProxy's last words when it does not come up.
        """
        if self.options.mode == "external":
            await self._external_reload("start")
            self.counters.starts += 1
            return
        info = await self.proc_info()
        if info is not None and info.workers:
            log.info("adopting the HAProxy master already running (pid %d)", info.master)
            return
        await self._stop_child(kill=True)  # it exited, or it does not answer: not serving
        self.options.master_socket.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            self.options.binary,
            "-W",
            "-db",
            "-S",
            f"{self.options.master_socket},mode,600",
            "-f",
            str(self.options.config_file),
            "-p",
            str(self.options.pid_file),
        ]
        self._last_words.clear()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        child = _Child(proc)
        child.tasks.append(asyncio.create_task(self._forward(child)))
        self._child = child
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while asyncio.get_running_loop().time() < deadline:
            if proc.returncode is not None:
                break
            info = await self.proc_info()
            if info is not None and info.workers:
                was_restart = self._exited
                self.counters.starts += 1
                self.counters.restarts += was_restart
                self._exited = False
                child.tasks.append(asyncio.create_task(self._watch(child)))
                log.info(
                    "HAProxy %s: master %d, worker %d",
                    "restarted" if was_restart else "started",
                    info.master,
                    info.workers[0].pid,
                )
                return
            await asyncio.sleep(0.05)
        await self._stop_child(kill=True)  # it serves nothing: no request to cut
        raise ProcessFailed(f"HAProxy did not start: {self._words()}")

    def _words(self) -> str:
        return " | ".join(self._last_words) or "(it said nothing)"

    async def _forward(self, child: _Child) -> None:
        assert child.proc.stdout is not None
        async for raw in child.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            child.hear(line)
            self._last_words.append(line)
            # Reloads make HAProxy say a lot at WARNING ("Proxy x stopped"); only its
            # alerts are worth an operator's attention by default.
            log.log(logging.WARNING if "[ALERT]" in line else logging.DEBUG, "haproxy: %s", line)

    async def _watch(self, child: _Child) -> None:
        code = await child.proc.wait()
        if child.stopping:
            return
        self.counters.exits += 1
        self._exited = True
        log.warning(
            "HAProxy (master %d) exited with code %s; last words: %s",
            child.proc.pid,
            code,
            self._words(),
        )
        if self.on_exit is not None:
            self.on_exit(code)

    async def reload(self) -> None:
        """Reload seamlessly: through the master (managed) or `reload_command` (external).

        Raises ProcessFailed when the new config did not load (the old workers keep serving),
        ConfigRejected when it did not load because HAProxy refuses it (a write that left the
        check to this reload: the old file is back in place).
        """
        if self.options.mode == "external":
            await self._external_reload("reload")
            self.counters.reloads += 1
            return
        try:
            await self._reload_master()
        except ProcessFailed:
            await self._put_back_if_refused()  # raises ConfigRejected when it was the config
            raise
        finally:
            self._forget_unchecked()

    async def _reload_master(self) -> None:
        before = await self.proc_info()
        if before is None:
            raise ProcessFailed("cannot reload: the HAProxy master does not answer")
        self._last_words.clear()
        child = self._child  # None for a master adopted at start: its words are not heard
        if child is not None:
            child.said.clear()
        with contextlib.suppress(OSError, TimeoutError):
            await cli(self.options.master_socket, "reload")
        deadline = asyncio.get_running_loop().time() + RELOAD_TIMEOUT
        while asyncio.get_running_loop().time() < deadline:
            # The master's "Loading success" (or failure) ends the wait at once; `show proc`
            # every 50 ms is the fallback for a master this adapter does not hear.
            await _said_or_after(child, 0.05)
            info = await self.proc_info()
            if info is None or info.reloads <= before.reloads:
                continue
            if info.failed > 0:
                raise ProcessFailed(f"HAProxy did not load the new config: {self._words()}")
            fresh = [w for w in info.workers if w.reloads == 0]
            if fresh:
                self.counters.reloads += 1
                log.info("HAProxy reloaded: worker %d", fresh[0].pid)
                return
        raise ProcessFailed(f"HAProxy did not finish reloading: {self._words()}")

    def _default_reload_command(self) -> str:
        cfg, pid = (
            shlex.quote(str(self.options.config_file)),
            shlex.quote(str(self.options.pid_file)),
        )
        binary = shlex.quote(self.options.binary)
        return f'{binary} -f {cfg} -p {pid} `[[ -f {pid} ]] && echo "-sf $(cat {pid})"`'

    async def _external_reload(self, what: str) -> None:
        command = self.options.reload_command or self._default_reload_command()
        code, output = await _run(["/bin/bash", "-c", command], limit=RELOAD_TIMEOUT)
        if code != 0:
            raise ProcessFailed(f"{what}: error running {command!r}: exit status {code}\n{output}")

    async def _stop_child(self, *, kill: bool, grace: float = STOP_GRACE) -> bool:
        """Soft-stop the HAProxy this adapter started and wait up to `grace` seconds for it
        to exit (a reload in flight adds the new master's start, up to `STOP_DURING_RELOAD`
        in all). With `kill` (a master that never came up or already died: it serves
        nothing) what is left is then killed; without it, a master still finishing requests
        in flight is left to finish them, bounded by its `hard-stop-after`. Returns whether
        it has exited (True when there was none)."""
        child, self._child = self._child, None
        if child is None:
            return True
        child.stopping = True
        proc, loop = child.proc, asyncio.get_running_loop()
        until, latest = loop.time() + grace, loop.time() + STOP_DURING_RELOAD
        exited = asyncio.ensure_future(proc.wait())
        try:
            while not exited.done():
                if child.reexecuting:  # wait for the new master, then give it `grace`
                    until = max(until, min(loop.time() + grace, latest))
                if loop.time() >= until:
                    break
                if not child.exiting:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGUSR1)  # soft stop: finish what is in flight
                child.said.clear()
                said = asyncio.ensure_future(child.said.wait())
                wait = until - loop.time()
                await asyncio.wait(
                    [exited, said], timeout=wait if child.exiting else min(STOP_REPEAT, wait)
                )
                said.cancel()
            if not exited.done() and kill:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await exited
            elif not exited.done():
                _LEFT_RUNNING.append(proc)
                if child.exiting:
                    log.info(
                        "HAProxy (master %d) finishes the requests in flight, then exits (at "
                        "the latest after the config's hard-stop-after)",
                        proc.pid,
                    )
                else:
                    log.warning(
                        "HAProxy (master %d) did not confirm the stop; it may keep serving",
                        proc.pid,
                    )
        finally:
            exited.cancel()
            for task in child.tasks:
                task.cancel()
            await asyncio.gather(exited, *child.tasks, return_exceptions=True)
        return proc.returncode is not None

    async def close(self, *, stop: bool = True) -> bool:
        """Stop watching; with `stop`, also stop the HAProxy this adapter started (soft stop:
        requests in flight finish, for at most `STOP_GRACE` here and then on their own).
        Without it, HAProxy keeps serving. Returns whether no HAProxy this adapter started
        runs any more (False while one serves, or finishes requests in flight)."""
        if stop:
            return await self._stop_child(kill=False)
        child, self._child = self._child, None
        if child is not None:
            child.stopping = True
            for task in child.tasks:
                task.cancel()
            await asyncio.gather(*child.tasks, return_exceptions=True)
            if child.proc.returncode is None:
                _LEFT_RUNNING.append(child.proc)
        return child is None

    # ------------------------------------------------------------------ runtime API

    async def _command(self, command: str, *, ok: Callable[[str], bool]) -> str:
        self.counters.runtime_ops += 1
        answer = (await self.runtime(command)).strip()
        if not ok(answer):
            raise RuntimeRefused(f"{command!r}: {answer or '(no answer)'}")
        return answer

    async def add_server(
        self, backend: str, server: str, address: str, port: int, options: tuple[str, ...]
    ) -> None:
        """Add a server and enable it (HAProxy adds servers in maintenance)."""
        words = " ".join((f"{address}:{port}", *options))
        await self._command(
            f"add server {backend}/{server} {words}", ok=lambda a: "New server registered" in a
        )
        await self.enable_server(backend, server)

    async def enable_server(self, backend: str, server: str) -> None:
        """Take a server out of maintenance."""
        await self._command(f"enable server {backend}/{server}", ok=lambda a: a == "")

    async def del_server(self, backend: str, server: str) -> None:
        """Put a server in maintenance (no new requests), then delete it once its requests
        in flight are done. Raises ServerBusy when they outlast the drain timeout."""
        await self._command(f"set server {backend}/{server} state maint", ok=lambda a: a == "")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.drain_timeout
        while True:
            answer = (await self.runtime(f"del server {backend}/{server}")).strip()
            self.counters.runtime_ops += 1
            if "Server deleted" in answer or "No such server" in answer:
                return
            if "connections" not in answer:
                raise RuntimeRefused(f"'del server {backend}/{server}': {answer}")
            if loop.time() >= deadline:
                raise ServerBusy(
                    f"{backend}/{server} still has requests in flight after "
                    f"{self.options.drain_timeout:g}s; it is in maintenance, deletion retried"
                )
            await asyncio.sleep(0.05)

    async def set_server_addr(self, backend: str, server: str, address: str, port: int) -> None:
        """Point a server at a new address and port."""
        await self._command(
            f"set server {backend}/{server} addr {address.strip('[]')} port {port}",
            ok=lambda a: "changed" in a or "no need to change" in a,
        )
