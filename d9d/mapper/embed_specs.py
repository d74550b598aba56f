#!/usr/bin/env python3
"""Writes a C++ header holding spec files as raw string literals, named by their file stems:

  embed_specs.py OUTPUT SPEC.json...

so that libd9d carries the built-in spec library (specs/*.json; Note [built-in specs] in
d9d/mapper/builtin_specs.cpp) and works from any directory, installed or not.
"""
import os
import sys

out, sources = sys.argv[1], sys.argv[2:]
delim = "d9d_embedded"
entries = []
for src in sorted(sources, key=os.path.basename):
    name = os.path.splitext(os.path.basename(src))[0]
    with open(src, encoding="utf-8") as f:
        text = f.read()
    if ")" + delim + '"' in text:
        sys.exit(f"embed_specs.py: {src} contains the raw-string delimiter")
    entries.append(f'    {{"{name}", R"{delim}({text}){delim}"}},\n')
with open(out, "w", encoding="utf-8") as f:
    f.write("// Generated from specs/*.json by d9d/mapper/embed_specs.py; do not edit.\n")
    f.write("#pragma once\n\n#include <string_view>\n#include <utility>\n\n")
    f.write("namespace d9d::mapper::detail {\n\n")
    f.write("// {name, spec text}, sorted by name.\n")
    f.write("inline constexpr std::pair<std::string_view, std::string_view> kBuiltinSpecTexts[] = {\n")
    f.write("".join(entries))
    f.write("};\n\n}  // namespace d9d::mapper::detail\n")
