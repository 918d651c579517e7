"""The bad-words filter against TFDS's regexes, soft filtering, and list fetching."""

import argparse

import pytest
from conftest import DEMO_WET

from t5forge.beam_jobs import badwords, wet

WORDS = {"en": ["ass", "2 girls 1 cup", "f*ck", "sm"], "es": ["culo"], "ja": ["sm", "グロ", "エロ"]}


@pytest.mark.parametrize(
    "text, lang, matched",
    [
        ("he needs assistance now", "en", False),
        ("a cutlass on the wall", "en", False),
        ("he fell on his ass in the mud", "en", True),
        ("Ass is a donkey.", "en", True),
        ('he said "ass".', "en", True),
        ("ass", "en", True),
        ("what the f*ck", "en", True),
        ("what the fuck", "en", False),
        ("el culo", "en", False),
        ("el culo", "es", True),
        ("el culo", "fr", False),
        ("サブエロチック", "ja", True),  # no word boundaries in Japanese
        ("グロ画像", "ja", False),  # allowlisted
        ("smart", "ja", False),  # allowlisted "sm"
    ],
)
def test_matches_like_tfds(text, lang, matched):
    words = {k: set(v) for k, v in WORDS.items()}
    for k, allowed in badwords.ALLOWLIST.items():
        if k in words:
            words[k] -= allowed
    f = badwords.BadwordsFilter(words, filter_fraction=1.0)
    assert (f.check(text, lang, "example.com/x") == "filtered") == matched
    c4_utils = pytest.importorskip("tensorflow_datasets.text.c4_utils")
    ref = c4_utils.get_badwords_filter_fn(words, filter_fraction=1.0)
    page = c4_utils.PageFeatures(text=text, language=lang, normalized_url="example.com/x")
    assert ref(page) == (not matched)


def test_same_decisions_as_tfds_on_real_pages():
    c4_utils = pytest.importorskip("tensorflow_datasets.text.c4_utils")
    words = {"en": {"kill", "abort", "dump", "execute", "naked", "strip"}}
    for fraction in (1.0, 0.5, 0.999):
        ours = badwords.BadwordsFilter(words, fraction)
        ref = c4_utils.get_badwords_filter_fn(words, filter_fraction=fraction)
        decisions = []
        for p in wet.read_wet_file(DEMO_WET):
            page = c4_utils.PageFeatures(
                text=p.text, language="en", normalized_url=p.normalized_url
            )
            keep = ours.check(p.text, "en", p.normalized_url) != "filtered"
            assert keep == ref(page)
            decisions.append(keep)
        assert 0 < sum(decisions) < len(decisions)


def test_soft_filter_keeps_by_url_hash():
    f = badwords.BadwordsFilter({"en": ["bad"]}, filter_fraction=0.5)
    outcomes = {f.check("a bad page", "en", f"example.com/{i}") for i in range(64)}
    assert outcomes == {"filtered", "soft-passed"}
    assert badwords.keep_fraction_ratio(0.999) == (8998192055486251, 9007199254740992)
    with pytest.raises(ValueError, match="fraction"):
        badwords.BadwordsFilter({"en": ["x"]}, filter_fraction=1.5)


def test_load_file_and_directory(tmp_path):
    (tmp_path / "en.txt").write_text("one\n\n  two words \n")
    assert badwords.load_badwords(str(tmp_path / "en.txt")) == {"en": {"one", "two words"}}
    d = tmp_path / "lists"
    d.mkdir()
    (d / "ja").write_text("sm\nエロ\n")
    (d / "fr").write_text("merde\n")
    (d / "fr-CA-u-sd-caqc").write_text("tabarnak\n")
    assert badwords.load_badwords(str(d)) == {"ja": {"エロ"}, "fr": {"merde", "tabarnak"}}
    # A ".txt" extension names the same language (not a language "de.txt" no page has).
    (d / "de.txt").write_text("scheisse\n")
    words = badwords.load_badwords(str(d))
    assert words["de"] == {"scheisse"} and "de.txt" not in words
    verdict = badwords.BadwordsFilter(words).check("so eine scheisse hier", "de", "example.com/x")
    assert verdict != "passed"
    with pytest.raises(FileNotFoundError, match="missing"):
        badwords.load_badwords(str(tmp_path / "missing"))
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        badwords.load_badwords(str(tmp_path / "bin"))


def test_fetch_pinned_list_from_server(tmp_path, serve_directory):
    served = tmp_path / "srv" / badwords.EN_COMMIT
    served.mkdir(parents=True)
    (served / "en").write_text("alpha\nbeta\n")
    server = serve_directory(tmp_path / "srv")
    template = server.url + "{commit}/{lang}"
    cache = tmp_path / "cache"
    path = badwords.fetch_word_list("en", badwords.EN_COMMIT, str(cache), template)
    assert badwords.read_word_list(path) == {"alpha", "beta"}
    server.stop()
    # Cached: no server needed the second time.
    assert badwords.fetch_word_list("en", badwords.EN_COMMIT, str(cache), template) == path
    with pytest.raises(OSError, match="--no-badwords"):
        badwords.fetch_word_list("de", badwords.EN_COMMIT, str(cache), template)


def test_soft_filter_keeps_the_same_pages_on_every_run():
    c4_utils = pytest.importorskip("tensorflow_datasets.text.c4_utils")
    urls = [f"example.com/page/{i}" for i in range(20000)]
    ours = badwords.BadwordsFilter({"de": ["scheisse"]}, filter_fraction=0.999)
    ref = c4_utils.get_badwords_filter_fn({"de": ["scheisse"]}, filter_fraction=0.999)
    kept = [u for u in urls if ours.check("so eine scheisse hier", "de", u) == "soft-passed"]
    again = [u for u in urls if ours.check("so eine scheisse hier", "de", u) == "soft-passed"]
    tfds_kept = [
        u
        for u in urls
        if ref(c4_utils.PageFeatures(text="so eine scheisse hier", language="de", normalized_url=u))
    ]
    assert kept == again == tfds_kept
    assert 5 <= len(kept) <= 45  # about 0.1% of 20,000
    # Region and script suffixes use the base language's list.
    assert ours.check("so eine scheisse hier", "de-Latn", urls[0]) in ("filtered", "soft-passed")
    assert ours.check("so eine scheisse hier", "und", urls[0]) == "passed"


def test_fetch_all_pinned_lists(tmp_path, serve_directory):
    for commit, langs in (
        (badwords.EN_COMMIT, ["en"]),
        (badwords.MULTILINGUAL_COMMIT, ["ja", "fr", "fr-CA-u-sd-caqc"]),
    ):
        for lang in langs:
            d = tmp_path / "srv" / commit
            d.mkdir(parents=True, exist_ok=True)
            (d / lang).write_text(
                {
                    "en": "bad\n",
                    "ja": "sm\nエロ\n",
                    "fr": "merde\n",
                    "fr-CA-u-sd-caqc": "tabarnak\n",
                }[lang]
            )
    server = serve_directory(tmp_path / "srv")
    words = badwords.fetch_badwords(
        str(tmp_path / "cache"),
        ["en", "ja", "fr", "fr-CA-u-sd-caqc"],
        server.url + "{commit}/{lang}",
    )
    assert words == {"en": {"bad"}, "ja": {"エロ"}, "fr": {"merde", "tabarnak"}}


def test_build_mc4_needs_only_the_lists_of_its_languages(tmp_path, monkeypatch):
    # Offline with only the cached lists of the languages asked for: the job needs no others.
    from t5forge import cli

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "t5forge" / "badwords" / badwords.MULTILINGUAL_COMMIT[:8]
    cache.mkdir(parents=True)
    for lang, word in (("de", "mist"), ("fr", "merde"), ("fr-CA-u-sd-caqc", "tabarnak")):
        (cache / lang).write_text(word + "\n")
    (cache / "ja").write_text("sm\nエロ\n")

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(badwords.urllib.request, "urlopen", offline)
    args = argparse.Namespace(no_badwords=False, badwords=None)
    words, source = cli._load_mc4_badwords(args, ("de", "fr", "ja-Latn", "sw"))
    assert words == {"de": {"mist"}, "fr": {"merde", "tabarnak"}, "ja": {"エロ"}}
    assert source.endswith(": de, fr, ja")
    # A language whose list is not cached still needs the download, and says how to do without.
    with pytest.raises(cli.UsageError, match="--no-badwords"):
        cli._load_mc4_badwords(args, ("ar",))
