#!/usr/bin/env python3
"""Lists Rust functions longer than a limit (default 80 lines) outside tests.

Issue 9's rule: no function over ~80 lines outside tables and tests. This
is a lexer-level check, not a parser: it blanks comments, strings and char
literals, finds each `fn name`, and measures from that line to the line of
the brace closing its body. Skipped: files named `tests.rs`, `*_tests.rs`,
`test_support.rs` or under a `tests/` directory, and every item marked
`#[cfg(test)]` or `#[test]`. A table (a function that is one data literal)
may be exempted by a line `// fn-lengths: table` right above the function
(above its doc comment and attributes, or between them).

    scripts/fn-lengths.py [--max N] [PATH ...]   # default PATH: src fuzz benches

Exits 1 and prints `lines path:line name` for each function over the limit.
"""
import argparse
import os
import re
import sys

MARKER = "fn-lengths: table"


def blank(text):
    """`text` with comments, strings and char literals replaced by spaces
    (newlines kept, so offsets and line numbers stay the same)."""
    out = list(text)
    i, n = 0, len(text)

    def wipe(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            wipe(i, j)
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            wipe(i, j)
            i = j
        elif m := re.compile(r'b?r(#*)"').match(text, i):
            if i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_"):
                i += 1
                continue
            close = '"' + m.group(1)
            j = text.find(close, m.end())
            j = n if j < 0 else j + len(close)
            wipe(i, j)
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            wipe(i, j + 1)
            i = j + 1
        elif c == "'":
            m = re.compile(r"'(\\(u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'").match(text, i)
            if m:
                wipe(i, m.end())
                i = m.end()
            else:
                i += 1  # a lifetime
        else:
            i += 1
    return "".join(out)


def item_end(code, start):
    """Offset just past the item starting at `start`: its first `;` or its
    body's closing brace, whichever comes first at bracket depth 0."""
    depth, i, n = 0, start, len(code)
    while i < n:
        c = code[i]
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == ";" and depth == 0:
            return i + 1, False
        elif c == "{" and depth == 0:
            braces = 0
            while i < n:
                if code[i] == "{":
                    braces += 1
                elif code[i] == "}":
                    braces -= 1
                    if braces == 0:
                        return i + 1, True
                i += 1
            return n, True
        i += 1
    return n, False


def is_test_file(path):
    name = os.path.basename(path)
    parts = path.split(os.sep)
    return (
        name in ("tests.rs", "test_support.rs")
        or name.endswith("_tests.rs")
        or "tests" in parts[:-1]
    )


def marked_table(lines, fn_line):
    """Whether `// fn-lengths: table` sits above the function, among its
    doc comments and attributes."""
    k = fn_line - 1
    while k >= 0:
        s = lines[k].strip()
        if MARKER in s:
            return True
        if s.startswith("///") or s.startswith("#[") or s.startswith("//"):
            k -= 1
            continue
        return False
    return False


def long_functions(path, limit):
    text = open(path, encoding="utf-8").read()
    code = blank(text)
    lines = text.split("\n")
    line_of = lambda off: code.count("\n", 0, off)  # noqa: E731
    skipped = []  # (start, end) offsets of test items
    for m in re.finditer(r"#\[\s*(cfg\(\s*test\s*\)|test|tokio::test[^\]]*)\s*\]", code):
        end, _ = item_end(code, m.end())
        skipped.append((m.start(), end))
    found = []
    for m in re.finditer(r"\bfn\s+(\w+)", code):
        if any(a <= m.start() < b for a, b in skipped):
            continue
        end, has_body = item_end(code, m.end())
        if not has_body:
            continue
        first, last = line_of(m.start()), line_of(end - 1)
        count = last - first + 1
        if count > limit and not marked_table(lines, first):
            found.append((count, path, first + 1, m.group(1)))
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max", type=int, default=80)
    ap.add_argument("paths", nargs="*", default=["src", "fuzz", "benches"])
    args = ap.parse_args()
    found = []
    for top in args.paths:
        walk = [(top, [], [""])] if os.path.isfile(top) else os.walk(top)
        for root, dirs, files in walk:
            dirs[:] = [d for d in dirs if d not in ("target", ".git")]
            for f in files:
                p = os.path.join(root, f) if f else root
                if p.endswith(".rs") and not is_test_file(p):
                    found += long_functions(p, args.max)
    for count, path, line, name in sorted(found, reverse=True):
        print(f"{count} {path}:{line} {name}")
    if found:
        print(f"error: {len(found)} function(s) over {args.max} lines (issue 9)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
