// Package jinja is a Jinja2 interpreter for Hugging Face chat templates. It renders
// the way transformers' apply_chat_template does (an ImmutableSandboxedEnvironment
// with trim_blocks, lstrip_blocks, no autoescape, keep_trailing_newline off), with
// Python value semantics where templates depend on them.
//
// Supported: text, {{ }}, {% %}, {# #} with "-" whitespace control; if/elif/else,
// for (with else, a filter clause, tuple unpacking, loop.* and break/continue),
// set (names, tuple unpacking, namespace attributes, block set), macro and call,
// filter blocks, transformers' generation tag; literals, lists, dicts, tuples,
// attribute and item access, slices with steps, calls with keyword arguments,
// Python operators (// and % floor semantics, ** , ~, in, not in, chained and/or
// returning operands, inline if/else); the filters and tests HF templates use, the
// Python str/dict/list methods they call (strip, split, startswith, items, get, ...),
// and the globals range, namespace, dict, raise_exception and strftime_now.
//
// Invariants:
//
//   - Parse reports every syntax error and unknown tag at parse time; a parsed
//     Template is immutable and safe for concurrent Render calls.
//   - tojson is byte-identical to Python's json.dumps(x, ensure_ascii=False) with
//     transformers' arguments: ", " and ": " separators (", " becomes "," with an
//     indent), key order preserved, non-ASCII kept, floats in Python repr.
//   - {{ x }} prints Python's str(x): None, True, [1, 'a'], {'k': 'v'}, 1.0.
//   - Values decoded by FromJSON keep object key order and the int/float
//     distinction, as json.loads does.
//   - Render never panics and never runs unbounded: it stops with an error after
//     a fixed number of steps or a fixed output size.
//
// testdata/cases.json holds templates exercising these semantics; their outputs
// under Python's jinja2 in transformers' environment (testdata/gen_cases.py) are
// in testdata/golden.json and TestPythonGolden compares. Known differences, none
// used by the chat templates tested: tuples are lists (a printed tuple shows
// [1, 2], not (1, 2)); an undefined value's attribute is undefined rather than an
// error; {% raw %}, {% include %}, {% extends %} and recursive loops are parse
// errors.
package jinja
