import os

import pytest

# gcld3 must be imported before TensorFlow in any process (constructing its
# identifier after a TensorFlow import crashes); the TFDS reference graph in
# the tests runs cld3 in this process.
import t5forge.beam_jobs.cld3  # noqa: F401, I001

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
