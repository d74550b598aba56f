#!/usr/bin/env python3
"""Writes a C++ header holding a text file as a raw string literal.

  embed_text.py INPUT OUTPUT NAME

so that the d9d binary carries examples/specs/llama_hf_to_fused.json and `d9d demo` runs from any
directory.
"""
import os
import sys

src, out, name = sys.argv[1:4]
with open(src, encoding="utf-8") as f:
    text = f.read()
delim = "d9d_embedded"
if ")" + delim + '"' in text:
    sys.exit(f"embed_text.py: {src} contains the raw-string delimiter")
with open(out, "w", encoding="utf-8") as f:
    f.write(f"// Generated from {os.path.basename(src)} by d9d/cli/embed_text.py; do not edit.\n")
    f.write("#pragma once\n\n#include <string_view>\n\nnamespace d9d::cli {\n\n")
    f.write(f'inline constexpr std::string_view {name} = R"{delim}({text}){delim}";\n\n')
    f.write("}  // namespace d9d::cli\n")
