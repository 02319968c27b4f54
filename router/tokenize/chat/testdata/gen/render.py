"""render.py renders chat templates exactly as transformers' apply_chat_template does.

gen.mjs runs it: stdin is {"template": str, "cases": [vars, ...]}; stdout is a JSON
list of {"prompt": str} or {"error": str}. It needs Python's jinja2 (Debian:
python3-jinja2). The environment, filters and globals below are copied from
transformers/utils/chat_template_utils.py (_compile_jinja_template).
"""
import json
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


def main():
    req = json.load(sys.stdin)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    tmpl = env.from_string(req["template"])
    out = []
    for v in req["cases"]:
        try:
            out.append({"prompt": tmpl.render(**v)})
        except Exception as e:  # a template's raise_exception, or a type error
            out.append({"error": str(e)})
    json.dump(out, sys.stdout, ensure_ascii=False)


main()
