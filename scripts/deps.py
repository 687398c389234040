#!/usr/bin/env python3
"""Dependency graph between the library's top-level modules, and its cycles.

Usage:
    python3 scripts/deps.py            # modules, what each uses, cycles between them
    python3 scripts/deps.py --files    # also cycles between files inside one top-level module
    python3 scripts/deps.py --tests    # count test code too

Reads src/**/*.rs (standard library only). A top-level module is a file or folder
directly under src/; src/main.rs and src/cli.rs are the binary and left out, src/lib.rs
only declares modules. Dependencies are the paths that start with `crate::`, `super::`
or `self::`, in `use` trees (grouped ones too) and inline in code; `super::` is
resolved against the module it is written in, inline `mod x { }` blocks included.
Comments and string literals are ignored, and so is test code (`#[cfg(test)]` modules and
`use` items) unless --tests is given: a test may drive a file through the layers above it.

With --files, an edge from a folder's mod.rs to a file below it is not counted:
declaring and re-exporting children is structure, not a dependency.

Exit status: 1 when a cycle exists outside lua/ (lua/ files may refer to each other),
0 otherwise.
"""

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
BINARY = {"main.rs", "cli.rs"}

# Comments, string literals (raw ones too) and char literals, blanked before parsing.
NOISE = re.compile(
    r"//[^\n]*|/\*.*?\*/"
    r'|(?<!\w)b?r(#*)".*?"\1'
    r'|b?"(?:\\.|[^"\\])*"'
    r"|b?'(?:\\.|[^'\\])'",
    re.S,
)
TEST = r"#\[cfg\(test\)\]\s*"
TOKEN = re.compile(
    rf"(?P<test_use>{TEST}use\s)"
    rf"|(?P<test>{TEST})?\bmod\s+(?P<mod>\w+)\s*\{{"
    r"|[{}]|(?<![\w$])(?:crate|super|self)(?=\s*::)"
)


def blank(text):
    """Replaces comments and literals by spaces, keeping newlines so line numbers hold."""
    return NOISE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def module_of(path):
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return tuple(parts)


def parse_tree(text, i):
    """Parses a path or use tree at text[i:]; returns (list of segment lists, end index)."""
    segments = []
    while True:
        m = re.compile(r"\s*(\w+|\*|\{)").match(text, i)
        if not m:
            return [segments], i
        if m.group(1) == "{":
            i, paths = m.end(), []
            while True:
                sub, i = parse_tree(text, i)
                paths += [segments + s for s in sub]
                m = re.compile(r"\s*(?:as\s+\w+\s*)?([,}])").match(text, i)
                if not m:
                    return paths, i
                i = m.end()
                if m.group(1) == "}":
                    return paths, i
                if re.compile(r"\s*\}").match(text, i):
                    return paths, re.compile(r"\s*\}").match(text, i).end()
        segments.append(m.group(1))
        i = m.end()
        sep = re.compile(r"\s*::").match(text, i)
        if not sep:
            return [segments], i
        i = sep.end()


def resolve(segments, here):
    """Turns crate::/super::/self:: segments into an absolute module path."""
    path = list(here)
    head, *rest = segments
    if head == "crate":
        path = []
    elif head == "super":
        path.pop()
    while rest and rest[0] == "super":
        path.pop()
        rest.pop(0)
    return path + [s for s in rest if s not in ("self", "*")]


def references(path, modules, tests):
    """Yields (absolute module path, line) for each crate-local path in one file."""
    text = blank(path.read_text())
    here = list(modules[path])
    stack = []  # (brace depth at which an inline module closes, whether it is test code)
    depth, skip_to = 0, 0
    for m in TOKEN.finditer(text):
        tok = m.group(0)
        test_code = m.start() < skip_to or any(test for _, test in stack)
        if m.group("test_use"):
            if not tests:
                skip_to = text.index(";", m.end())
        elif m.group("mod"):
            depth += 1
            here.append(m.group("mod"))
            stack.append((depth, bool(m.group("test")) and not tests))
        elif tok == "{":
            depth += 1
        elif tok == "}":
            if stack and stack[-1][0] == depth:
                stack.pop()
                here.pop()
            depth -= 1
        elif not test_code:
            line = text.count("\n", 0, m.start()) + 1
            for segments in parse_tree(text, m.start())[0]:
                yield resolve(segments, here), line


def file_for(target, by_module):
    """The file that defines the longest known prefix of a module path."""
    for n in range(len(target), 0, -1):
        if tuple(target[:n]) in by_module:
            return by_module[tuple(target[:n])]
    return None


def cycles(graph):
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def report_cycles(title, graph, where):
    found = cycles(graph)
    for component in found:
        print(f"{title}: {' <-> '.join(component)}")
        for a in component:
            for b in sorted(graph[a]):
                if b in component:
                    print(f"    {a} -> {b}  ({where[a, b]})")
    return found


def main():
    files = sorted(
        p for p in SRC.rglob("*.rs") if p.relative_to(SRC).as_posix() not in BINARY | {"lib.rs"}
    )
    modules = {p: module_of(p) for p in files}
    by_module = {m: p for p, m in modules.items()}
    name = {p: p.relative_to(SRC).as_posix() for p in files}

    top, top_where = {module_of(p)[0]: set() for p in files}, {}
    file_graph, file_where = {}, {}
    for path in files:
        source = modules[path][0]
        for target, line in references(path, modules, "--tests" in sys.argv[1:]):
            if not target or target[0] not in top:
                continue
            if target[0] != source:
                top[source].add(target[0])
                top_where.setdefault((source, target[0]), f"{name[path]}:{line}")
                continue
            other = file_for(target, by_module)
            structural = path.name == "mod.rs" and other.is_relative_to(path.parent)
            if other in (None, path) or structural:
                continue
            a, b = name[path], name[other]
            file_graph.setdefault(a, set()).add(b)
            file_where.setdefault((a, b), f"{name[path]}:{line}")

    for module in sorted(top):
        print(f"{module}: {', '.join(sorted(top[module])) or '-'}")
    print()
    failing = report_cycles("cycle", top, top_where)
    if "--files" in sys.argv[1:]:
        found = report_cycles("file cycle", file_graph, file_where)
        failing += [c for c in found if not all(f.startswith("lua/") for f in c)]
    if not failing:
        print("no cycles" + (" outside lua/" if "--files" in sys.argv[1:] else ""))
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
