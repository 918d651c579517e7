"""English identification for C4: langdetect, seeded, after cleaning."""

from __future__ import annotations

import threading

MIN_ENGLISH_PROBABILITY = 0.99

# langdetect keeps its seed and profiles in module state; TFDS serialises
# calls and re-seeds before each one so results do not depend on call order.
_langdetect_lock = threading.Lock()


def detect_english(text: str, min_probability: float = MIN_ENGLISH_PROBABILITY) -> str:
    """Returns "passed" if langdetect calls `text` English with `min_probability`.

    Otherwise returns the reason, with TFDS's counter names:
    "filtered:langdetect_exception", "filtered:no_predictions",
    "filtered:low_confidence" or "filtered:ignored_language".
    """
    import langdetect
    from langdetect.lang_detect_exception import LangDetectException

    with _langdetect_lock:
        langdetect.DetectorFactory.seed = 0
        try:
            predictions = langdetect.detect_langs(text)
        except LangDetectException:
            return "filtered:langdetect_exception"
    if not predictions:
        return "filtered:no_predictions"
    best = predictions[0]
    if best.prob < min_probability:
        return "filtered:low_confidence"
    if best.lang != "en":
        return "filtered:ignored_language"
    return "passed"
