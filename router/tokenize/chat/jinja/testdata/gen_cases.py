"""gen_cases.py renders cases.json's templates with Python's jinja2 in transformers'
chat-template environment and writes the outputs to golden.json, which
jinja_golden_test.go compares against.

    python3 router/tokenize/chat/jinja/testdata/gen_cases.py   # needs jinja2 3.x
"""
import json
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "../../testdata/gen"))

import jinja2  # noqa: E402
from jinja2.ext import loopcontrols  # noqa: E402
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception

with open(os.path.join(here, "cases.json")) as f:
    cases = json.load(f)
out = []
for c in cases:
    try:
        r = {"out": env.from_string(c["t"]).render(**c.get("vars", {}))}
    except Exception as e:
        r = {"error": type(e).__name__ + ": " + str(e)}
    out.append(r)
with open(os.path.join(here, "golden.json"), "w") as f:
    json.dump(out, f, ensure_ascii=False, indent=1)
print(len(out), "cases")
