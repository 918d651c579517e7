"""The LDNOOBW bad-words filter as TFDS 3.x applies it.

A page is matched if its lower-cased text contains a listed word: for
languages written with spaces, only where the word is flanked by a non-word
character or the text's edge; for ja, th and zh anywhere. Each word is
regex-escaped (TFDS 3.1). A matched page is dropped unless
``md5(normalized_url) % d >= n`` where ``n/d`` is the filter fraction as an
exact ratio, so a fraction of 1.0 drops every matched page and 0.999 keeps
about one in a thousand, the same ones on every run.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.request
from collections.abc import Iterable, Mapping

# LDNOOBW commits TFDS pins: the English list of the original C4, and the
# per-language lists of mC4.
EN_COMMIT = "25e679f03d96baa721cde20db9944649e8d0a844"
MULTILINGUAL_COMMIT = "5faf2ba42d7b1c0977169ec3611df25a3c08eb13"
LDNOOBW_URL = (
    "https://raw.githubusercontent.com/LDNOOBW/"
    "List-of-Dirty-Naughty-Obscene-and-Otherwise-Bad-Words/{commit}/{lang}"
)
# Languages with a list (TFDS's _BADWORDS_LANGS); "fr-CA-u-sd-caqc" merges
# into "fr"; kab and tlh are loaded but match no mC4 language.
LIST_LANGUAGES = (
    "ar cs da de en eo es fa fi fil fr fr-CA-u-sd-caqc hi hu it ja kab ko nl no pl pt ru sv th "
    "tlh tr zh"
).split()
UNSPACED_LANGUAGES = ("ja", "th", "zh")
# Common sub-words in unspaced languages that TFDS 3.1 allows (each alone
# filtered more than 10% of that language's pages).
ALLOWLIST = {"ja": {"sm", "グロ", "女の子"}, "zh": {"性"}}


def read_word_list(path: str) -> set[str]:
    """Reads one list: a word or phrase per line, stripped; blank lines ignored."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FileNotFoundError(f"--badwords {path}: cannot read ({e.strerror})") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--badwords {path}: not UTF-8 text") from e
    return {line.strip() for line in text.splitlines() if line.strip()}


def load_badwords(path: str, default_language: str = "en") -> dict[str, set[str]]:
    """Loads a bad-words file (for `default_language`) or a directory of per-language files.

    In a directory each file is named by its language code, as in the LDNOOBW repository,
    optionally with a ".txt" extension ("de" or "de.txt"); a region suffix ("fr-CA-u-sd-caqc")
    merges into the base language, as in TFDS.
    """
    if os.path.isdir(path):
        words: dict[str, set[str]] = {}
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if name.startswith(".") or not os.path.isfile(full):
                continue
            language = name.removesuffix(".txt").split("-")[0]
            words.setdefault(language, set()).update(read_word_list(full))
        if not words:
            raise ValueError(f"--badwords {path}: directory holds no word lists")
    else:
        words = {default_language: read_word_list(path)}
    for lang, allowed in ALLOWLIST.items():
        if lang in words:
            words[lang] -= allowed
    return words


def fetch_word_list(lang: str, commit: str, cache_dir: str, url_template: str = LDNOOBW_URL) -> str:
    """Downloads one pinned LDNOOBW list into `cache_dir` (once); returns its path."""
    target_dir = os.path.join(cache_dir, commit[:8])
    target = os.path.join(target_dir, lang)
    if os.path.exists(target):
        return target
    os.makedirs(target_dir, exist_ok=True)
    url = url_template.format(commit=commit, lang=lang)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except OSError as e:
        raise OSError(
            f"could not download the bad-words list {url} ({e}); pass --badwords PATH "
            "with a local copy, or --no-badwords"
        ) from e
    tmp = f"{target}.part{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
    return target


def fetch_badwords(
    cache_dir: str, languages=LIST_LANGUAGES, url_template: str = LDNOOBW_URL
) -> dict[str, set[str]]:
    """The pinned lists TFDS's mC4 uses: English @25e679f0, the others @5faf2ba4.

    Lists merge by base language and TFDS 3.1's ja/zh allowlist is applied.
    """
    words: dict[str, set[str]] = {}
    for lang in languages:
        commit = EN_COMMIT if lang == "en" else MULTILINGUAL_COMMIT
        path = fetch_word_list(lang, commit, cache_dir, url_template)
        words.setdefault(lang.split("-")[0], set()).update(read_word_list(path))
    for lang, allowed in ALLOWLIST.items():
        if lang in words:
            words[lang] -= allowed
    return words


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "t5forge", "badwords")


def compile_badwords(words: Mapping[str, Iterable[str]]) -> dict[str, re.Pattern]:
    """One regex per language, shaped as TFDS 3.1 builds them."""
    regexes = {}
    for lang, lang_words in words.items():
        alternation = "|".join(re.escape(w) for w in sorted(lang_words))
        if not alternation:
            continue
        if lang in UNSPACED_LANGUAGES:
            regexes[lang] = re.compile(alternation)
        else:
            regexes[lang] = re.compile(rf"(?:\W|^)({alternation})(?:\W|$)")
    return regexes


def keep_fraction_ratio(filter_fraction: float) -> tuple[int, int]:
    """(n, d) with n/d == filter_fraction exactly, as TFDS computes it."""
    if not 0.0 <= filter_fraction <= 1.0:
        raise ValueError(f"bad-words filter fraction {filter_fraction} is not in [0, 1]")
    return float.as_integer_ratio(float(filter_fraction))


def url_hash_int(normalized_url: str) -> int:
    return int(hashlib.md5(normalized_url.encode("utf-8")).hexdigest(), 16)


class BadwordsFilter:
    """Decides whether a page survives the bad-words filter; picklable for Beam."""

    def __init__(self, words: Mapping[str, Iterable[str]], filter_fraction: float = 1.0):
        self.words = {lang: sorted(ws) for lang, ws in words.items()}
        self.filter_fraction = filter_fraction
        self._numerator, self._denominator = keep_fraction_ratio(filter_fraction)
        self._regexes: dict[str, re.Pattern] | None = None

    def __getstate__(self):
        return {"words": self.words, "filter_fraction": self.filter_fraction}

    def __setstate__(self, state):
        self.__init__(state["words"], state["filter_fraction"])

    def check(self, text: str, language: str, normalized_url: str) -> str:
        """Returns "passed", "soft-passed" (matched but kept) or "filtered"."""
        if self._regexes is None:
            self._regexes = compile_badwords(self.words)
        regex = self._regexes.get(language.split("-")[0])
        if regex is None or regex.search(text.lower()) is None:
            return "passed"
        if url_hash_int(normalized_url) % self._denominator >= self._numerator:
            return "soft-passed"
        return "filtered"
