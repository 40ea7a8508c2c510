#!/usr/bin/env python3
"""Checks that every pgolf command written in the docs parses.

usage: doc_commands.py PGOLF REPO_ROOT

Reads README.md, demo/README.md and docs/*.md; takes the commands in ```sh
blocks (backslash continuations joined) and in inline `pgolf ...` spans; for
each one asks `PGOLF <subcommand> --help` and fails when the subcommand or any
--flag it names (also inside [optional] brackets and a|b alternatives) is not
there. Also fails when a named `scripts/*.sh` does not exist. A built-in self
test first makes sure a wrong flag and a wrong subcommand are caught.
"""
import os
import re
import subprocess
import sys

# "pgolf" as a command word (a path ending in /pgolf too), not as a value such as PG=build/pgolf.
PGOLF_RE = re.compile(r"(?:^|[\s;&|(])(?:[^\s=]*/)?pgolf\s+(.*)$")
SUBGROUPS = {"data"}  # subcommands whose first word is itself a subcommand


def commands_in(text):
    """(line number, command text) for each command in a markdown file."""
    out = []
    lines = text.split("\n")
    in_sh = False
    pending, start = "", 0
    for n, line in enumerate(lines, 1):
        fence = line.strip().startswith("```")
        if fence:
            in_sh = (not in_sh) and line.strip() in ("```sh", "```bash", "```console")
            continue
        if in_sh:
            code = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
            if not pending:
                start = n
            pending += code.rstrip("\\").rstrip() + " "
            if not code.rstrip().endswith("\\"):
                out.append((start, pending.strip()))
                pending = ""
        else:
            for span in re.findall(r"`([^`]*)`", line):
                if re.match(r"(?:\S*/)?pgolf\s+[a-z]", span) or "scripts/" in span:
                    out.append((n, span))
    return out


def pgolf_invocations(cmd):
    """The argument strings after each 'pgolf' word of a shell command."""
    found = []
    for part in re.split(r"\|\||&&|;|\$\(|\)", cmd):
        m = PGOLF_RE.search(part)
        if m:
            found.append(m.group(1))
    return found


class HelpCache:
    def __init__(self, pgolf):
        self.pgolf = pgolf
        self.cache = {}

    def help(self, words):
        key = tuple(words)
        if key not in self.cache:
            p = subprocess.run([self.pgolf, *words, "--help"], capture_output=True, text=True)
            self.cache[key] = p.stdout if p.returncode == 0 else None
        return self.cache[key]


def check_invocation(args, helps):
    """Problems with one 'pgolf ARGS' invocation (empty when it parses)."""
    words = args.split()
    if not words:
        return ["no subcommand"]
    sub = [words[0]]
    if words[0] in SUBGROUPS and len(words) > 1 and not words[1].startswith("-"):
        sub.append(words[1])
    if any(not re.fullmatch(r"[a-z][a-z0-9-]*", w) for w in sub):
        return []  # a placeholder such as 'pgolf <command>' or prose
    for depth in range(len(sub)):
        parent = helps.help(sub[:depth])
        listed = parent.split("Subcommands:")[-1] if parent and "Subcommands:" in parent else ""
        if not re.search(r"^\s+%s\s" % re.escape(sub[depth]), listed, re.M):
            return ["unknown subcommand '%s'" % " ".join(sub[:depth + 1])]
    text = helps.help(sub)
    if text is None:
        return ["'%s --help' fails" % " ".join(sub)]
    known = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))
    problems = []
    for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", args):
        if flag not in known:
            problems.append("'%s' has no flag %s" % (" ".join(sub), flag))
    return problems


def check_file(path, root, helps):
    problems = []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for line, cmd in commands_in(text):
        for script in re.findall(r"(scripts/[\w.-]+\.(?:sh|py))", cmd):
            if not os.path.exists(os.path.join(root, script)):
                problems.append("%s:%d: %s does not exist" % (path, line, script))
        for args in pgolf_invocations(cmd):
            for p in check_invocation(args, helps):
                problems.append("%s:%d: %s   [%s]" % (path, line, p, cmd[:100]))
    return problems


def self_test(helps, root):
    import tempfile
    bad = "```sh\npgolf eval --model m.h5 --no-such-flag 1\npgolf no-such-command --x\n```\n" \
          "Inline: `pgolf data build --docs d --bogus`, and `bash scripts/none.sh`.\n"
    with tempfile.NamedTemporaryFile("w", suffix=".md", delete=False) as f:
        f.write(bad)
    try:
        found = check_file(f.name, root, helps)
    finally:
        os.unlink(f.name)
    want = ["--no-such-flag", "no-such-command", "--bogus", "scripts/none.sh"]
    missing = [w for w in want if not any(w in p for p in found)]
    if missing:
        print("doc_commands: self test failed, not caught: %s" % missing, file=sys.stderr)
        sys.exit(1)


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    pgolf, root = sys.argv[1], sys.argv[2]
    helps = HelpCache(pgolf)
    self_test(helps, root)
    files = [os.path.join(root, "README.md"), os.path.join(root, "demo", "README.md")]
    docs = os.path.join(root, "docs")
    files += sorted(os.path.join(docs, f) for f in os.listdir(docs) if f.endswith(".md"))
    problems, count = [], 0
    for path in files:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                count += sum(len(pgolf_invocations(c)) for _, c in commands_in(f.read()))
            problems += check_file(path, root, helps)
    for p in problems:
        print(p, file=sys.stderr)
    print("doc_commands: %d pgolf commands in %d files, %d problems" % (count, len(files), len(problems)))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
