"""Real English sentences without a download: short chat-style lines plus sentences taken from the
documentation strings of the Python standard library (fixed module list, deterministic order).

Used as calibration and evaluation text for sentence encoders: very short inputs are where INT8
encoders lose most accuracy (measured: cosine 0.84 on "OK"-like inputs with stock settings), so
they are always included.
"""

from __future__ import annotations

import importlib
import inspect
import re

SHORT = [
    "Hi.", "OK", "No", "Yes!", "Thanks", "Hello there", "Why?", "Sure.", "Good morning", "Stop",
    "Help!", "Not now", "Maybe later", "I agree.", "Go", "Wait", "Really?", "Nice one", "Sounds good", "Bye",
    "Cheers", "Done.", "Hmm", "Great job!", "See you", "Call me", "Sorry", "Of course", "Why not?", "Fine",
    "What time is it?", "Open the door", "It is raining.", "Coffee?", "Let's go!", "Lunch at noon",
    "The cat sleeps.", "I love pizza", "Turn left", "Happy birthday!", "Red", "Paris", "42", "Python", "Music",
]

_MODULES = [
    "json", "argparse", "collections", "pathlib", "subprocess", "threading", "logging", "csv", "datetime",
    "functools", "itertools", "shutil", "tempfile", "socket", "email.message", "http.client", "urllib.parse",
    "random", "statistics", "decimal", "fractions", "heapq", "bisect", "textwrap", "difflib", "zipfile",
    "tarfile", "gzip", "sqlite3", "unittest", "doctest", "pdb", "timeit", "asyncio.queues", "queue",
    "contextlib", "dataclasses", "enum", "typing", "inspect", "string", "calendar", "configparser",
]
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def corpus_sentences(limit: int | None = None) -> list[str]:
    """Sentences of 4-60 words from standard-library docstrings, de-duplicated, in a fixed order."""
    seen: set[str] = set()
    out: list[str] = []
    for name in _MODULES:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module) or ""]
        for _, member in sorted(inspect.getmembers(module), key=lambda kv: kv[0]):
            if inspect.isclass(member) or inspect.isfunction(member):
                docs.append(inspect.getdoc(member) or "")
        for doc in docs:
            text = " ".join(doc.split())
            for sentence in _SENTENCE.split(text):
                words = sentence.split()
                if 4 <= len(words) <= 60 and sentence[0].isupper() and sentence.endswith(".") \
                        and not any(ch in sentence for ch in "{}[]=>|\\") and sentence not in seen:
                    seen.add(sentence)
                    out.append(sentence)
    return out[:limit] if limit else out


def calibration_and_eval(n_calibration: int = 160, n_eval: int = 200) -> tuple[list[str], list[str]]:
    """Disjoint calibration and evaluation sets; each holds short lines as well as long ones."""
    corpus = corpus_sentences()
    calib = SHORT[::2] + corpus[0:2 * n_calibration:2][:n_calibration]
    evaluation = SHORT[1::2] + corpus[1:2 * n_eval:2][:n_eval]
    return calib, evaluation
