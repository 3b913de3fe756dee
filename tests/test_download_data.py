"""scripts/download_data.py against a local HTTP server serving a fake RefSeq release."""
import os
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import download_data as download
from virnucpro.errors import InputError
from virnucpro.models import fetching as fetcher

BACTERIA = [f"bacteria.{n}" for n in (3, 17, 42)]


def fake_release():
    rng = random.Random(0)
    files = {f"/{path}": rng.randbytes(300_000) for path in fetcher.VIRAL_FILES}
    for name in BACTERIA:
        files[f"/bacteria/{name}.genomic.gbff.gz"] = rng.randbytes(5_000)
        files[f"/bacteria/{name}.1.genomic.fna.gz"] = rng.randbytes(7_000)
    links = "".join(f'<a href="{p.rsplit("/", 1)[1]}">{p}</a>\n' for p in files if p.startswith("/bacteria/"))
    listings = {"/bacteria/": f"<html><body><a href='../'>../</a>\n<a href='README'>README</a>\n{links}</body></html>",
                "/plant/": "<html><body><a href='README'>README</a></body></html>"}
    return files, listings


class Server:
    def __init__(self):
        self.files, self.listings = fake_release()
        self.requests, self.fail_next = [], set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body):
                server.requests.append((self.command, self.path, self.headers.get("Range")))
                if body and self.path in server.fail_next:
                    server.fail_next.discard(self.path)
                    self.send_response(503)
                    self.end_headers()
                    return
                if self.path in server.listings:
                    content, status, start = server.listings[self.path].encode(), 200, 0
                elif self.path in server.files:
                    content, status, start = server.files[self.path], 200, 0
                    ranged = self.headers.get("Range")
                    if ranged and body:
                        start = int(ranged.split("=")[1].rstrip("-"))
                        status = 206
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(status)
                self.send_header("Content-Length", str(len(content) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
                self.end_headers()
                if body:
                    self.wfile.write(content[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(fetcher.time, "sleep", lambda seconds: None)
    running = Server()
    yield running
    running.httpd.shutdown()


def run(server, data_dir, *extra):
    return download.main(["--release-url", server.url, "--data-dir", str(data_dir),
                          "--categories", "bacteria", "plant", "--count", "bacteria=2", *extra])


def expected_bacteria():
    listed = [f"{name}.genomic.gbff.gz" for name in BACTERIA]
    return random.Random(42).sample(listed, 2)


def test_dry_run_prints_the_plan_with_sizes(server, tmp_path, capsys, caplog):
    assert run(server, tmp_path / "data", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "viral.1.1.genomic.fna.gz | 0.3 | no |" in out
    for gbff in expected_bacteria():
        assert gbff in out and gbff.replace("genomic.gbff.gz", "1.genomic.fna.gz") in out
    assert "6 files" in out
    assert "plant/: no *genomic.gbff.gz listed; nothing to sample" in caplog.text
    assert not (tmp_path / "data").exists()


def test_download_resume_and_skip(server, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    source = server.files["/viral/viral.1.1.genomic.fna.gz"]
    (data / "viral.1.1.genomic.fna.gz.part").write_bytes(source[:100_000])      # an interrupted download
    server.fail_next.add("/bacteria/" + expected_bacteria()[0])               # one transient server error
    assert run(server, data) == 0

    names = sorted(os.listdir(data))
    wanted = ["viral.1.1.genomic.fna.gz", "viral.1.genomic.gbff.gz"]
    for gbff in expected_bacteria():
        wanted += [gbff, gbff.replace("genomic.gbff.gz", "1.genomic.fna.gz")]
    assert names == sorted(wanted)                                             # no .part left
    for name in names:
        folder = "viral" if name.startswith("viral") else "bacteria"
        assert (data / name).read_bytes() == server.files[f"/{folder}/{name}"]
    assert ("GET", "/viral/viral.1.1.genomic.fna.gz", "bytes=100000-") in server.requests

    server.requests.clear()
    assert run(server, data) == 0                                              # everything present
    assert not [r for r in server.requests if r[0] == "GET" and not r[1].endswith("/")]


def test_bad_release_url_is_one_clear_error(server, tmp_path):
    with pytest.raises(InputError, match="404"):
        download.main(["--release-url", server.url + "nowhere/", "--data-dir", str(tmp_path),
                       "--categories", "plant"])
    with pytest.raises(InputError, match="expected CATEGORY=N"):
        download.main(["--count", "viruses=3", "--dry-run"])
