package jinja

// A loop that goes quiet. Qwen3's template scans the messages from the newest back for
// the last user query:
//
//	{%- for message in messages[::-1] %}
//	    {%- set index = (messages|length - 1) - loop.index0 %}
//	    {%- if ns.multi_step_tool and message.role == "user" and ... %}
//	        {%- set ns.multi_step_tool = false %}
//	        {%- set ns.last_query_index = index %}
//	    {%- endif %}
//	{%- endfor %}
//
// Once ns.multi_step_tool is false, every later iteration binds index and tests a
// condition that fails at its first operand: nothing it does is seen after it. Yet the
// loop runs to the oldest message: 0.20 s of the render's 0.47 s at turns 30 to 40
// once the main loop resumed from the previous turn (CPU profile of
// BenchmarkDecision, 2026-12-07). Parse marks such loops with their guard (quietGuard),
// and a render stops the loop after the first iteration that starts with the guard
// false.
//
// The body must be, besides empty text, only:
//
//   - if statements without else whose condition is the guard G or "G and ...", G an
//     attribute of an outer name (ns.attr): while G is false they do not run, whatever
//     they hold, and only they may set G, so G stays false;
//   - sets of plain names to expressions that cannot fail for the values seen once
//     they succeeded once (quietSafe): they bind in the iteration's own frame, which
//     the next iteration resets and nothing outside the loop sees. Once G is false the
//     outer values they read no longer change, and loop.index0 and its like stay ints,
//     so an iteration that started with G false and ran them without an error (no if
//     ran in it, so none skipped a set with continue or bound a name a set reads)
//     proves the later ones would.
//
// So the output, the variables after the loop and the errors (none) are what the full
// loop gives. TestQuietLoop compares with full runs.

// quietGuard returns the guard of a loop that goes quiet, or nil.
func quietGuard(n *forNode) expr {
	if n.filter != nil {
		return nil
	}
	var guard *attrExpr
	bound := map[string]bool{"loop": true}
	for _, t := range n.targets {
		bound[t] = true
	}
	var sets []*setNode
	for _, st := range n.body {
		switch st := st.(type) {
		case *textNode:
			if st.s != "" {
				return nil
			}
		case *setNode:
			if st.attrOf != "" || st.value == nil || len(st.targets) != 1 {
				return nil
			}
			sets = append(sets, st)
			bound[st.targets[0]] = true
		case *ifNode:
			if len(st.els_) != 0 {
				return nil
			}
			g := st.cond
			for {
				b, ok := g.(*binExpr)
				if !ok || b.op != "and" {
					break
				}
				g = b.l
			}
			a, ok := g.(*attrExpr)
			if !ok {
				return nil
			}
			if _, ok := a.obj.(*nameExpr); !ok {
				return nil
			}
			if guard == nil {
				guard = a
			} else if a.name != guard.name || a.obj.(*nameExpr).name != guard.obj.(*nameExpr).name {
				return nil
			}
		default:
			return nil
		}
	}
	if guard == nil || bound[guard.obj.(*nameExpr).name] {
		return nil
	}
	for _, st := range sets {
		if !quietSafe(st.value, n.targets) {
			return nil
		}
	}
	return guard
}

// quietSafe reports expressions whose success depends only on the types of the values
// they read, none of them the loop's item: literals, names, attributes of names (loop's
// counters only: previtem and its like are items), + and -, comparisons, not and
// unary minus, and the length filter.
func quietSafe(e expr, targets []string) bool {
	switch e := e.(type) {
	case *literal:
		return true
	case *nameExpr:
		for _, t := range targets {
			if e.name == t {
				return false
			}
		}
		return e.name != "loop"
	case *attrExpr:
		o, ok := e.obj.(*nameExpr)
		if !ok {
			return false
		}
		if o.name == "loop" {
			switch e.name {
			case "index0", "index", "revindex", "revindex0", "first", "last", "length":
				return true
			}
			return false
		}
		return quietSafe(o, targets)
	case *binExpr:
		switch e.op {
		case "+", "-", "==", "!=", "<", "<=", ">", ">=":
			return quietSafe(e.l, targets) && quietSafe(e.r, targets)
		}
	case *unaryExpr:
		return (e.op == "not" || e.op == "-") && quietSafe(e.x, targets)
	case *filterExpr:
		return e.name == "length" && e.obj != nil && len(e.args) == 0 && len(e.kwVal) == 0 &&
			quietSafe(e.obj, targets)
	}
	return false
}

// noQuiet turns the early stop off, for tests that compare with full loops.
var noQuiet bool
