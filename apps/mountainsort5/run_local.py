#!/usr/bin/env python3
"""Run the mountainsort5 processor on local files (or an http(s) input) without a Dendro central.

The context is assembled the way the dendro 0.2.17 SDK assembles it in a job (`_run_job_child_process`):
a ContextObject with every parameter of spec.json, the job's value or else the spec's default (a required
parameter left out holds pydantic's Undefined, as in a job), dotted names as nested objects, the input as
an SDK InputFile (an http(s) URL is streamed with remfile, as a job's signed URL is) and the output as an
SDK OutputFile that `upload()` moves to the given path.

    python run_local.py INPUT.nwb|URL OUTPUT.nwb [--param NAME=VALUE ...] [--omit NAME ...]
    e.g. python run_local.py rec.nwb sorted.nwb --param electrical_series_path=/acquisition/ElectricalSeries \
             --param scheme=1 --param preprocessing.whiten=false

VALUE is read as JSON when it parses (1, 2.5, true, "text"), else as a string. The last line printed is
JSON: {"ok", "wall_sec", "peak_rss_mb", "error"}; the exit status is 0 on success, 1 on failure.
"""

import argparse
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(APP_DIR))


def build_context(input_ref: str, output_path: str, params: dict, omit=()):
    from dendro.sdk import InputFile, OutputFile
    from dendro.sdk._run_job_child_process import ContextObject
    try:
        from pydantic_core import PydanticUndefined
    except ImportError:  # pydantic v1
        PydanticUndefined = None

    spec = json.loads((APP_DIR / "spec.json").read_text())
    processor = next(p for p in spec["processors"] if p["name"] == "mountainsort5")
    known = {p["name"] for p in processor["parameters"]}
    unknown = set(params) - known
    if unknown:
        raise SystemExit(f"run_local.py: unknown parameter(s) {', '.join(sorted(unknown))}")
    context = ContextObject()
    if input_ref.startswith(("http://", "https://")):
        context._dendro_set_attribute("input", InputFile(name="input", url=input_ref))
    else:
        context._dendro_set_attribute("input", InputFile(name="input", local_file_name=str(Path(input_ref).resolve())))
    context._dendro_set_attribute("output", OutputFile(name="output", output_file_name=str(Path(output_path).resolve())))
    for parameter in processor["parameters"]:
        name = parameter["name"]
        if name in params:
            value = params[name]
        elif name in omit:
            value = PydanticUndefined
        else:
            value = parameter.get("default", PydanticUndefined)
        context._denro_set_attribute_where_name_may_have_dots(name, value)
    return context


def _parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="input NWB file (path) or http(s) URL")
    parser.add_argument("output", help="output NWB path")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--omit", action="append", default=[], metavar="NAME",
                        help="leave a parameter unset, as a job that does not give it")
    args = parser.parse_args(argv)
    params = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--param {item!r} is not NAME=VALUE")
        params[name] = _parse_value(value)

    t0 = time.monotonic()
    error = None
    try:
        from main import Mountainsort5Processor
        Mountainsort5Processor.run(build_context(args.input, args.output, params, args.omit))
    except Exception as exc:  # noqa: BLE001 - report it as the SDK's console output would show it
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sys.stdout.flush()
    print(json.dumps({"ok": error is None, "wall_sec": round(time.monotonic() - t0, 2),
                      "peak_rss_mb": round(peak_kb / 1024, 1), "error": error}), flush=True)
    return 0 if error is None else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
