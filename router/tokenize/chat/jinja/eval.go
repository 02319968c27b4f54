package jinja

import (
	"errors"
	"fmt"
	"math"
	"strings"
)

// Template is a parsed template. It is immutable and safe for concurrent use.
type Template struct {
	body  []node
	plans []*loopPlan // the loops a render can resume (resume.go)
}

// Parse parses a template with the settings transformers renders chat templates
// with (trim_blocks, lstrip_blocks, no autoescape).
func Parse(src string) (*Template, error) {
	toks, err := lex(src)
	if err != nil {
		return nil, fmt.Errorf("parse template: %w", err)
	}
	p := &parser{toks: toks}
	body, _, err := p.parseBody()
	if err != nil {
		return nil, fmt.Errorf("parse template: %w", err)
	}
	t := &Template{body: body}
	t.plan()
	return t, nil
}

// ErrRaised is wrapped by Render errors that come from the template's own
// raise_exception call.
var ErrRaised = errors.New("template raised an exception")

// maxOutput bounds the rendered size so a hostile template or input cannot exhaust
// memory; maxSteps bounds the work of one render.
const (
	maxOutput = 64 << 20
	maxSteps  = 5_000_000
)

var (
	errBreak    = errors.New("break outside loop")
	errContinue = errors.New("continue outside loop")
)

// frame is a scope: a template, a loop iteration, a macro call. Its variables are a
// Dict, found by a scan while there are few of them, as in nearly every frame (a loop
// iteration binds its item and loop): a map per frame was a hash per lookup and an
// assignment and a clear per iteration.
type frame struct {
	vars   Dict
	parent *frame
	// keys and vals hold vars' first entries, allocated with the frame.
	keys [4]string
	vals [4]Value
}

// newFrame returns an empty child frame of parent (nil for the root).
func newFrame(parent *frame) *frame {
	f := &frame{parent: parent}
	f.vars.keys, f.vars.vals = f.keys[:0], f.vals[:0]
	return f
}

// with returns a child frame of f binding name to v.
func (f *frame) with(name string, v Value) *frame {
	c := newFrame(f)
	c.vars.Set(name, v)
	return c
}

func (f *frame) lookup(name string) (Value, bool) {
	for ; f != nil; f = f.parent {
		if v, ok := f.vars.Get(name); ok {
			return v, true
		}
	}
	return nil, false
}

type renderer struct {
	t      *Template
	vars   map[string]Value
	prior  *Prior // RenderFrom's prior, or nil
	next   *Prior // what RenderFrom returns, or nil for RenderSize
	track  *loopRecord
	trackI int // the iteration of track being run
	out    *outBuf
	steps  int
	depth  int      // macro call depth
	run    []string // the strings of "+" chains being evaluated (concat), in runBuf
	runBuf [16]string
}

// maxDepth bounds macro recursion, as Python's recursion limit does for jinja2.
const maxDepth = 500

type macro struct {
	name     string
	params   []string
	defaults []expr
	body     []node
	closure  *frame
	r        *renderer
}

// Render renders the template with the given variables. Globals (range,
// namespace, dict, raise_exception) are added unless vars overrides them.
func (t *Template) Render(vars map[string]Value) (string, error) {
	return t.RenderSize(vars, 0)
}

// RenderSize is Render with the output buffer sized for size bytes up front, so a
// caller that can estimate the output (a chat prompt is about as long as its
// messages) saves the buffer's regrowth and copies. The output is Render's.
func (t *Template) RenderSize(vars map[string]Value, size int) (string, error) {
	return t.render(vars, size, nil, nil)
}

func (t *Template) render(vars map[string]Value, size int, prior, next *Prior) (string, error) {
	var out *outBuf
	switch size = min(max(size, 0), maxOutput); {
	case prior != nil && prior.t == t && prior.buf != nil:
		out = shadowOf(prior)
	case next != nil: // room for the next turn (outBuf)
		out = newOutBuf(size + size/4)
	default:
		out = newOutBuf(size)
	}
	r := &renderer{out: out, t: t, vars: vars, prior: prior, next: next}
	r.run = r.runBuf[:0]
	root := newFrame(nil)
	for k, v := range globals {
		root.vars.Set(k, v)
	}
	for k, v := range vars {
		root.vars.Set(k, v)
	}
	f := newFrame(root)
	if err := r.exec(t.body, f); err != nil {
		if errors.Is(err, errBreak) || errors.Is(err, errContinue) {
			return "", err
		}
		return "", err
	}
	if next != nil {
		next.buf = out.b[:out.n]
		if !out.extendable() {
			next.tail.Store(true)
		}
	}
	return out.String(), nil
}

func (r *renderer) tick() error {
	r.steps++
	if r.steps > maxSteps {
		return errors.New("template render exceeded its step limit")
	}
	if r.out.Len() > maxOutput {
		return errors.New("template output exceeded its size limit")
	}
	return nil
}

func (r *renderer) exec(body []node, f *frame) error {
	for _, n := range body {
		if err := r.tick(); err != nil {
			return err
		}
		switch n := n.(type) {
		case *textNode:
			r.out.WriteString(n.s)
		case *outputNode:
			if c, ok := n.e.(*binExpr); ok && c.op == "+" {
				if l, ok := c.l.(*binExpr); ok && l.op == "+" {
					if err := r.outputConcat(c, f); err != nil {
						return err
					}
					continue
				}
			}
			v, err := r.eval(n.e, f)
			if err != nil {
				return err
			}
			r.out.WriteString(str(v))
		case *ifNode:
			v, err := r.eval(n.cond, f)
			if err != nil {
				return err
			}
			b := n.els_
			if truthy(v) {
				b = n.then
			}
			if err := r.exec(b, f); err != nil {
				return err
			}
		case *forNode:
			if err := r.execFor(n, f); err != nil {
				return err
			}
		case *setNode:
			if err := r.execSet(n, f); err != nil {
				return err
			}
		case *macroNode:
			f.vars.Set(n.name, &macro{name: n.name, params: n.params, defaults: n.defaults, body: n.body, closure: f, r: r})
		case *callBlockNode:
			body := n.body
			caller := Func(func(_ []Value, _ *Dict) (Value, error) {
				return r.capture(body, newFrame(f))
			})
			v, err := r.eval(n.call, f.with("caller", caller))
			if err != nil {
				return err
			}
			r.out.WriteString(str(v))
		case *filterBlockNode:
			s, err := r.capture(n.body, f)
			if err != nil {
				return err
			}
			v, err := r.applyFilter(n.filter, s, f)
			if err != nil {
				return err
			}
			r.out.WriteString(str(v))
		case *breakNode:
			return errBreak
		case *continueNode:
			return errContinue
		}
	}
	return nil
}

// capture renders body into a string instead of the output.
func (r *renderer) capture(body []node, f *frame) (string, error) {
	saved := r.out
	b := newOutBuf(0)
	r.out = b
	err := r.exec(body, f)
	r.out = saved
	return b.String(), err
}

func (r *renderer) execSet(n *setNode, f *frame) error {
	var v Value
	if n.value != nil {
		var err error
		if v, err = r.eval(n.value, f); err != nil {
			return err
		}
	} else {
		s, err := r.capture(n.body, f)
		if err != nil {
			return err
		}
		v = s
	}
	if n.attrOf != "" {
		obj, _ := f.lookup(n.attrOf)
		ns, ok := obj.(*Namespace)
		if !ok {
			return fmt.Errorf("cannot assign attribute on non-namespace object %s", n.attrOf)
		}
		ns.Set(n.targets[0], v)
		return nil
	}
	if len(n.targets) == 1 {
		f.vars.Set(n.targets[0], v)
		return nil
	}
	items, err := iterate(v)
	if err != nil {
		return err
	}
	if len(items) != len(n.targets) {
		return fmt.Errorf("cannot unpack %d values into %d names", len(items), len(n.targets))
	}
	for i, t := range n.targets {
		f.vars.Set(t, items[i])
	}
	return nil
}

func (r *renderer) execFor(n *forNode, f *frame) error {
	iv, err := r.eval(n.iter, f)
	if err != nil {
		return err
	}
	items, err := iterate(iv)
	if err != nil {
		return err
	}
	bind := func(fr *frame, item Value) error {
		if len(n.targets) == 1 {
			fr.vars.Set(n.targets[0], item)
			return nil
		}
		parts, err := iterate(item)
		if err != nil {
			return err
		}
		if len(parts) != len(n.targets) {
			return fmt.Errorf("cannot unpack %d values into %d names", len(parts), len(n.targets))
		}
		for i, t := range n.targets {
			fr.vars.Set(t, parts[i])
		}
		return nil
	}
	if n.filter != nil {
		var kept []Value
		for _, it := range items {
			fr := newFrame(f)
			if err := bind(fr, it); err != nil {
				return err
			}
			c, err := r.eval(n.filter, fr)
			if err != nil {
				return err
			}
			if truthy(c) {
				kept = append(kept, it)
			}
		}
		items = kept
	}
	if len(items) == 0 {
		return r.exec(n.els_, f)
	}
	if n.plan != nil && r.next != nil {
		return r.execPlanned(n, f, items)
	}
	fr := newFrame(f)
	loop := &loopInfo{items: items}
	for i, it := range items {
		fr.vars.reset()
		if err := bind(fr, it); err != nil {
			return err
		}
		loop.i = i
		fr.vars.Set("loop", loop)
		quiet := false
		if n.quiet != nil && !noQuiet {
			g, err := r.eval(n.quiet, fr)
			quiet = err == nil && !truthy(g)
		}
		err := r.exec(n.body, fr)
		if errors.Is(err, errBreak) {
			break
		}
		if err != nil && !errors.Is(err, errContinue) {
			return err
		}
		if quiet {
			break // this iteration ran quiet, and so would the rest (quiet.go)
		}
	}
	return nil
}

// loopInfo is the loop variable of a for loop.
type loopInfo struct {
	items []Value
	i     int
}

func (l *loopInfo) attr(name string) Value {
	n := int64(len(l.items))
	i := int64(l.i)
	switch name {
	case "index0":
		return i
	case "index":
		return i + 1
	case "revindex":
		return n - i
	case "revindex0":
		return n - i - 1
	case "first":
		return i == 0
	case "last":
		return i == n-1
	case "length":
		return n
	case "previtem":
		if i > 0 {
			return l.items[i-1]
		}
	case "nextitem":
		if i < n-1 {
			return l.items[i+1]
		}
	case "cycle":
		k := l.i
		return Func(func(args []Value, _ *Dict) (Value, error) {
			if len(args) == 0 {
				return nil, errors.New("cycle needs at least one argument")
			}
			return args[k%len(args)], nil
		})
	}
	return Undefined{}
}

// iterate returns the items a for loop visits: list items, dict keys, string
// characters.
func iterate(v Value) ([]Value, error) {
	switch x := v.(type) {
	case []Value:
		return x, nil
	case *Dict:
		out := make([]Value, len(x.keys))
		for i, k := range x.keys {
			out[i] = k
		}
		return out, nil
	case string:
		var out []Value
		for _, r := range x {
			out = append(out, string(r))
		}
		return out, nil
	case Undefined, nil:
		if _, ok := v.(Undefined); ok {
			return nil, nil
		}
	}
	return nil, fmt.Errorf("'%s' object is not iterable", typeName(v))
}

func (r *renderer) eval(e expr, f *frame) (Value, error) {
	if err := r.tick(); err != nil {
		return nil, err
	}
	switch e := e.(type) {
	case *literal:
		return e.v, nil
	case *nameExpr:
		if v, ok := f.lookup(e.name); ok {
			return v, nil
		}
		return Undefined{}, nil
	case *listExpr:
		out := make([]Value, len(e.items))
		for i, it := range e.items {
			v, err := r.eval(it, f)
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	case *dictExpr:
		d := NewDict()
		for i := range e.keys {
			k, err := r.eval(e.keys[i], f)
			if err != nil {
				return nil, err
			}
			v, err := r.eval(e.vals[i], f)
			if err != nil {
				return nil, err
			}
			d.Set(str(k), v)
		}
		return d, nil
	case *attrExpr:
		obj, err := r.eval(e.obj, f)
		if err != nil {
			return nil, err
		}
		return getAttr(obj, e.name), nil
	case *indexExpr:
		obj, err := r.eval(e.obj, f)
		if err != nil {
			return nil, err
		}
		idx, err := r.eval(e.index, f)
		if err != nil {
			return nil, err
		}
		if e.nbr {
			r.noteNeighbour(idx)
		}
		return getItem(obj, idx), nil
	case *sliceExpr:
		return r.evalSlice(e, f)
	case *callExpr:
		return r.evalCall(e, f)
	case *filterExpr:
		obj, err := r.eval(e.obj, f)
		if err != nil {
			return nil, err
		}
		return r.applyFilter(e, obj, f)
	case *testExpr:
		obj, err := r.eval(e.obj, f)
		if err != nil {
			return nil, err
		}
		args, err := r.evalList(e.args, f)
		if err != nil {
			return nil, err
		}
		ok, err := runTest(e.name, obj, args)
		if err != nil {
			return nil, err
		}
		return ok != e.neg, nil
	case *unaryExpr:
		x, err := r.eval(e.x, f)
		if err != nil {
			return nil, err
		}
		switch e.op {
		case "not":
			return !truthy(x), nil
		case "-":
			switch n := x.(type) {
			case int64:
				return -n, nil
			case float64:
				return -n, nil
			case bool:
				return -boolInt(n), nil
			}
			return nil, fmt.Errorf("bad operand type for unary -: '%s'", typeName(x))
		default:
			return x, nil
		}
	case *binExpr:
		return r.evalBin(e, f)
	case *condExpr:
		c, err := r.eval(e.cond, f)
		if err != nil {
			return nil, err
		}
		if truthy(c) {
			return r.eval(e.a, f)
		}
		if e.b == nil {
			return Undefined{}, nil
		}
		return r.eval(e.b, f)
	}
	return nil, fmt.Errorf("unknown expression %T", e)
}

func (r *renderer) evalList(es []expr, f *frame) ([]Value, error) {
	out := make([]Value, len(es))
	for i, e := range es {
		v, err := r.eval(e, f)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

func (r *renderer) evalKw(names []string, vals []expr, f *frame) (*Dict, error) {
	if len(names) == 0 {
		return nil, nil
	}
	d := NewDict()
	for i, n := range names {
		v, err := r.eval(vals[i], f)
		if err != nil {
			return nil, err
		}
		d.Set(n, v)
	}
	return d, nil
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func (r *renderer) evalSlice(e *sliceExpr, f *frame) (Value, error) {
	obj, err := r.eval(e.obj, f)
	if err != nil {
		return nil, err
	}
	var idx [3]*int64
	for i, x := range []expr{e.start, e.stop, e.step} {
		if x == nil {
			continue
		}
		v, err := r.eval(x, f)
		if err != nil {
			return nil, err
		}
		if v == nil {
			continue
		}
		n, ok := v.(int64)
		if !ok {
			return nil, errors.New("slice indices must be integers or None")
		}
		idx[i] = &n
	}
	var items []Value
	s, isStr := obj.(string)
	switch x := obj.(type) {
	case []Value:
		items = x
	case string:
		for _, r := range x {
			items = append(items, string(r))
		}
	default:
		return nil, fmt.Errorf("'%s' object is not subscriptable", typeName(obj))
	}
	_ = s
	out, err := pySlice(items, idx[0], idx[1], idx[2])
	if err != nil {
		return nil, err
	}
	if isStr {
		var b strings.Builder
		for _, c := range out {
			b.WriteString(c.(string))
		}
		return b.String(), nil
	}
	return out, nil
}

// pySlice is Python's list[start:stop:step].
func pySlice(items []Value, start, stop, step *int64) ([]Value, error) {
	n := int64(len(items))
	st := int64(1)
	if step != nil {
		st = *step
	}
	if st == 0 {
		return nil, errors.New("slice step cannot be zero")
	}
	norm := func(p *int64, def int64, lo, hi int64) int64 {
		if p == nil {
			return def
		}
		v := *p
		if v < 0 {
			v += n
		}
		if v < lo {
			v = lo
		}
		if v > hi {
			v = hi
		}
		return v
	}
	// The result is allocated at its size (appending grew it by copies, a sixth of a
	// render of Qwen3's template at turns 30 to 40 of bench/decision, whose loop is over
	// messages[::-1]), and indexes are counted, so a step near the int64 limits cannot
	// overflow past the end.
	var a, size int64
	if st > 0 {
		var b int64
		a, b = norm(start, 0, 0, n), norm(stop, n, 0, n)
		if b > a {
			size = (b-a-1)/st + 1
		}
	} else {
		var b int64
		a, b = norm(start, n-1, -1, n-1), norm(stop, -1, -1, n-1)
		if a > b {
			size = 1
			if st != math.MinInt64 {
				size = (a-b-1)/(-st) + 1
			}
		}
	}
	out := make([]Value, size)
	for k := range size {
		out[k] = items[a+k*st]
	}
	return out, nil
}

func (r *renderer) evalCall(e *callExpr, f *frame) (Value, error) {
	fn, err := r.eval(e.fn, f)
	if err != nil {
		return nil, err
	}
	args, err := r.evalList(e.args, f)
	if err != nil {
		return nil, err
	}
	kw, err := r.evalKw(e.kwName, e.kwVal, f)
	if err != nil {
		return nil, err
	}
	switch x := fn.(type) {
	case Func:
		return x(args, kw)
	case *macro:
		return r.callMacro(x, args, kw)
	}
	name := "object"
	switch ex := e.fn.(type) {
	case *nameExpr:
		name = ex.name
	case *attrExpr:
		name = ex.name
	}
	return nil, fmt.Errorf("%s is not callable (%s)", name, typeName(fn))
}

func (r *renderer) callMacro(m *macro, args []Value, kw *Dict) (Value, error) {
	if r.depth >= maxDepth {
		return nil, fmt.Errorf("macro %s: maximum recursion depth exceeded", m.name)
	}
	r.depth++
	defer func() { r.depth-- }()
	fr := newFrame(m.closure)
	for i, p := range m.params {
		switch {
		case i < len(args):
			fr.vars.Set(p, args[i])
		default:
			if v, ok := kw.Get(p); ok {
				fr.vars.Set(p, v)
			} else if m.defaults[i] != nil {
				v, err := r.eval(m.defaults[i], fr)
				if err != nil {
					return nil, err
				}
				fr.vars.Set(p, v)
			} else {
				fr.vars.Set(p, Undefined{})
			}
		}
	}
	return r.capture(m.body, fr)
}

func (r *renderer) evalBin(e *binExpr, f *frame) (Value, error) {
	if l, ok := e.l.(*binExpr); ok && e.op == "+" && l.op == "+" {
		return r.evalConcat(e, f)
	}
	l, err := r.eval(e.l, f)
	if err != nil {
		return nil, err
	}
	switch e.op {
	case "and":
		if !truthy(l) {
			return l, nil
		}
		return r.eval(e.r, f)
	case "or":
		if truthy(l) {
			return l, nil
		}
		return r.eval(e.r, f)
	}
	rv, err := r.eval(e.r, f)
	if err != nil {
		return nil, err
	}
	return binOp(e.op, l, rv)
}

// evalConcat evaluates a chain a + b + c + ... (left-nested "+" nodes) as the
// nested evaluation does: operands from the left, each "+" applied in turn with its
// errors, and the same steps counted. Only a run of strings is joined once at its end
// instead of copying the growing left side at every "+" (chat templates build each
// turn as '<|im_start|>' + role + '\n' + content + ...).
func (r *renderer) evalConcat(e *binExpr, f *frame) (Value, error) {
	acc, base, err := r.concat(e, f)
	if err != nil || len(r.run) == base {
		return acc, err
	}
	s := strings.Join(r.run[base:], "")
	r.run = r.run[:base]
	return s, nil
}

// outputConcat is {{ a + b + c ... }}: a chain that ends in a run of strings writes
// them to the output one by one, without joining them first (the join was a copy and
// an allocation of each message's text: 8% of a Qwen3 render at turn 40 of a
// conversation, CPU profile of BenchmarkDecision, 2026-12-07). Steps and errors are
// those of eval.
func (r *renderer) outputConcat(e *binExpr, f *frame) error {
	if err := r.tick(); err != nil { // the step eval would count for e
		return err
	}
	acc, base, err := r.concat(e, f)
	if err != nil {
		return err
	}
	if len(r.run) == base {
		r.out.WriteString(str(acc))
		return nil
	}
	for _, s := range r.run[base:] {
		r.out.WriteString(s)
	}
	r.run = r.run[:base]
	return nil
}

// concat evaluates the chain e for evalConcat and outputConcat. The run of strings at
// its end is pushed on r.run from base on (a stack: chains evaluated inside an operand
// push above it and pop before they return): when the run is not empty, the value is
// its strings joined, and the caller pops it; else the value is acc. On an error
// nothing stays pushed.
func (r *renderer) concat(e *binExpr, f *frame) (acc Value, base int, _ error) {
	var opsArr [16]expr
	ops := opsArr[:0] // operands, right to left
	for n := e; ; {
		ops = append(ops, n.r)
		l, ok := n.l.(*binExpr)
		if !ok || l.op != "+" {
			ops = append(ops, n.l)
			break
		}
		if err := r.tick(); err != nil { // the step eval would count for l
			return nil, 0, err
		}
		n = l
	}
	base = len(r.run)
	acc, err := r.eval(ops[len(ops)-1], f)
	if err != nil {
		return nil, 0, err
	}
	if s, ok := acc.(string); ok {
		r.run = append(r.run, s) // when the run is not empty, acc is its strings joined
	}
	for i := len(ops) - 2; i >= 0; i-- {
		v, err := r.eval(ops[i], f)
		if err != nil {
			r.run = r.run[:base]
			return nil, 0, err
		}
		if len(r.run) > base {
			if s, ok := v.(string); ok {
				r.run = append(r.run, s)
				continue
			}
			acc = strings.Join(r.run[base:], "")
			r.run = r.run[:base]
		}
		if acc, err = binOp("+", acc, v); err != nil {
			return nil, 0, err
		}
		if s, ok := acc.(string); ok {
			r.run = append(r.run, s)
		}
	}
	return acc, base, nil
}

func binOp(op string, l, r Value) (Value, error) {
	switch op {
	case "~":
		return str(l) + str(r), nil
	case "==":
		return equal(l, r), nil
	case "!=":
		return !equal(l, r), nil
	case "in":
		return contains(r, l)
	case "not in":
		ok, err := contains(r, l)
		if err != nil {
			return nil, err
		}
		return !ok.(bool), nil
	case "<", ">", "<=", ">=":
		c, err := compare(l, r)
		if err != nil {
			return nil, err
		}
		switch op {
		case "<":
			return c < 0, nil
		case ">":
			return c > 0, nil
		case "<=":
			return c <= 0, nil
		}
		return c >= 0, nil
	}
	if op == "+" {
		switch a := l.(type) {
		case string:
			if b, ok := r.(string); ok {
				return a + b, nil
			}
		case []Value:
			if b, ok := r.([]Value); ok {
				out := make([]Value, 0, len(a)+len(b))
				return append(append(out, a...), b...), nil
			}
		}
	}
	if op == "*" {
		if s, ok := l.(string); ok {
			if n, ok := r.(int64); ok {
				if n < 0 {
					n = 0
				}
				if int64(len(s))*n > maxOutput {
					return nil, errors.New("string repetition too large")
				}
				return strings.Repeat(s, int(n)), nil
			}
		}
	}
	if op == "%" {
		if s, ok := l.(string); ok {
			return percentFormat(s, r)
		}
	}
	ai, aInt, aok := number(l)
	bi, bInt, bok := number(r)
	if !aok || !bok {
		return nil, fmt.Errorf("unsupported operand type(s) for %s: '%s' and '%s'", op, typeName(l), typeName(r))
	}
	if aInt && bInt {
		a, b := int64(ai), int64(bi)
		switch op {
		case "+":
			return a + b, nil
		case "-":
			return a - b, nil
		case "*":
			return a * b, nil
		case "/":
			if b == 0 {
				return nil, errors.New("division by zero")
			}
			return float64(a) / float64(b), nil
		case "//":
			if b == 0 {
				return nil, errors.New("integer division or modulo by zero")
			}
			q := a / b
			if (a%b != 0) && ((a < 0) != (b < 0)) {
				q--
			}
			return q, nil
		case "%":
			if b == 0 {
				return nil, errors.New("integer division or modulo by zero")
			}
			m := a % b
			if m != 0 && ((m < 0) != (b < 0)) {
				m += b
			}
			return m, nil
		case "**":
			if b >= 0 {
				res := int64(1)
				for i := int64(0); i < b && i < 64; i++ {
					res *= a
				}
				return res, nil
			}
			return math.Pow(float64(a), float64(b)), nil
		}
	}
	switch op {
	case "+":
		return ai + bi, nil
	case "-":
		return ai - bi, nil
	case "*":
		return ai * bi, nil
	case "/":
		if bi == 0 {
			return nil, errors.New("float division by zero")
		}
		return ai / bi, nil
	case "//":
		if bi == 0 {
			return nil, errors.New("float floor division by zero")
		}
		return math.Floor(ai / bi), nil
	case "%":
		if bi == 0 {
			return nil, errors.New("float modulo")
		}
		m := math.Mod(ai, bi)
		if m != 0 && ((m < 0) != (bi < 0)) {
			m += bi
		}
		return m, nil
	case "**":
		return math.Pow(ai, bi), nil
	}
	return nil, fmt.Errorf("unknown operator %s", op)
}

// number converts a numeric value (bool counts, as in Python) to float64.
func number(v Value) (float64, bool, bool) {
	switch x := v.(type) {
	case int64:
		return float64(x), true, true
	case float64:
		return x, false, true
	case bool:
		return float64(boolInt(x)), true, true
	}
	return 0, false, false
}

func equal(a, b Value) bool {
	if x, _, ok := number(a); ok {
		if y, _, ok := number(b); ok {
			return x == y
		}
		return false
	}
	switch x := a.(type) {
	case nil:
		return b == nil
	case Undefined:
		_, ok := b.(Undefined)
		return ok
	case string:
		y, ok := b.(string)
		return ok && x == y
	case []Value:
		y, ok := b.([]Value)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !equal(x[i], y[i]) {
				return false
			}
		}
		return true
	case *Dict:
		y, ok := b.(*Dict)
		if !ok || x.Len() != y.Len() {
			return false
		}
		for i, k := range x.keys {
			yv, ok := y.Get(k)
			if !ok || !equal(x.vals[i], yv) {
				return false
			}
		}
		return true
	}
	return a == b
}

func compare(a, b Value) (int, error) {
	if x, _, ok := number(a); ok {
		if y, _, ok := number(b); ok {
			switch {
			case x < y:
				return -1, nil
			case x > y:
				return 1, nil
			}
			return 0, nil
		}
	}
	if x, ok := a.(string); ok {
		if y, ok := b.(string); ok {
			return strings.Compare(x, y), nil
		}
	}
	if x, ok := a.([]Value); ok {
		if y, ok := b.([]Value); ok {
			for i := 0; i < len(x) && i < len(y); i++ {
				if c, err := compare(x[i], y[i]); err != nil || c != 0 {
					return c, err
				}
			}
			return len(x) - len(y), nil
		}
	}
	return 0, fmt.Errorf("'<' not supported between instances of '%s' and '%s'", typeName(a), typeName(b))
}

func contains(container, item Value) (Value, error) {
	switch c := container.(type) {
	case string:
		s, ok := item.(string)
		if !ok {
			return nil, fmt.Errorf("'in <string>' requires string as left operand, not %s", typeName(item))
		}
		return strings.Contains(c, s), nil
	case []Value:
		for _, x := range c {
			if equal(x, item) {
				return true, nil
			}
		}
		return false, nil
	case *Dict:
		_, ok := c.Get(str(item))
		if _, isStr := item.(string); !isStr {
			ok = false
		}
		return ok, nil
	case *Namespace:
		_, ok := c.Get(str(item))
		return ok, nil
	case Undefined:
		return false, nil
	}
	return nil, fmt.Errorf("argument of type '%s' is not iterable", typeName(container))
}

// percentFormat is Python's "fmt" % args for %s, %d and %%.
func percentFormat(s string, arg Value) (Value, error) {
	args, ok := arg.([]Value)
	if !ok {
		args = []Value{arg}
	}
	var b strings.Builder
	k := 0
	for i := 0; i < len(s); i++ {
		if s[i] != '%' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		i++
		switch s[i] {
		case '%':
			b.WriteByte('%')
		case 's', 'd', 'r':
			if k >= len(args) {
				return nil, errors.New("not enough arguments for format string")
			}
			switch s[i] {
			case 'r':
				b.WriteString(repr(args[k]))
			case 'd':
				n, _, ok := number(args[k])
				if !ok {
					return nil, errors.New("%d format: a real number is required")
				}
				b.WriteString(fmt.Sprint(int64(n)))
			default:
				b.WriteString(str(args[k]))
			}
			k++
		default:
			return nil, fmt.Errorf("unsupported format character %q", s[i])
		}
	}
	return b.String(), nil
}
