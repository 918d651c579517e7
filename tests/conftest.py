import atexit
import os
import shutil
import tempfile

import pytest

# gcld3 must be imported before TensorFlow in any process (constructing its
# identifier after a TensorFlow import crashes); the TFDS reference graph in
# the tests runs cld3 in this process.
import t5forge.beam_jobs.cld3  # noqa: F401, I001

# What t5forge caches by default (the bad-words lists, compiled training steps) goes under a
# temporary directory during the tests, not the home directory of whoever runs them.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="t5forge-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)

SHARED_WET = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "wet")
PYTHON_DOCS_WET = os.path.join(SHARED_WET, "python-docs-3.11.warc.wet.gz")
DEBIAN_WET = os.path.join(SHARED_WET, "debian-reference-9lang.warc.wet.gz")
DEMO_WET = os.path.join(
    os.path.dirname(__file__), "..", "t5forge", "beam_jobs", "data", "demo.warc.wet.gz"
)


@pytest.fixture(scope="session")
def python_docs_pages():
    from t5forge.beam_jobs import wet

    path = PYTHON_DOCS_WET if os.path.exists(PYTHON_DOCS_WET) else DEMO_WET
    return list(wet.read_wet_file(path))


class LocalServer:
    """A static HTTP server on 127.0.0.1 (stands in for GitHub / Common Crawl)."""

    def __init__(self, directory):
        import functools
        import http.server
        import threading

        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
        handler.log_message = lambda *a: None
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"

    def stop(self):
        """Stops serving and closes the port (later requests are refused at once)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def serve_directory():
    """serve_directory(path) -> a running LocalServer; stopped after the test."""
    servers = []

    def start(directory):
        servers.append(LocalServer(directory))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
