"""A real DNS server on loopback for the discovery tests: Debian's dnsmasq on a free UDP/TCP port, its A
records in a watched hosts directory (edited while it runs: dnsmasq re-reads changed files through inotify),
its SRV records from the command line. The Makefile's test target installs dnsmasq-base when missing."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def _free_udp_tcp_port() -> int:
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(type=socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


class DnsServer:
    def __init__(self, workdir: Path, srv: list[tuple[str, str, int]] = ()) -> None:  # type: ignore[assignment]
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        if not Path(binary).exists():
            raise RuntimeError("dnsmasq is not installed (make test installs Debian's dnsmasq-base)")
        self.port = _free_udp_tcp_port()
        self.hosts_dir = workdir / f"dns-hosts-{self.port}"
        self.hosts_dir.mkdir()
        self.hosts = self.hosts_dir / "records"
        self.hosts.write_text("")
        self.log = workdir / f"dnsmasq-{self.port}.log"
        args = [binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--no-poll", "--bind-interfaces", "--listen-address=127.0.0.1", f"--port={self.port}",
                f"--hostsdir={self.hosts_dir}", "--local-ttl=0", "--pid-file=", "--user=root",
                "--log-facility=-", "--log-queries"]
        args += [f"--srv-host={name},{target},{port}" for name, target, port in srv]
        self.process = subprocess.Popen(args, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        self._wait()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _wait(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {self.log.read_text()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("dnsmasq did not start")

    def set_records(self, records: list[tuple[str, str]]) -> None:
        """Replace every A record: (address, name) pairs, as a hosts file."""
        self.hosts.write_text("".join(f"{address} {name}\n" for address, name in records))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
