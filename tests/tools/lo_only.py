"""Start a command in a network namespace of its own, which has only a loopback interface: whatever it listens on,
0.0.0.0 included, nothing outside this namespace can reach. Prints one JSON object: the namespace's interfaces,
the command's exit status (null if it was still running after SECONDS, when it is stopped), its output, and how
many /healthz answers a client got that kept trying the command's address from the start.

    python tests/tools/lo_only.py PORT SECONDS [--listen HOST] -- COMMAND...

With --listen, a socket listening on HOST:PORT is made here and passed to COMMAND, with `--fd N` added, as a
service manager does. The client tries 127.0.0.1:PORT, or the Unix socket named by COMMAND's `--uds`.
Needs root: it runs itself again under `unshare --net`, then brings `lo` up (util-linux and iproute2).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

INSIDE = "LO_ONLY_NAMESPACE"


def healthz_answers(command: list[str], port: int, until: float) -> list[int]:
    """Keeps asking for /healthz, each time on a new connection, until `until`; the count of 200s, as a list."""
    counted = [0]
    uds = command[command.index("--uds") + 1] if "--uds" in command else None

    def keep_asking() -> None:
        while time.monotonic() < until:
            try:
                with socket.socket(socket.AF_UNIX if uds else socket.AF_INET) as sock:
                    sock.settimeout(0.5)
                    sock.connect(uds or ("127.0.0.1", port))
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
                    counted[0] += sock.recv(64).startswith(b"HTTP/1.1 200 ")
                time.sleep(0.01)  # served: no need to hurry now
            except OSError:
                time.sleep(0.001)  # not listening yet: try again at once, to be first after it does

    threading.Thread(target=keep_asking, daemon=True).start()
    return counted


def main() -> None:
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    options, command = sys.argv[3 : sys.argv.index("--")], sys.argv[sys.argv.index("--") + 1 :]
    if os.environ.get(INSIDE) != "1":
        inside = ["sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, *sys.argv]
        os.execvpe("unshare", ["unshare", "--net", *inside], {**os.environ, INSIDE: "1"})
    environment = {name: value for name, value in os.environ.items() if name != INSIDE}
    passed: list[int] = []
    if options[:1] == ["--listen"]:
        listener = socket.socket(socket.AF_INET6 if ":" in options[1] else socket.AF_INET)
        listener.bind((options[1], port))
        listener.listen()
        passed = [listener.fileno()]
        command += ["--fd", str(listener.fileno())]
    until = time.monotonic() + seconds
    answers = healthz_answers(command, port, until)
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, pass_fds=passed
    )
    try:
        status: int | None = process.wait(seconds)
    except subprocess.TimeoutExpired:
        status = None
        process.terminate()
    output, _ = process.communicate(timeout=30)
    interfaces = [name for _, name in socket.if_nameindex()]
    print(json.dumps({"interfaces": interfaces, "status": status, "output": output, "answers": answers[0]}))


if __name__ == "__main__":
    main()
