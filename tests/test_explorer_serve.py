"""``vaekit explore``: writing the page, serving it on localhost, and stopping the server by signal.

The server runs as a user runs it, in a process of its own; its SIGINT is ignored at start, as in any job
a shell starts in the background, and Ctrl-C (SIGINT) and SIGTERM must stop it all the same.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from vaekit.artifacts import EXPLORER, write_artifacts
from vaekit.cli import main

from .artifact_runs import Html, make_run
from .conftest import hermetic_env

STOP_WITHIN_S = 5.0


@pytest.fixture(scope="module")
def finished_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = make_run(tmp_path_factory.mktemp("explore") / "run", tiny_data)
    with hermetic_env(tmp_path_factory.mktemp("cache")):
        write_artifacts(out, which=("explorer",))
    return out


def _env() -> dict[str, str]:
    return {**os.environ, "VAEKIT_OFFLINE": "1", "VAEKIT_SEARCH_PATH": ""}


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a shell does for a background job


class Server:
    """``vaekit explore RUN --serve --port 0`` in a subprocess that starts with SIGINT ignored."""

    def __init__(self, run_dir: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "vaekit", "explore", str(run_dir), "--serve", "--port",
                                      "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                                     preexec_fn=_ignore_sigint)
        line = self.proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not match:
            self.proc.kill()
            pytest.fail(f"no address printed: {line!r} {self.proc.communicate()[1][-2000:]}")
        self.url, self.port = match.group(0), int(match.group(1))

    def stop(self, signum: int) -> tuple[int, float, str]:
        """Send ``signum``; the exit status, the seconds it took to exit and what it wrote on stderr."""
        start = time.monotonic()
        self.proc.send_signal(signum)
        try:
            _, err = self.proc.communicate(timeout=STOP_WITHIN_S * 4)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, time.monotonic() - start, err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def server(finished_run: Path) -> Iterator[Server]:
    s = Server(finished_run)
    yield s
    s.close()


def _served_lines(err: str) -> list[str]:
    """stderr without the data's checksum warnings, which come before serving starts."""
    return [line for line in err.splitlines() if "checksum mismatch" not in line]


def test_serve_answers_on_localhost_and_ctrl_c_stops_it(server: Server, finished_run: Path) -> None:
    with urllib.request.urlopen(server.url, timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        assert r.read() == (finished_run / EXPLORER).read_bytes()  # the page the stage writes, from memory
    for path in ("config.json", "model.safetensors", "../" + finished_run.name + "/config.json"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url + path, timeout=10)
        assert e.value.code == 404  # only the page is served, never the run folder
    code, seconds, err = server.stop(signal.SIGINT)
    assert code == 130 and seconds < STOP_WITHIN_S, (code, seconds, err)
    assert _served_lines(err) == ["vaekit explore: stopped by SIGINT"]


def test_sigterm_stops_the_server_cleanly(server: Server) -> None:
    code, seconds, err = server.stop(signal.SIGTERM)
    assert code == 143 and seconds < STOP_WITHIN_S, (code, seconds, err)
    assert _served_lines(err) == ["vaekit explore: stopped by SIGTERM"]


def _hang_up(port: int, read: int) -> None:
    """Ask for the page, read ``read`` bytes of the answer, then reset the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        if read:
            s.recv(read)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset


def test_clients_that_hang_up_leave_no_traceback(server: Server) -> None:
    for read in (0, 100, 0, 100):
        _hang_up(server.port, read)
    time.sleep(0.5)  # let the server's threads meet the closed connections
    with urllib.request.urlopen(server.url, timeout=10) as r:  # and it still serves
        assert r.status == 200 and len(r.read()) > 100_000
    code, _, err = server.stop(signal.SIGINT)
    assert code == 130 and _served_lines(err) == ["vaekit explore: stopped by SIGINT"], err


def test_cli_explore_writes_the_page_and_opens_it(finished_run: Path, tmp_path: Path) -> None:
    """``--open`` hands the page to the browser named by $BROWSER, as Python's webbrowser does for users."""
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> {opened}\n')
    browser.chmod(0o755)
    out = tmp_path / "page.html"
    r = subprocess.run([sys.executable, "-m", "vaekit", "explore", str(finished_run), "--out", str(out), "--open"],
                       capture_output=True, text=True, env={**_env(), "BROWSER": f"{browser} %s"}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert opened.read_text().split() == [out.resolve().as_uri()]
    page, written = out.read_text(), (finished_run / EXPLORER).read_text()
    assert Html(page).title == Html(written).title  # the run's own page, at another place


@pytest.mark.parametrize("args,needle", [
    (["/nonexistent/run"], "does not exist"),
    (["RUN", "--port", "8000"], "--port needs --serve"),
    (["RUN", "--serve", "--port", "70000"], "port number"),
])
def test_cli_explore_bad_input_is_one_line(finished_run: Path, capsys, args: list[str], needle: str) -> None:
    args = [str(finished_run) if a == "RUN" else a for a in args]
    try:
        code = main(["explore", *args])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_a_port_in_use_is_one_line(finished_run: Path, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["explore", str(finished_run), "--serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"cannot serve on 127.0.0.1:{port}" in err[-1] and "--port" in err[-1] and "Traceback" not in "".join(err)


def test_corrupt_run_folder_is_one_line(finished_run: Path, tmp_path: Path, capsys) -> None:
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    (run / "model.safetensors").write_bytes(b"garbage")
    assert main(["explore", str(run)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and len(err.strip().splitlines()) == 1
