"""The cost of `didi eval`'s metrics beyond perplexity on a realistic row, and the copy rate of held-out text
against the training split for several window lengths (what the default ``--copy-window`` rests on).

    python benchmarks/quality_metrics.py --tokenizer byte --seq-len 64 --samples 128 --windows 8,16,32,64
    python benchmarks/quality_metrics.py --tokenizer bpe --seq-len 64 --samples 128 --windows 4,8,16

A "row" is ``--samples`` held-out validation blocks of the embedded Shakespeare (standing in for samples: the
metrics do not care where tokens come from): rep-n over tokens and words, distinct-n, and the copy rate; the copy
index of the training split is built once per corpus, tokenizer and window, and timed apart.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from didi.data.corpora import DataConfig, prepare_data
from didi.recipes.evaluate.quality import CopyIndex, ppl_summary
from didi.recipes.evaluate.references import special_ids
from didi.recipes.evaluate.scoring import quality_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="shakespeare")
    parser.add_argument("--tokenizer", default="byte")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--windows", default="8,16,32,64")
    args = parser.parse_args()
    prepared = prepare_data(DataConfig(data=args.data, tokenizer=args.tokenizer, seq_len=args.seq_len),
                            progress=False)
    tokenizer, train = prepared.tokenizer, np.asarray(prepared.train.array)
    valid = np.asarray(prepared.valid.array)
    rows = valid[np.random.default_rng(0).permutation(len(valid))[:args.samples]].tolist()
    texts = [tokenizer.decode(r) for r in rows]
    stream, specials = train[:, 1:-1].ravel(), special_ids(tokenizer)
    print(f"{args.data}, {tokenizer.kind} tokenizer ({tokenizer.vocab_size} ids): {len(stream):,} training tokens, "
          f"a row of {len(rows)} held-out blocks of {args.seq_len} tokens")
    for k in (int(w) for w in args.windows.split(",")):
        start = time.perf_counter()
        index = CopyIndex.build(stream, k, specials, source=args.data)
        built = time.perf_counter() - start
        times = []
        for _ in range(5):
            start = time.perf_counter()
            metrics = quality_metrics(rows, texts, rows, index)
            ppl_summary(np.random.default_rng(0).uniform(100, 300, len(rows)), [args.seq_len] * len(rows))
            times.append(time.perf_counter() - start)
        print(f"k = {k:3d}: held-out copy rate {100 * metrics['copy_rate']:5.1f}%; index {len(index.hashes):,} "
              f"windows built in {built:.2f} s; rep-n, distinct-n, copy rate and gen-PPL summaries of the row in "
              f"{1000 * times[0]:.0f} ms (first), {1000 * min(times):.0f} ms (best of 5)")


if __name__ == "__main__":
    main()
