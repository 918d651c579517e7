"""`t5forge tokenize` throughput vs a plain single-process SentencePiece loop, one run.

    python benchmarks/tokenize_speed.py [--copies 2] [--vocab-size 8000]

(Not named tokenize.py: a script of that name shadows the standard library's
`tokenize` module for every script in this directory.)

Builds a JSON-lines corpus from the shared WET files (repeated `--copies`
times), trains a unigram SentencePiece model on part of it, then encodes the
same corpus three ways: a plain loop (read documents, `EncodeAsIds` each,
keep the ids), and `tokenize_corpus` with 1 and with 2 workers. Prints MB/s of
UTF-8 text (reading and writing included) and checks all three give the same ids.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "data", "wet")
WET = [
    os.path.join(SHARED, "python-docs-3.11.warc.wet.gz"),
    os.path.join(SHARED, "debian-reference-9lang.warc.wet.gz"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()

    import numpy as np
    import sentencepiece

    from t5forge.beam_jobs import wet
    from t5forge.vocabularies import records, shards, tokenize

    tmp = tempfile.mkdtemp(prefix="tokenize-bench-")
    texts = [p.text for path in WET for p in wet.read_wet_file(path)]
    corpus = os.path.join(tmp, "corpus.json.gz")
    with gzip.open(corpus, "wt", encoding="utf-8") as f:
        for _ in range(args.copies):
            for text in texts:
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    sample = os.path.join(tmp, "sample.txt")
    with open(sample, "w", encoding="utf-8") as f:
        f.write("\n".join(line for t in texts for line in t.split("\n") if line.strip()))
    sentencepiece.SentencePieceTrainer.train(
        input=sample,
        model_prefix=os.path.join(tmp, "m"),
        vocab_size=args.vocab_size,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
        input_sentence_size=300000,
        shuffle_input_sentence=True,
    )
    model = os.path.join(tmp, "m.model")
    mb = sum(len(t.encode("utf-8")) for t in texts) * args.copies / 1e6
    print(
        f"{len(texts) * args.copies} documents, {mb:.1f} MB of text, "
        f"vocab {args.vocab_size} unigram, {os.cpu_count()} cores"
    )

    start = time.perf_counter()
    processor = sentencepiece.SentencePieceProcessor(model_file=model)
    plain = [processor.EncodeAsIds(doc) for doc in records.iter_documents(corpus)]
    t_plain = time.perf_counter() - start

    rows = [("plain sentencepiece loop", t_plain, "reference")]
    for workers in (1, 2):
        out = os.path.join(tmp, f"tokens-{workers}")
        start = time.perf_counter()
        tokenize.tokenize_corpus(f"{model}:100", [corpus], out, workers=workers, progress=False)
        elapsed = time.perf_counter() - start
        same = all(
            np.array_equal(a, b)
            for a, b in zip(shards.iter_token_documents(out), plain, strict=True)
        )
        rows.append(
            (
                f"t5forge tokenize, {workers} worker(s)",
                elapsed,
                "identical" if same else "DIFFERENT",
            )
        )

    print(f"\n{'run':<32}{'seconds':>9}{'MB/s':>8}{'vs plain':>10}  ids")
    for label, seconds, same in rows:
        print(f"{label:<32}{seconds:>9.2f}{mb / seconds:>8.2f}{t_plain / seconds:>9.2f}x  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
