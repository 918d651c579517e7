"""TFDS's own C4 graph, assembled from `tensorflow_datasets.text.c4_utils`.

Used by the conformance tests: the same steps, in the same order, as TFDS
3.1's C4 builder (`_get_pages_pcollection` and `_build_pcollection`), with the
sentence tokenizer injected (TFDS would download the withdrawn Punkt pickle)
and the WET download step left out (the files are local).
"""

import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions


def _newest_valid_pages(pipeline, paths):
    """TFDS's common start: split WET files, length filter, newest page per URL."""
    from tensorflow_datasets.text import c4_utils

    return (
        pipeline
        | beam.Create(paths)
        | beam.FlatMap(c4_utils.split_wet_file)
        | beam.Filter(c4_utils.is_valid_length)
        | "normalize_url" >> beam.Map(lambda p: (p.normalized_url, p))
        | "select_newest" >> beam.CombinePerKey(c4_utils.select_newest_page)
        | beam.Values()
    )


def run_tfds_c4(paths, output_prefix, count_sentences, badwords=None, clean=True, dedupe=True):
    """Runs TFDS's C4 graph in-process; writes JSON lines `output_prefix`-<split>-*."""
    from tensorflow_datasets.text import c4_utils

    # TFDS calls _get_sentences for every count; give it our tokenizer.
    c4_utils._get_sentences = lambda text: [None] * count_sentences(text)

    def emit(page, split):
        return json.dumps(
            {
                "split": split,
                "url": page.url,
                "text": page.text,
                "timestamp": page.timestamp,
                "content-type": page.content_type,
                "content-length": page.content_length,
            },
            sort_keys=True,
        )

    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        pages = _newest_valid_pages(p, paths)
        if clean:
            pages |= "clean_pages" >> beam.FlatMap(c4_utils.get_clean_page_fn())
        if dedupe:
            pages = (
                c4_utils.remove_duplicate_text(pages)
                if clean
                else c4_utils.remove_duplicate_text(pages, min_num_sentences=0)
            )
        pages |= beam.FlatMap(c4_utils.detect_english)
        if badwords is not None:
            pages |= beam.Filter(c4_utils.get_badwords_filter_fn(badwords, filter_fraction=1.0))
        for split, predicate in (
            ("train", lambda x: x % 1000 != 0),
            ("validation", lambda x: x % 1000 == 0),
        ):
            _ = (
                pages
                | f"filter_{split}" >> beam.Filter(c4_utils.get_hashed_url_filter_fn(predicate))
                | f"emit_{split}" >> beam.Map(emit, split=split)
                | f"write_{split}" >> beam.io.WriteToText(f"{output_prefix}-{split}")
            )


def run_tfds_mc4(paths, output_prefix, badwords=None, languages=None):
    """TFDS's multilingual graph in-process; JSON lines with the language and split."""
    from tensorflow_datasets.text import c4, c4_utils

    languages = languages or c4.MC4_LANGUAGES

    def emit(page):
        split = (
            "validation"
            if c4_utils.get_hashed_url_filter_fn(lambda x: x % 1000 == 0)(page)
            else "train"
        )
        return json.dumps(
            {
                "language": page.language,
                "split": split,
                "url": page.url,
                "text": page.text,
                "timestamp": page.timestamp,
            },
            sort_keys=True,
        )

    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        pages = _newest_valid_pages(p, paths) | beam.Filter(c4_utils.paragraph_filter)
        pages = c4_utils.remove_duplicate_text(pages, min_num_sentences=0)
        pages = c4_utils.detect_languages(pages, valid_languages=languages)
        if badwords is not None:
            pages |= beam.Filter(c4_utils.get_badwords_filter_fn(badwords, filter_fraction=0.999))
        _ = pages | beam.Map(emit) | beam.io.WriteToText(output_prefix)
