"""A Postgres server behind a link that can go silent: a fenced primary, as a failover leaves it.

A failover "hard fences" the old writer: its packets simply stop, with no RST and no ICMP
error, so a client learns nothing until its own timers give up. A userspace relay cannot play
that (the kernel ACKs what the relay leaves unread), so the server runs in a network namespace
of its own, reached through a veth pair, and :meth:`SilentLink.fence` takes the namespace's end
of the pair down:

* the host's end stays up and keeps its route; its peer's address has a permanent neighbour
  entry, so no ARP is asked (a failed one would report "host unreachable" to the socket);
* what the client sends is accepted by the host's end and discarded there (``tx_dropped``):
  TCP sees a packet sent and never answered, and gives up with ETIMEDOUT, by its own timers;
* :meth:`SilentLink.unfence` brings the link back; the server never saw the silence.

Needs root and ``ip`` (iproute2); :func:`silent_link` skips (fails in CI) when they are missing.
Names carry our pid, so :func:`sweep` removes what a killed run left behind.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lambdapool.tools.spawning import pid_alive
from lambdapool.tools.testing.postgres import PostgresServer
from lambdapool.tools.testing.pytest_plugin import missing

PREFIX = "lambdapool-silent-"  # namespace names: PREFIX + "<pid>-<token>"
NETNS_DIR = Path("/run/netns")
PORT = 5432  # the namespace is ours alone: the port is free


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip``; its output, or CalledProcessError with its stderr when ``check``."""
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise subprocess.CalledProcessError(out.returncode, ["ip", *args], out.stdout, out.stderr)
    return out.stdout


@dataclass
class SilentLink:
    """A namespace and the veth pair into it: ``host_ip`` on our side, ``peer_ip`` inside."""

    namespace: str
    host_veth: str
    peer_veth: str
    host_ip: str
    peer_ip: str
    fenced: bool = False

    def fence(self) -> None:
        """From now on, packets both ways vanish without a trace."""
        ip("-n", self.namespace, "link", "set", self.peer_veth, "down")
        self.fenced = True

    def unfence(self) -> None:
        ip("-n", self.namespace, "link", "set", self.peer_veth, "up")
        self.fenced = False

    def dropped(self) -> int:
        """Packets our end has discarded so far (what the fence swallowed)."""
        (link,) = json.loads(ip("-j", "-s", "link", "show", self.host_veth))
        return int(link["stats64"]["tx"]["dropped"])

    def abort_client_sockets(self) -> None:
        """End our TCP sockets to the peer now (ECONNABORTED): a hung client's way out."""
        subprocess.run(["ss", "-K", "dst", self.peer_ip], capture_output=True, timeout=30)


def _require() -> None:
    if os.geteuid() != 0:
        missing("network namespaces", "the silent-drop tests make one, which needs root")
    for tool in ("ip", "ss", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            missing("network namespaces", f"{tool} not found (apt-get install iproute2 util-linux)")


def _free_subnet() -> tuple[str, str]:
    """Two addresses of a /30 in 10.213.0.0/16 that no address of ours is in yet."""
    for _ in range(50):
        third, fourth = random.randrange(256), random.randrange(0, 256, 4)
        if not ip("-4", "-o", "addr", "show", "to", f"10.213.{third}.{fourth}/30").strip():
            return f"10.213.{third}.{fourth + 1}", f"10.213.{third}.{fourth + 2}"
    raise RuntimeError("no free /30 in 10.213.0.0/16")


def _remove(namespace: str, host_veth: str) -> None:
    ip("link", "del", host_veth, check=False)  # (takes its peer along, whatever holds the namespace)
    ip("netns", "del", namespace, check=False)


def sweep() -> None:
    """Remove the namespaces (and veths) of runs whose process is gone."""
    if not NETNS_DIR.is_dir():
        return
    for entry in NETNS_DIR.iterdir():
        if not entry.name.startswith(PREFIX):
            continue
        pid, _, token = entry.name[len(PREFIX) :].partition("-")
        if pid.isdigit() and not pid_alive(int(pid)):
            _remove(entry.name, f"lps{token}h")


@contextmanager
def silent_link() -> Iterator[SilentLink]:
    """A fresh namespace with a veth pair into it, addressed and up; removed at exit."""
    _require()
    sweep()
    token = f"{random.getrandbits(24):06x}"
    host_ip, peer_ip = _free_subnet()
    link = SilentLink(f"{PREFIX}{os.getpid()}-{token}", f"lps{token}h", f"lps{token}n", host_ip, peer_ip)
    try:
        ip("netns", "add", link.namespace)
    except subprocess.CalledProcessError as exc:
        missing("network namespaces", f"ip netns add failed: {exc.stderr.strip()}")
    try:
        _wire(link)
        yield link
    finally:
        _remove(link.namespace, link.host_veth)


def _wire(link: SilentLink) -> None:
    ns = ("-n", link.namespace)
    ip("link", "add", link.host_veth, "type", "veth", "peer", "name", link.peer_veth, "netns", link.namespace)
    ip("addr", "add", f"{link.host_ip}/30", "dev", link.host_veth)
    ip(*ns, "addr", "add", f"{link.peer_ip}/30", "dev", link.peer_veth)
    ip("link", "set", link.host_veth, "up")
    ip(*ns, "link", "set", "lo", "up")
    ip(*ns, "link", "set", link.peer_veth, "up")
    # Permanent neighbours both ways: with the link down, a failed ARP would tell the socket
    # "host unreachable" (an ICMP error of our own making), which a fenced server never sends.
    host_mac = json.loads(ip("-j", "link", "show", link.host_veth))[0]["address"]
    peer_mac = json.loads(ip(*ns, "-j", "link", "show", link.peer_veth))[0]["address"]
    ip("neigh", "replace", link.peer_ip, "lladdr", peer_mac, "dev", link.host_veth, "nud", "permanent")
    ip(*ns, "neigh", "replace", link.host_ip, "lladdr", host_mac, "dev", link.peer_veth, "nud", "permanent")


class NamespacedPostgres(PostgresServer):
    """A :class:`PostgresServer` whose postmaster runs inside ``link``'s namespace, listening on
    ``link.peer_ip``. Only its network is elsewhere: its files, Unix socket (``psql``) and user
    are the usual ones."""

    def __init__(self, link: SilentLink, **settings: object) -> None:
        super().__init__(host=link.peer_ip, **settings)  # type: ignore[arg-type]
        self.link = link
        self.port = PORT  # (a free port is looked for in our namespace, where the address is not)

    def _init_cluster(self) -> None:
        super()._init_cluster()
        assert self.base_dir is not None
        with open(self.base_dir / "data" / "pg_hba.conf", "a") as hba:  # (initdb lets in only 127.0.0.1)
            hba.write(f"host all all {self.link.host_ip}/32 {'scram-sha-256' if self.password else 'trust'}\n")

    def _launch_server(self) -> None:
        assert self.base_dir is not None and self.bin_dir is not None
        postgres, data = os.path.join(self.bin_dir, "postgres"), str(self.base_dir / "data")
        # nsenter (root) joins the namespace; setpriv then drops to the server's user, setting
        # the parent-death signal again (a credential change clears the one preexec set).
        user, drop = self._user, []
        if user is not None:
            ids = [f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
            drop = ["setpriv", *ids, "--pdeathsig=SIGQUIT", "--"]
        enter = ["nsenter", f"--net={NETNS_DIR / self.link.namespace}", "--", *drop]
        self._launch(lambda: [*enter, postgres, "-D", data, *self._conf()], None)
