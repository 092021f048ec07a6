"""The project's Tokyo Tyrant test server answers as a real ttserver does, byte for byte.

``tests/fixtures/tyrant/transcripts.json`` holds every request the backend's client sends
(success and failure cases) with the replies of ``ttserver`` 1.1.41, recorded by
``tests/fixtures/tyrant/record.py``. Each request is replayed here, in order and on one
connection, against :mod:`pymodels.testing._tyrant_server` serving a fresh file with the
same options.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from pymodels.errors import BackendUnavailable

try:
    import pymodels.testing._tyrant_server  # noqa: F401 - needs the Cabinet library
    from pymodels.testing.tyrant import ENV_TTSERVER, TemporaryTyrant
except BackendUnavailable as e:  # pragma: no cover
    pytest.skip(f"no Tokyo Tyrant test server: {e}", allow_module_level=True)

FIXTURE = Path(__file__).parent / "fixtures" / "tyrant" / "transcripts.json"
DOC: dict[str, Any] = json.loads(FIXTURE.read_text("utf-8"))
#: stat lines whose values depend on the run (compared by name and order only).
VARYING = {
    "time",
    "pid",
    "sid",
    "path",
    "fd",
    "loadavg",
    "memsize",
    "memrss",
    "ru_user",
    "ru_sys",
    "ru_real",
}


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _stat_lines(reply: bytes) -> list[tuple[str, str]]:
    (size,) = struct.unpack(">I", reply[1:5])
    text = reply[5 : 5 + size].decode()
    lines = [line.split("\t", 1) for line in text.splitlines()]
    return [(k, "*" if k in VARYING else v) for k, v in lines]


#: The servers replayed against: always the project's test server; also the real
#: ``ttserver`` that ``PYMODELS_TEST_TTSERVER`` names, which shows that the fixture still
#: says what a real server answers.
SERVERS = ["test-server", *(["ttserver"] if os.environ.get(ENV_TTSERVER) else [])]


@pytest.fixture(scope="module", params=SERVERS)
def replies(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[tuple[dict[str, str], bytes]]:
    folder = tmp_path_factory.mktemp("tt")
    out = []
    ttserver = False if request.param == "test-server" else None
    with TemporaryTyrant(str(folder / DOC["dbname"]), ttserver=ttserver) as tt:
        assert tt.real == (request.param == "ttserver")
        sock = socket.create_connection(("127.0.0.1", tt.port), timeout=10)
        try:
            for entry in DOC["transcript"]:
                sock.sendall(bytes.fromhex(entry["request"]))
                expected = bytes.fromhex(entry["reply"])
                if entry["what"] == "stat":
                    head = _read_exactly(sock, 5)
                    (size,) = struct.unpack(">I", head[1:5])
                    got = head + _read_exactly(sock, size)
                else:
                    got = _read_exactly(sock, len(expected))
                out.append((entry, got))
        finally:
            sock.close()
    return out


def test_transcripts_were_recorded_from_ttserver_1_1_41() -> None:
    assert DOC["recorded_with"].startswith("Tokyo Tyrant version 1.1.41")
    assert len(DOC["transcript"]) > 100


@pytest.mark.parametrize(
    "index", range(len(DOC["transcript"])), ids=lambda i: DOC["transcript"][i]["what"]
)
def test_reply_matches_ttserver(replies: list[tuple[dict[str, str], bytes]], index: int) -> None:
    entry, got = replies[index]
    expected = bytes.fromhex(entry["reply"])
    if entry["what"] == "stat":
        assert _stat_lines(got) == _stat_lines(expected)
    else:
        assert got == expected, entry["what"]
