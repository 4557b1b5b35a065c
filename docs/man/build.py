#!/usr/bin/env python3
"""Builds the man pages from their Markdown pages in docs/man (the same text the docs link):
docs/man/build.py OUT_DIR VERSION DATE writes OUT_DIR/bty.1.gz and OUT_DIR/bty-web.8.gz.

The Markdown is a small, fixed subset, so the conversion is ours and exact:
  first line      `% NAME(SECTION) | TITLE`
  `# HEADING`     a section (.SH, upper-cased)
  `## HEADING`    a subsection (.SS)
  `` `--opt ARG` `` alone on a line, then lines starting with `: `: an option (.TP); the test
                  tests/it/man.rs compares these with each command's --help
  `- item`        a bullet (.IP)
  fenced code     a literal block (.nf)
  other lines     paragraphs (.PP), with `code` bold and *word* italic
Reproducible: the date is an argument and gzip stores no name or time.
"""
import gzip
import io
import re
import sys
from pathlib import Path


def escape(text):
    text = text.replace("\\", "\\e")
    text = text.replace("-", "\\-")
    return text


def inline(text):
    out = []
    for i, part in enumerate(re.split(r"`([^`]*)`", text)):
        if i % 2:
            out.append("\\fB" + escape(part) + "\\fR")
        else:
            part = escape(part)
            part = re.sub(r"\*([^*\s][^*]*)\*", r"\\fI\1\\fR", part)
            out.append(part)
    line = "".join(out)
    # A line starting with . or ' would be a request to roff.
    if line.startswith((".", "'")):
        line = "\\&" + line
    return line


def convert(md, version, date):
    lines = md.splitlines()
    head = re.match(r"^% ([a-z-]+)\((\d)\) \| (.+)$", lines[0])
    if not head:
        sys.exit(f"man/build.py: the first line must be `% NAME(SECTION) | TITLE`: {lines[0]!r}")
    name, section, title = head.groups()
    out = [f'.TH "{name.upper()}" "{section}" "{date}" "bty {version}" "{title}"']
    in_code = False
    para = False
    for raw in lines[1:]:
        line = raw.replace("@VERSION@", version)
        if line.startswith("```"):
            if in_code:
                out += [".fi", ".RE"]
            else:
                out += [".RS 4", ".nf"]
            in_code = not in_code
            para = False
            continue
        if in_code:
            out.append(escape(line) if not line.startswith((".", "'")) else "\\&" + escape(line))
            continue
        if not line.strip():
            para = False
            continue
        if line.startswith("## "):
            out.append(".SS " + inline(line[3:]))
            para = False
        elif line.startswith("# "):
            out.append(".SH " + inline(line[2:].upper()))
            para = False
        elif re.match(r"^`-[^`]*`$", line):
            out += [".TP", inline(line)]
            para = True
        elif line.startswith(": "):
            out.append(inline(line[2:]))
        elif line.startswith("- "):
            out += [".IP \\(bu 2", inline(line[2:])]
            para = True
        else:
            if not para:
                out.append(".PP")
                para = True
            out.append(inline(line))
    if in_code:
        sys.exit("man/build.py: a code block is not closed")
    return name, section, "\n".join(out) + "\n"


def main():
    out_dir, version, date = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    out_dir.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).parent
    for src in sorted(here.glob("*.md")):
        name, section, roff = convert(src.read_text(), version, date)
        target = out_dir / f"{name}.{section}.gz"
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
            gz.write(roff.encode())
        target.write_bytes(buf.getvalue())
        print(f"man: {target}")


if __name__ == "__main__":
    main()
