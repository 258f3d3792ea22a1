"""A local web-hook receiver and the sync task path, shared by the notification tests."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django_q.conf import Conf


class Receiver:
    """A local web-hook: records every JSON body Apprise posts to it."""

    def __init__(self):
        self.posts = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"json://127.0.0.1:{self.server.server_port}/hook"

    def titles(self):
        return [post["title"] for post in self.posts]

    def kinds(self):
        return [title.removeprefix("[Control Room] ").split(":")[0] for title in self.titles()]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sync_tasks(monkeypatch):
    """django-q2's sync path: async_task runs the task in this process, as a cluster worker would."""
    monkeypatch.setattr(Conf, "SYNC", True)


def notify_settings(settings, *urls, **extra):
    settings.CONTROLROOM = {
        **settings.CONTROLROOM,
        "NOTIFY_URLS": list(urls),
        "PUBLIC_URL": "https://cr.example",
        **extra,
    }
