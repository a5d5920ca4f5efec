"""Lines of a split and the tokenizer-independent counts behind bpc and word perplexity.

A split's text is cut at "\\n" (a final newline does not start another line; `\\r` and
other whitespace count as spaces). Each line is whitespace-normalized: its words joined by
single spaces. Every line counts, empty ones included (AWD-LSTM / PTB convention):

* n_words = sum over lines of (number of words + 1)   -- one `<eos>` per line
* n_chars = sum over lines of (len(normalized line) + 1)   -- one newline per line

In PTB character form (symbols separated by spaces, `_` between words) a line's symbols
are its characters and the runs of non-`_` symbols are its words, so the counts equal
those of the word text it was made from."""

from __future__ import annotations

WORD_BOUNDARY = "_"


def split_lines(text: str) -> list[list[str]]:
    """The whitespace-separated words of every line of `text`."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.split() for line in lines]


def has_words(lines: list[list[str]]) -> bool:
    """True when at least one line holds a word."""
    return any(lines)


def is_char_ptb_form(lines: list[list[str]]) -> bool:
    """Whether the text is already in PTB character form: it uses `_` as a symbol, or every
    whitespace-separated symbol is a single character."""
    single = True
    for words in lines:
        for w in words:
            if w == WORD_BOUNDARY:
                return True
            if len(w) != 1:
                single = False
    return single


def count_words(lines: list[list[str]], char_form: bool = False) -> int:
    """Words plus one end-of-line per line (see module docstring)."""
    if not char_form:
        return sum(len(words) + 1 for words in lines)
    total = 0
    for symbols in lines:
        in_word = False
        for s in symbols:
            if s == WORD_BOUNDARY:
                in_word = False
            elif not in_word:
                total += 1
                in_word = True
        total += 1
    return total


def count_chars(lines: list[list[str]], char_form: bool = False) -> int:
    """Characters of the normalized lines plus one newline per line."""
    if char_form:
        return sum(len(symbols) + 1 for symbols in lines)
    return sum(sum(len(w) for w in words) + max(len(words) - 1, 0) + 1 for words in lines)
