#!/usr/bin/env python3
"""Puts a section into BENCHMARKS.md in place of its previous run.

    benchmarks-section.py BENCHMARKS.md "## Title prefix" SECTION.md

The section that starts with the prefix is taken out (up to the next
`## `), and the new one goes at the end, where `make bench` keeps it.
"""
import sys

path, prefix, section = sys.argv[1], sys.argv[2], open(sys.argv[3]).read()
try:
    text = open(path).read()
except FileNotFoundError:
    text = "# shoal benchmarks\n"
at = text.find("\n" + prefix)
if at >= 0:
    rest = text.find("\n## ", at + 1)
    text = text[:at] + ("" if rest < 0 else text[rest:])
open(path, "w").write(text.rstrip("\n") + "\n\n" + section.strip("\n") + "\n")
