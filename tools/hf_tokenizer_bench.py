#!/usr/bin/env python3
"""hf_tokenizer_bench.py — the peer of bench/tokenizer_bench.cpp: Hugging Face `tokenizers` encode
throughput on the same corpus file (JSON lines, one document per line), and a check that its ids equal
dseek's. Python is only an outside reference here (DESIGN.md tools/); nothing in dseek needs it.

Thread count is fixed when `tokenizers` starts its Rayon pool, so scripts/bench-tokenizer runs this
script twice: once with RAYON_NUM_THREADS=1 (one thread) and once without (all threads).

usage: hf_tokenizer_bench.py --tokenizer DIR/tokenizer.json --corpus corpus.jsonl
                             [--reps 3] [--compare dseek_ids.jsonl] [--json-out result.json]
"""
import argparse
import json
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True, help="path to tokenizer.json")
    ap.add_argument("--corpus", required=True, help="JSON lines, one document (a string) per line")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--compare", help="dseek's ids (JSON lines, one list per document) to check against")
    ap.add_argument("--json-out", help="write the figures here as JSON")
    args = ap.parse_args()

    import tokenizers  # imported late: RAYON_NUM_THREADS must be set before the pool starts

    with open(args.corpus, encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    mb = nbytes / 1e6

    t0 = time.perf_counter()
    tok = tokenizers.Tokenizer.from_file(args.tokenizer)
    load_s = time.perf_counter() - t0

    def best(fn):
        b = float("inf")
        for _ in range(args.reps):
            t = time.perf_counter()
            fn()
            b = min(b, time.perf_counter() - t)
        return b

    t0 = time.perf_counter()
    ids = [tok.encode(d, add_special_tokens=False).ids for d in docs]
    cold_s = time.perf_counter() - t0
    one_s = best(lambda: [tok.encode(d, add_special_tokens=False) for d in docs])
    batch_s = best(lambda: tok.encode_batch(docs, add_special_tokens=False))
    batch_ids = [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
    assert batch_ids == ids, "encode_batch and encode disagree"
    threads = os.environ.get("RAYON_NUM_THREADS") or str(os.cpu_count())

    result = {
        "impl": "hf-tokenizers " + tokenizers.__version__,
        "documents": len(docs),
        "bytes": nbytes,
        "tokens": sum(len(x) for x in ids),
        "rayon_threads": threads,
        "load_seconds": load_s,
        "mbps_1thread_cold": mb / cold_s,
        "mbps_1thread": mb / one_s,
        "mbps_encode_batch": mb / batch_s,
    }
    print(f"HF tokenizers {tokenizers.__version__} (RAYON_NUM_THREADS={threads}): {len(docs)} documents, "
          f"{mb:.2f} MB, {result['tokens']} tokens, load {load_s:.2f} s")
    print(f"  encode, per document (cold)  {mb / cold_s:8.2f} MB/s")
    print(f"  encode, per document         {mb / one_s:8.2f} MB/s")
    print(f"  encode_batch                 {mb / batch_s:8.2f} MB/s")

    if args.compare:
        with open(args.compare, encoding="utf-8") as f:
            theirs = [json.loads(line) for line in f if line.strip()]
        bad = [i for i, (a, b) in enumerate(zip(ids, theirs)) if a != b]
        if len(theirs) != len(ids):
            print(f"  ids: dseek has {len(theirs)} documents, HF {len(ids)}")
            bad.append(-1)
        result["mismatching_documents"] = len(bad)
        print(f"  ids: {len(bad)} of {len(ids)} documents differ from dseek's")
        for i in bad[:3]:
            if i < 0:
                continue
            a, b = ids[i], theirs[i]
            k = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
            print(f"    document {i}: first difference at token {k}: HF {a[k:k + 8]} dseek {b[k:k + 8]}")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
