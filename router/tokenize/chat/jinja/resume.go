package jinja

import (
	"errors"
	"sync/atomic"
)

// Resuming a render. A chat template renders the whole conversation on every turn,
// though a new turn only appends messages: the loop over the messages repeats, on turn
// 40, the work of the 39 turns before (about 40% of kvroute's local routing decision
// in a CPU profile of turns 30 to 40 of BenchmarkDecision, 2026-12-07). An earlier
// attempt memoized each iteration of that loop and checked it against the values it
// had read; proving an iteration unchanged cost as much as running it (bench/notes/
// hotpath.md, "Render memo"). What is done here skips the unchanged iterations as a
// whole: Parse works out, once per template, everything an iteration of a top-level
// loop can read from outside itself (loopPlan), and a render given the Prior of the
// previous render of the same conversation checks those few values once, at the
// loop's start, and copies the output of the iterations it may skip.
//
// An iteration of a loop "for x in items" runs in its own frame (set inside the body
// binds there and is reset for the next item); what it can read besides its own item
// and its own assignments is:
//
//   - loop.index0, loop.index, loop.first, loop.previtem, loop.cycle: the same for the
//     same position when the earlier items are the same;
//   - loop.last and loop.nextitem: the same for all but the last item of the shorter
//     of the two lists;
//   - items[loop.index0 + c] (the loop's own list by name, a constant offset): the same
//     while the index stays within the unchanged items; a negative index reads from
//     the end, so the render notes the first iteration that read one;
//   - loop.index0 (or loop.index) compared with an outer value, as Qwen3's
//     "loop.index0 > ns.last_query_index": the same for the positions below both the
//     old and the new value;
//   - any other outer name, or a namespace's attribute: the same when its value at
//     the loop's start is the same scalar (string, number, bool, none, undefined) as
//     before; the globals range, namespace, dict and raise_exception are the same in
//     every render unless the variables override them.
//
// A namespace attribute the body assigns (set ns.attr = ...) carries state from one
// iteration to the next, as DeepSeek-V3's ns.is_tool does: a render records those
// attributes' values at the start of every iteration, the skip needs the same values
// at the loop's start as before, and the attributes are set to what they were at the
// start of the first iteration that runs.
//
// A body that reads anything else (loop.length, loop.revindex, the loop variable
// itself, the list other than by such an index, a whole namespace it assigns to, a
// macro, strftime_now, an outer list or dict), assigns a namespace it also binds
// with set, defines a macro, or breaks out of the loop has no plan: that loop always
// runs in full. Items are the same when they are the same *Dict (the chat encoder's
// conversation cache hands a new turn the earlier turns' message values), dicts and
// lists of the same keys and values (sameItem), or equal scalars. Templates cannot
// modify a dict or a list, so a value that is the same pointer holds the same content.
//
// The skipped prefix is the first j iterations, j the smallest bound of the rules
// above. Their output is copied from the previous render, and the other iterations
// run. TestRenderFrom* and FuzzRenderFrom compare with full renders.

// Prior is what a render leaves for the next render of the same template over a
// longer (or changed) conversation: its output and, per planned loop, the values the
// loop's iterations read from outside and where each iteration's output ended. It is
// immutable and safe to share between concurrent renders.
type Prior struct {
	t   *Template
	out string
	// buf is the buffer out is in (outBuf), and tail the claim on the space after out in
	// it, taken by the first render from this Prior that appends there (set from the
	// start when the space is not this output's).
	buf   []byte
	tail  atomic.Bool
	loops []loopRecord // by loopPlan.id
	// copied and ran count the iterations of planned loops this render copied from
	// its prior and ran.
	copied, ran int
}

// Iterations returns how many iterations of the template's planned loops the render
// that returned p copied from its own prior, and how many it ran.
func (p *Prior) Iterations() (copied, ran int) { return p.copied, p.ran }

// Size is the memory a Prior holds, for cache accounting: its output, its records, and
// 64 bytes per item (the items are the caller's values, but a caller may rebuild them
// for each render, as the chat encoder does for templates that loop over content
// parts, and the Prior keeps them).
func (p *Prior) Size() int {
	if p == nil {
		return 0
	}
	n := 64 + len(p.out)
	for _, l := range p.loops {
		n += 64 + 64*len(l.items) + 16*(len(l.eq)+len(l.thr)+len(l.state)) + 8*len(l.ends)
	}
	return n
}

// loopRecord is one planned loop as a render ran it.
type loopRecord struct {
	valid bool    // recorded, and every outer value read was a comparable scalar
	items []Value // the list iterated
	eq    []Value // per loopPlan.eq, its value at the loop's start
	thr   []Value // per loopPlan.thr
	start int     // output length at the loop's start
	ends  []int   // output length after each iteration
	negAt int     // first iteration that read items[negative index]; len(items) if none
	// state holds the carried attributes (loopPlan.carried) at the start of each
	// iteration, iteration i's at state[i*len(carried):], and after the last one.
	state []Value
}

// loopPlan is what an iteration of a top-level for loop may read from outside itself
// (see above); nil on a forNode that has none.
type loopPlan struct {
	id       int
	iter     string // the list's name
	target   string // the item's name
	eq       []depRef
	thr      []thrRef
	usesLast bool     // reads loop.last or loop.nextitem
	nbrMax   int      // largest offset >= 0 of an items[loop.index0 + c] read; -1: none
	nbrNeg   bool     // reads items[loop.index0 + c] with c < 0
	carried  []depRef // namespace attributes the body assigns
}

// depRef is an outer value: name, or name.attr.
type depRef struct{ name, attr string }

// thrRef is an outer value compared with the iteration's position: loop.index0 (off
// 0) or loop.index (off 1).
type thrRef struct {
	dep depRef
	off int
}

// plan marks the template's top-level for loops (those reached from its body through
// if statements only, so each runs at most once per render and writes the render's
// output, not a capture) that can be resumed.
func (t *Template) plan() {
	var walk func([]node)
	walk = func(ns []node) {
		for _, n := range ns {
			switch n := n.(type) {
			case *ifNode:
				walk(n.then)
				walk(n.els_)
			case *forNode:
				walk(n.els_)
				if p := analyzeLoop(n); p != nil {
					p.id = len(t.plans)
					n.plan = p
					t.plans = append(t.plans, p)
				}
			}
		}
	}
	walk(t.body)
}

// analyzer collects a loopPlan from a loop body; ok turns false at anything it
// cannot account for.
type analyzer struct {
	p       *loopPlan
	ok      bool
	nbrs    []*indexExpr
	eqSeen  map[depRef]bool
	carried map[depRef]bool
	nsNames map[string]bool // namespaces the body assigns attributes of
	bound   map[string]bool // names the body binds (set, for)
}

func analyzeLoop(n *forNode) *loopPlan {
	iter, ok := n.iter.(*nameExpr)
	if !ok || len(n.targets) != 1 || n.filter != nil || n.targets[0] == iter.name ||
		n.targets[0] == "loop" || iter.name == "loop" {
		return nil
	}
	a := &analyzer{p: &loopPlan{iter: iter.name, target: n.targets[0], nbrMax: -1}, ok: true,
		eqSeen: map[depRef]bool{}, carried: map[depRef]bool{}, nsNames: map[string]bool{}, bound: map[string]bool{}}
	a.writes(n.body)
	for ns := range a.nsNames {
		if a.bound[ns] || a.special(ns) {
			return nil
		}
	}
	a.nodes(n.body, 0)
	if !a.ok {
		return nil
	}
	for _, e := range a.nbrs {
		e.nbr = true
	}
	return a.p
}

// writes collects the namespace attributes the body assigns and the names it binds.
func (a *analyzer) writes(ns []node) {
	for _, n := range ns {
		switch n := n.(type) {
		case *ifNode:
			a.writes(n.then)
			a.writes(n.els_)
		case *forNode:
			for _, t := range n.targets {
				a.bound[t] = true
			}
			a.writes(n.body)
			a.writes(n.els_)
		case *setNode:
			if n.attrOf != "" {
				d := depRef{name: n.attrOf, attr: n.targets[0]}
				if !a.carried[d] {
					a.carried[d] = true
					a.p.carried = append(a.p.carried, d)
				}
				a.nsNames[n.attrOf] = true
			} else {
				for _, t := range n.targets {
					a.bound[t] = true
				}
			}
			a.writes(n.body)
		case *filterBlockNode:
			a.writes(n.body)
		}
	}
}

func (a *analyzer) dep(d depRef) {
	if a.carried[d] {
		return // the iteration's state: recorded per iteration, not compared
	}
	if d.attr == "" && a.nsNames[d.name] {
		a.ok = false // a namespace the body assigns, read whole
		return
	}
	if !a.eqSeen[d] {
		a.eqSeen[d] = true
		a.p.eq = append(a.p.eq, d)
	}
}

// nodes walks statements; depth counts the for loops nested inside the planned one
// (there, "loop" is the inner loop's).
func (a *analyzer) nodes(ns []node, depth int) {
	for _, n := range ns {
		switch n := n.(type) {
		case *textNode, *continueNode:
		case *outputNode:
			a.expr(n.e, depth)
		case *ifNode:
			a.expr(n.cond, depth)
			a.nodes(n.then, depth)
			a.nodes(n.els_, depth)
		case *forNode:
			a.expr(n.iter, depth)
			if n.filter != nil { // evaluated before the inner loop variable is bound
				a.expr(n.filter, depth)
			}
			a.nodes(n.body, depth+1)
			a.nodes(n.els_, depth)
		case *setNode:
			if n.value != nil {
				a.expr(n.value, depth)
			}
			a.nodes(n.body, depth)
		case *filterBlockNode:
			a.filter(n.filter, depth)
			a.nodes(n.body, depth)
		case *breakNode:
			if depth == 0 {
				a.ok = false
			}
		default: // macro, call block
			a.ok = false
		}
	}
}

func (a *analyzer) exprs(es []expr, depth int) {
	for _, e := range es {
		a.expr(e, depth)
	}
}

func (a *analyzer) filter(e *filterExpr, depth int) {
	if e.obj != nil {
		a.expr(e.obj, depth)
	}
	a.exprs(e.args, depth)
	a.exprs(e.kwVal, depth)
}

// outer returns the depRef e reads when it is an outer name or a name's attribute.
func (a *analyzer) outer(e expr, depth int) (depRef, bool) {
	switch e := e.(type) {
	case *nameExpr:
		if a.special(e.name) {
			return depRef{}, false
		}
		return depRef{name: e.name}, true
	case *attrExpr:
		if o, ok := e.obj.(*nameExpr); ok && !a.special(o.name) {
			return depRef{name: o.name, attr: e.name}, true
		}
	}
	return depRef{}, false
}

// special reports names that are not outer values: the item, "loop", the list.
func (a *analyzer) special(name string) bool {
	return name == a.p.target || name == "loop" || name == a.p.iter
}

// loopIndex returns 0 for loop.index0 and 1 for loop.index of the planned loop.
func loopIndex(e expr, depth int) (int, bool) {
	at, ok := e.(*attrExpr)
	if !ok || depth != 0 {
		return 0, false
	}
	if o, ok := at.obj.(*nameExpr); !ok || o.name != "loop" {
		return 0, false
	}
	switch at.name {
	case "index0":
		return 0, true
	case "index":
		return 1, true
	}
	return 0, false
}

// neighbour returns c of an index expression loop.index0 + c (or loop.index + c,
// loop.index0 - c, ...), c a literal integer.
func neighbour(e expr, depth int) (int, bool) {
	if off, ok := loopIndex(e, depth); ok {
		return off, true
	}
	b, ok := e.(*binExpr)
	if !ok || (b.op != "+" && b.op != "-") {
		return 0, false
	}
	off, ok := loopIndex(b.l, depth)
	if !ok {
		return 0, false
	}
	lit, ok := b.r.(*literal)
	if !ok {
		return 0, false
	}
	c, ok := lit.v.(int64)
	if !ok || c > 1<<20 || c < -(1<<20) {
		return 0, false
	}
	if b.op == "-" {
		c = -c
	}
	return off + int(c), true
}

func isCompare(op string) bool {
	switch op {
	case "<", "<=", ">", ">=", "==", "!=":
		return true
	}
	return false
}

func (a *analyzer) expr(e expr, depth int) {
	if !a.ok {
		return
	}
	switch e := e.(type) {
	case *literal:
	case *nameExpr:
		switch e.name {
		case a.p.target:
		case a.p.iter: // the list other than items[loop.index0 + c]
			a.ok = false
		case "loop": // the planned loop's, bare; a nested loop's is its own
			if depth == 0 {
				a.ok = false
			}
		default:
			a.dep(depRef{name: e.name})
		}
	case *attrExpr:
		o, ok := e.obj.(*nameExpr)
		switch {
		case !ok:
			a.expr(e.obj, depth)
		case o.name == "loop" && depth == 0:
			switch e.name {
			case "index0", "index", "first", "previtem", "cycle":
			case "last", "nextitem":
				a.p.usesLast = true
			default:
				a.ok = false
			}
		case o.name == "loop" || o.name == a.p.target:
		case o.name == a.p.iter:
			a.ok = false
		default:
			a.dep(depRef{name: o.name, attr: e.name})
		}
	case *indexExpr:
		if o, ok := e.obj.(*nameExpr); ok && o.name == a.p.iter {
			c, ok := neighbour(e.index, depth)
			if !ok {
				a.ok = false
				return
			}
			if c < 0 {
				a.p.nbrNeg = true
				a.nbrs = append(a.nbrs, e)
			} else {
				a.p.nbrMax = max(a.p.nbrMax, c)
			}
			return
		}
		a.expr(e.obj, depth)
		a.expr(e.index, depth)
	case *sliceExpr:
		a.expr(e.obj, depth)
		for _, x := range []expr{e.start, e.stop, e.step} {
			if x != nil {
				a.expr(x, depth)
			}
		}
	case *callExpr:
		a.expr(e.fn, depth)
		a.exprs(e.args, depth)
		a.exprs(e.kwVal, depth)
	case *filterExpr:
		a.filter(e, depth)
	case *testExpr:
		a.expr(e.obj, depth)
		a.exprs(e.args, depth)
	case *unaryExpr:
		a.expr(e.x, depth)
	case *binExpr:
		if isCompare(e.op) {
			for _, s := range [2][2]expr{{e.l, e.r}, {e.r, e.l}} {
				if off, ok := loopIndex(s[0], depth); ok {
					if d, ok := a.outer(s[1], depth); ok && !a.carried[d] {
						a.p.thr = append(a.p.thr, thrRef{dep: d, off: off})
						return
					}
				}
			}
		}
		a.expr(e.l, depth)
		a.expr(e.r, depth)
	case *condExpr:
		a.expr(e.cond, depth)
		a.expr(e.a, depth)
		if e.b != nil {
			a.expr(e.b, depth)
		}
	case *listExpr:
		a.exprs(e.items, depth)
	case *dictExpr:
		a.exprs(e.keys, depth)
		a.exprs(e.vals, depth)
	default:
		a.ok = false
	}
}

// pureGlobal stands for a global function the variables do not override: the same
// in every render.
type pureGlobal struct{ name string }

// pureGlobals are the globals whose result depends on their arguments only
// (strftime_now reads the clock).
var pureGlobals = map[string]bool{"range": true, "namespace": true, "dict": true, "raise_exception": true}

// depValue returns d's value at the loop's start, f being the frame the loop runs in,
// and whether it is one a later render can compare.
func (r *renderer) depValue(d depRef, f *frame) (Value, bool) {
	var v Value = Undefined{}
	for fr := f; fr != nil; fr = fr.parent {
		if x, ok := fr.vars.Get(d.name); ok {
			v = x
			if fr.parent == nil && pureGlobals[d.name] {
				if _, over := r.vars[d.name]; !over {
					v = pureGlobal{d.name}
				}
			}
			break
		}
	}
	if d.attr != "" {
		if ns, ok := v.(*Namespace); ok {
			x, ok := ns.Get(d.attr)
			if !ok {
				x = Undefined{}
			}
			v = x
		}
	}
	return v, comparable(v)
}

// comparable reports values sameScalar can compare.
func comparable(v Value) bool {
	switch v.(type) {
	case nil, Undefined, pureGlobal, string, int64, float64, bool:
		return true
	}
	return false
}

// sameScalar reports whether a and b are the same comparable value: the same type
// (1, 1.0 and true print differently) and the same value. Go's == on the interfaces
// says exactly that, and cannot panic once a's type is comparable.
func sameScalar(a, b Value) bool { return comparable(a) && a == b }

// sameItem reports whether two list items are known to be the same value: the same
// *Dict (the chat encoder's messages), or dicts and lists of the same keys in the
// same order and the same values, nested at most maxSameDepth deep (templates that
// loop over content parts get messages rebuilt for each render, holding the same
// strings, which compare at the cost of their pointers), or equal scalars.
func sameItem(a, b Value) bool { return sameValue(a, b, 0) }

const maxSameDepth = 8

func sameValue(a, b Value, depth int) bool {
	switch x := a.(type) {
	case *Dict:
		y, ok := b.(*Dict)
		if !ok || x == nil || y == nil {
			return false
		}
		if x == y {
			return true
		}
		if depth >= maxSameDepth || len(x.keys) != len(y.keys) {
			return false
		}
		for i, k := range x.keys {
			if y.keys[i] != k || !sameValue(x.vals[i], y.vals[i], depth+1) {
				return false
			}
		}
		return true
	case []Value:
		y, ok := b.([]Value)
		if !ok || depth >= maxSameDepth || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameValue(x[i], y[i], depth+1) {
				return false
			}
		}
		return true
	}
	return comparable(a) && sameScalar(a, b)
}

// execPlanned runs a planned loop over items, recording it in r.next and, when the
// prior render recorded it, copying the output of the iterations it may skip.
func (r *renderer) execPlanned(n *forNode, f *frame, items []Value) error {
	p := n.plan
	rec := &r.next.loops[p.id]
	rec.valid = true
	rec.items = items
	rec.start = r.out.Len()
	rec.negAt = len(items)
	rec.eq = make([]Value, len(p.eq)+len(p.thr))
	rec.thr = rec.eq[len(p.eq):]
	rec.eq = rec.eq[:len(p.eq)]
	for i, d := range p.eq {
		v, ok := r.depValue(d, f)
		rec.eq[i] = v
		rec.valid = rec.valid && ok
	}
	for i, t := range p.thr {
		v, ok := r.depValue(t.dep, f)
		rec.thr[i] = v
		rec.valid = rec.valid && ok
	}
	rec.ends = make([]int, len(items))
	nc := len(p.carried)
	var carried []*Namespace // the namespaces of p.carried, in order
	if nc > 0 {
		carried = make([]*Namespace, nc)
		rec.state = make([]Value, nc*(len(items)+1))
		for c, d := range p.carried {
			obj, _ := f.lookup(d.name)
			ns, ok := obj.(*Namespace)
			if !ok { // execSet fails at the first assignment
				rec.valid = false
				continue
			}
			carried[c] = ns
			v, ok := ns.Get(d.attr)
			rec.state[c] = v
			rec.valid = rec.valid && ok && comparable(v)
		}
	}
	j := 0
	if rec.valid {
		j = r.skippable(p, rec)
	}
	if j > 0 {
		prev := &r.prior.loops[p.id]
		r.out.WriteString(r.prior.out[prev.start:prev.ends[j-1]])
		for i := range j {
			rec.ends[i] = rec.start + prev.ends[i] - prev.start
		}
		copy(rec.state[nc:(j+1)*nc], prev.state[nc:(j+1)*nc])
		for c, ns := range carried {
			ns.Set(p.carried[c].attr, prev.state[j*nc+c])
		}
		if err := r.tick(); err != nil {
			return err
		}
	}
	r.next.copied += j
	r.next.ran += len(items) - j
	fr := newFrame(f)
	loop := &loopInfo{items: items}
	r.track, r.trackI = rec, 0
	defer func() { r.track = nil }()
	for i := j; i < len(items); i++ {
		fr.vars.reset()
		fr.vars.Set(p.target, items[i])
		loop.i = i
		r.trackI = i
		fr.vars.Set("loop", loop)
		if i > 0 && rec.valid {
			for c, ns := range carried {
				rec.state[i*nc+c], _ = ns.Get(p.carried[c].attr)
			}
		}
		err := r.exec(n.body, fr)
		if err != nil && !errors.Is(err, errContinue) {
			// break at the plan's depth is excluded by analyzeLoop; a nested one is
			// its own loop's
			return err
		}
		rec.ends[i] = r.out.Len()
	}
	if rec.valid {
		for c, ns := range carried {
			rec.state[len(items)*nc+c], _ = ns.Get(p.carried[c].attr)
		}
	}
	return nil
}

// skippable returns how many leading iterations of the loop rec is recording are
// known to write what they wrote in r.prior's render.
func (r *renderer) skippable(p *loopPlan, rec *loopRecord) int {
	if r.prior == nil || r.prior.t != r.t {
		return 0
	}
	prev := &r.prior.loops[p.id]
	if !prev.valid {
		return 0
	}
	for i := range p.eq {
		if !sameScalar(prev.eq[i], rec.eq[i]) {
			return 0
		}
	}
	for c := range p.carried {
		if !sameScalar(prev.state[c], rec.state[c]) {
			return 0
		}
	}
	same := 0
	for m := min(len(prev.items), len(rec.items)); same < m && sameItem(prev.items[same], rec.items[same]); {
		same++
	}
	j := same
	if p.usesLast {
		j = min(j, len(prev.items)-1, len(rec.items)-1)
	}
	if p.nbrMax >= 0 {
		j = min(j, same-p.nbrMax)
	}
	if p.nbrNeg {
		j = min(j, prev.negAt)
	}
	for i, t := range p.thr {
		a, b := prev.thr[i], rec.thr[i]
		x, okx := a.(int64)
		y, oky := b.(int64)
		switch {
		case okx && oky:
			j = int(min(int64(j), min(x, y)-int64(t.off))) // below both, the comparison is the same
		case !sameScalar(a, b):
			return 0
		}
	}
	return max(j, 0)
}

// noteNeighbour records, for the loop being recorded, the first iteration that read
// its list at a negative index (from the end, which a longer list changes).
func (r *renderer) noteNeighbour(idx Value) {
	if n, ok := idx.(int64); ok && n < 0 && r.track != nil && r.trackI < r.track.negAt {
		r.track.negAt = r.trackI
	}
}

// RenderFrom is RenderSize that also returns the Prior of this render, and uses
// prior, a Prior an earlier RenderFrom of the same template returned (nil: none), to
// skip the iterations of its planned loops that render as they did then. The output
// is RenderSize's.
func (t *Template) RenderFrom(vars map[string]Value, size int, prior *Prior) (string, *Prior, error) {
	next := &Prior{t: t}
	if len(t.plans) > 0 {
		next.loops = make([]loopRecord, len(t.plans))
	}
	out, err := t.render(vars, size, prior, next)
	if err != nil {
		return "", nil, err
	}
	next.out = out
	return out, next, nil
}
