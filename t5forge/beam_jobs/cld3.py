"""cld3 language identification as mC4 uses it, safe next to TensorFlow.

mC4 labels a page with `gcld3.NNetLanguageIdentifier(min_num_bytes=100,
max_num_bytes=10000).FindLanguage(text)`: not reliable -> "und"; probability
below the threshold (0.95) -> "und"; a code outside `MC4_LANGUAGES` -> the page
is dropped. The `cld3-py` wheel provides the `gcld3` module.

Constructing the identifier crashes the process (SIGSEGV) when TensorFlow was
imported before gcld3. So this module imports gcld3 as soon as it is imported
itself, when TensorFlow is not loaded yet; and a process where TensorFlow came
first gets a clean helper process (`python -m t5forge.beam_jobs.cld3`) that
runs cld3 and answers over a pipe. Either way the answers are cld3's own.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading

MIN_PROBABILITY = 0.95
MIN_NUM_BYTES = 100
MAX_NUM_BYTES = 10000
UNKNOWN_LANGUAGE = "und"

# TFDS's MC4_LANGUAGES: the cld3 codes with at least 10k pages in mC4 (101
# languages plus 6 Latin-script variants; Hebrew is "iw", Filipino "fil").
MC4_LANGUAGES = (
    "af am ar az be bg bg-Latn bn ca ceb co cs cy da de el el-Latn en eo es et eu fa fi fil fr fy "
    "ga gd gl gu ha haw hi hi-Latn hmn ht hu hy id ig is it iw ja ja-Latn jv ka kk km kn ko ku ky "
    "la lb lo lt lv mg mi mk ml mn mr ms mt my ne nl no ny pa pl ps pt ro ru ru-Latn sd si sk sl "
    "sm sn so sq sr st su sv sw ta te tg th tr uk ur uz vi xh yi yo zh zh-Latn zu"
).split()

if "tensorflow" not in sys.modules:
    try:
        import gcld3  # noqa: F401 - must precede any TensorFlow import in this process
    except ImportError:
        pass


def _tensorflow_came_first() -> bool:
    return "tensorflow" in sys.modules and "gcld3" not in sys.modules


class _InProcess:
    def __init__(self):
        import gcld3

        self._detector = gcld3.NNetLanguageIdentifier(
            min_num_bytes=MIN_NUM_BYTES, max_num_bytes=MAX_NUM_BYTES
        )
        self._lock = threading.Lock()

    def find(self, text: str) -> tuple[str, float, bool]:
        with self._lock:
            result = self._detector.FindLanguage(text)
        return result.language, result.probability, result.is_reliable


class _HelperProcess:
    """cld3 in a fresh interpreter that never imports TensorFlow."""

    def __init__(self):
        self._process = subprocess.Popen(
            [sys.executable, "-m", "t5forge.beam_jobs.cld3"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._lock = threading.Lock()

    def find(self, text: str) -> tuple[str, float, bool]:
        data = text.encode("utf-8", "surrogatepass")
        with self._lock:
            self._process.stdin.write(struct.pack("<I", len(data)) + data)
            self._process.stdin.flush()
            (size,) = struct.unpack("<I", _read_exactly(self._process.stdout, 4))
            language, probability, reliable = json.loads(_read_exactly(self._process.stdout, size))
        return language, probability, reliable

    def __del__(self):
        try:
            self._process.stdin.close()
            self._process.wait(timeout=5)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _read_exactly(stream, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise RuntimeError("the cld3 helper process stopped unexpectedly")
    return data


class LanguageIdentifier:
    """mC4's page language: a cld3 code from `languages`, "und", or None (drop)."""

    def __init__(self, languages=MC4_LANGUAGES, min_probability: float = MIN_PROBABILITY):
        self.languages = frozenset(languages)
        self.min_probability = min_probability
        self._backend = None

    def __getstate__(self):
        return {"languages": sorted(self.languages), "min_probability": self.min_probability}

    def __setstate__(self, state):
        self.__init__(state["languages"], state["min_probability"])

    def _find(self, text: str) -> tuple[str, float, bool]:
        if self._backend is None:
            self._backend = _HelperProcess() if _tensorflow_came_first() else _InProcess()
        return self._backend.find(text)

    def identify(self, text: str) -> tuple[str | None, str]:
        """Returns (language or None, outcome) with TFDS's counter names as outcomes:
        "filtered:no_predictions" and "filtered:low_confidence" (-> "und"),
        "filtered:ignored_language" (-> None) or "passed"."""
        language, probability, reliable = self._find(text)
        if not reliable:
            return UNKNOWN_LANGUAGE, "filtered:no_predictions"
        if probability < self.min_probability:
            return UNKNOWN_LANGUAGE, "filtered:low_confidence"
        if language not in self.languages:
            return None, "filtered:ignored_language"
        return language, "passed"


def _serve() -> None:
    """The helper process: length-prefixed UTF-8 texts in, JSON answers out."""
    backend = _InProcess()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            return
        (size,) = struct.unpack("<I", head)
        text = _read_exactly(stdin, size).decode("utf-8", "surrogatepass")
        answer = json.dumps(backend.find(text)).encode("utf-8")
        stdout.write(struct.pack("<I", len(answer)) + answer)
        stdout.flush()


if __name__ == "__main__":
    _serve()
