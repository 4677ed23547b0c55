"""The stage command line: lists stages, builds each stage's `--help` from its Params, applies overrides."""
from __future__ import annotations

import argparse
import ast
import importlib
import os
import sys
import textwrap
from pathlib import Path

from pipeline.config import ParamsError, describe, load_section, shared_sections
from stages import STAGES

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}


def _summary(stage: str) -> str:
    """First docstring line of stages/<stage>.py, read without importing it."""
    path = Path(__file__).with_name(f"{stage}.py")
    if not path.exists():
        return "(not available in this checkout)"
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _top_help() -> str:
    lines = ["usage: python -m stages <stage> [--params params.yaml] [key=value ...] [stage flags]", "", "stages:"]
    lines += [f"  {s:<10} {_summary(s)}" for s in STAGES]
    lines += [
        "",
        "Each stage reads its section of params.yaml; key=value overrides are type-checked and unknown keys are",
        "rejected. `python -m stages <stage> --help` lists a stage's parameters with their defaults.",
        "Hub access is online only when you unset HF_HUB_OFFLINE (the default here is offline).",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        import difflib

        close = difflib.get_close_matches(stage, STAGES, n=1)
        print(f"unknown stage {stage!r}" + (f"; did you mean {close[0]!r}?" if close else ""), file=sys.stderr)
        print(_top_help(), file=sys.stderr)
        return 2
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    module = importlib.import_module(f"stages.{stage}")
    section = getattr(module, "SECTION", stage)
    table = "\n".join(
        f"  {key} = {default}\n{textwrap.indent(textwrap.fill(help_, 100), '      ')}" if help_ else f"  {key} = {default}"
        for key, default, help_ in describe(module.Params)
    )
    parser = argparse.ArgumentParser(
        prog=f"python -m stages {stage}",
        description=module.__doc__,
        epilog=f"parameters (section {section!r} of params.yaml; override with key=value):\n{table}" + "".join(
            f"\n\n[{name}]: read from the shared `{name}:` section of params.yaml; a key set in the {section!r} section "
            f"overrides it for this stage only (on the command line: key=value here, {name}.key=value for the shared "
            "value)" for name in shared_sections(module.Params)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="type-checked parameter overrides")
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    args = parser.parse_intermixed_args(rest)  # overrides may come before or after flags
    try:
        params = load_section(module.Params, section, args.params, args.overrides)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = module.run(params, args)
    return int(result or 0)
