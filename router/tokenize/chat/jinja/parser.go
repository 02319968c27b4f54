package jinja

import (
	"fmt"
	"strconv"
)

// node is a statement of the template body.
type node interface{}

type (
	textNode   struct{ s string }
	outputNode struct{ e expr }
	ifNode     struct {
		cond       expr
		then, els_ []node
	}
	forNode struct {
		targets []string
		iter    expr
		filter  expr // nil: none
		body    []node
		els_    []node
		plan    *loopPlan // nil: not resumable (resume.go)
		quiet   expr      // the guard of a loop that goes quiet (quiet.go), or nil
	}
	setNode struct {
		targets []string // one name, or several for unpacking
		attrOf  string   // set ns.attr = ...: the namespace variable
		value   expr     // nil for a block set
		body    []node
	}
	macroNode struct {
		name     string
		params   []string
		defaults []expr // per param, nil: none
		body     []node
	}
	callBlockNode struct {
		call expr
		body []node
	}
	filterBlockNode struct {
		filter *filterExpr
		body   []node
	}
	breakNode    struct{}
	continueNode struct{}
)

// expr is an expression.
type expr interface{}

type (
	literal  struct{ v Value }
	nameExpr struct{ name string }
	listExpr struct{ items []expr }
	dictExpr struct{ keys, vals []expr }
	attrExpr struct {
		obj  expr
		name string
	}
	indexExpr struct {
		obj, index expr
		nbr        bool // a planned loop's items[loop.index0 - c] (resume.go)
	}
	sliceExpr struct {
		obj               expr
		start, stop, step expr // nil: omitted
	}
	callExpr struct {
		fn     expr
		args   []expr
		kwName []string
		kwVal  []expr
	}
	filterExpr struct {
		obj    expr // nil inside a filter block
		name   string
		args   []expr
		kwName []string
		kwVal  []expr
	}
	testExpr struct {
		obj  expr
		name string
		args []expr
		neg  bool
	}
	unaryExpr struct {
		op string
		x  expr
	}
	binExpr struct {
		op   string
		l, r expr
	}
	condExpr struct {
		cond, a, b expr // b nil: undefined
	}
)

type parser struct {
	toks  []token
	pos   int
	depth int // expression and block nesting, bounded by maxNesting
}

// maxNesting bounds how deeply expressions and blocks nest, so a hostile template
// cannot exhaust the stack of the recursive-descent parser or the renderer.
const maxNesting = 256

func (p *parser) enter() error {
	p.depth++
	if p.depth > maxNesting {
		return p.errf("nesting deeper than %d", maxNesting)
	}
	return nil
}

func (p *parser) peek() token { return p.toks[p.pos] }
func (p *parser) next() token {
	t := p.toks[p.pos]
	if t.kind != tEOF {
		p.pos++
	}
	return t
}

func (p *parser) errf(format string, args ...any) error {
	return fmt.Errorf("line %d: %s", p.peek().line, fmt.Sprintf(format, args...))
}

func (p *parser) isOp(v string) bool {
	t := p.peek()
	return t.kind == tOp && t.val == v
}

func (p *parser) isName(v string) bool {
	t := p.peek()
	return t.kind == tName && t.val == v
}

func (p *parser) expectOp(v string) error {
	if !p.isOp(v) {
		return p.errf("expected %q, got %s", v, p.peek())
	}
	p.next()
	return nil
}

func (p *parser) expectKind(k tokKind, what string) (token, error) {
	if p.peek().kind != k {
		return token{}, p.errf("expected %s, got %s", what, p.peek())
	}
	return p.next(), nil
}

func (p *parser) expectName() (string, error) {
	t, err := p.expectKind(tName, "a name")
	return t.val, err
}

// parseBody parses statements until a block tag whose name is in stops (returned,
// with the parser just after the name) or the end of the template.
func (p *parser) parseBody(stops ...string) ([]node, string, error) {
	if err := p.enter(); err != nil {
		return nil, "", err
	}
	defer func() { p.depth-- }()
	var body []node
	for {
		t := p.peek()
		switch t.kind {
		case tEOF:
			if len(stops) > 0 {
				return nil, "", p.errf("missing {%% %s %%}", stops[0])
			}
			return body, "", nil
		case tText:
			p.next()
			body = append(body, &textNode{s: t.val})
		case tVarBegin:
			p.next()
			e, err := p.parseExpr()
			if err != nil {
				return nil, "", err
			}
			if _, err := p.expectKind(tVarEnd, "}}"); err != nil {
				return nil, "", err
			}
			body = append(body, &outputNode{e: e})
		case tBlkBegin:
			p.next()
			name, err := p.expectName()
			if err != nil {
				return nil, "", err
			}
			for _, s := range stops {
				if name == s {
					return body, name, nil
				}
			}
			n, err := p.parseStatement(name)
			if err != nil {
				return nil, "", err
			}
			if n != nil {
				body = append(body, n)
			}
		default:
			return nil, "", p.errf("unexpected %s", t)
		}
	}
}

func (p *parser) endTag() error {
	_, err := p.expectKind(tBlkEnd, "%}")
	return err
}

func (p *parser) parseStatement(name string) (node, error) {
	switch name {
	case "if":
		return p.parseIf()
	case "for":
		return p.parseFor()
	case "set":
		return p.parseSet()
	case "macro":
		return p.parseMacro()
	case "call":
		call, err := p.parseExpr()
		if err != nil {
			return nil, err
		}
		if err := p.endTag(); err != nil {
			return nil, err
		}
		body, _, err := p.parseBody("endcall")
		if err != nil {
			return nil, err
		}
		return &callBlockNode{call: call, body: body}, p.endTag()
	case "filter":
		f, err := p.parseFilterTail(nil)
		if err != nil {
			return nil, err
		}
		if err := p.endTag(); err != nil {
			return nil, err
		}
		body, _, err := p.parseBody("endfilter")
		if err != nil {
			return nil, err
		}
		return &filterBlockNode{filter: f, body: body}, p.endTag()
	case "generation":
		// transformers' {% generation %} marks assistant text for masks; it renders
		// its body unchanged.
		if err := p.endTag(); err != nil {
			return nil, err
		}
		body, _, err := p.parseBody("endgeneration")
		if err != nil {
			return nil, err
		}
		return &ifNode{cond: &literal{v: true}, then: body}, p.endTag()
	case "break":
		return &breakNode{}, p.endTag()
	case "continue":
		return &continueNode{}, p.endTag()
	}
	return nil, p.errf("unsupported tag %q", name)
}

func (p *parser) parseIf() (node, error) {
	cond, err := p.parseExpr()
	if err != nil {
		return nil, err
	}
	if err := p.endTag(); err != nil {
		return nil, err
	}
	body, stop, err := p.parseBody("elif", "else", "endif")
	if err != nil {
		return nil, err
	}
	n := &ifNode{cond: cond, then: body}
	switch stop {
	case "elif":
		sub, err := p.parseIf()
		if err != nil {
			return nil, err
		}
		n.els_ = []node{sub}
		return n, nil
	case "else":
		if err := p.endTag(); err != nil {
			return nil, err
		}
		if n.els_, _, err = p.parseBody("endif"); err != nil {
			return nil, err
		}
	}
	return n, p.endTag()
}

func (p *parser) parseFor() (node, error) {
	n := &forNode{}
	for {
		name, err := p.expectName()
		if err != nil {
			return nil, err
		}
		n.targets = append(n.targets, name)
		if !p.isOp(",") {
			break
		}
		p.next()
	}
	if !p.isName("in") {
		return nil, p.errf("expected \"in\", got %s", p.peek())
	}
	p.next()
	var err error
	if n.iter, err = p.parseOr(); err != nil {
		return nil, err
	}
	if p.isName("if") {
		p.next()
		if n.filter, err = p.parseOr(); err != nil {
			return nil, err
		}
	}
	if p.isName("recursive") {
		return nil, p.errf("recursive loops are not supported")
	}
	if err := p.endTag(); err != nil {
		return nil, err
	}
	body, stop, err := p.parseBody("else", "endfor")
	if err != nil {
		return nil, err
	}
	n.body = body
	n.quiet = quietGuard(n)
	if stop == "else" {
		if err := p.endTag(); err != nil {
			return nil, err
		}
		if n.els_, _, err = p.parseBody("endfor"); err != nil {
			return nil, err
		}
	}
	return n, p.endTag()
}

func (p *parser) parseSet() (node, error) {
	n := &setNode{}
	name, err := p.expectName()
	if err != nil {
		return nil, err
	}
	if p.isOp(".") {
		p.next()
		attr, err := p.expectName()
		if err != nil {
			return nil, err
		}
		n.attrOf, n.targets = name, []string{attr}
	} else {
		n.targets = []string{name}
		for p.isOp(",") {
			p.next()
			nm, err := p.expectName()
			if err != nil {
				return nil, err
			}
			n.targets = append(n.targets, nm)
		}
	}
	if p.peek().kind == tBlkEnd {
		p.next()
		if n.body, _, err = p.parseBody("endset"); err != nil {
			return nil, err
		}
		return n, p.endTag()
	}
	if err := p.expectOp("="); err != nil {
		return nil, err
	}
	if n.value, err = p.parseTuple(); err != nil {
		return nil, err
	}
	return n, p.endTag()
}

func (p *parser) parseMacro() (node, error) {
	n := &macroNode{}
	var err error
	if n.name, err = p.expectName(); err != nil {
		return nil, err
	}
	if err := p.expectOp("("); err != nil {
		return nil, err
	}
	for !p.isOp(")") {
		name, err := p.expectName()
		if err != nil {
			return nil, err
		}
		var def expr
		if p.isOp("=") {
			p.next()
			if def, err = p.parseExpr(); err != nil {
				return nil, err
			}
		}
		n.params = append(n.params, name)
		n.defaults = append(n.defaults, def)
		if !p.isOp(",") {
			break
		}
		p.next()
	}
	if err := p.expectOp(")"); err != nil {
		return nil, err
	}
	if err := p.endTag(); err != nil {
		return nil, err
	}
	if n.body, _, err = p.parseBody("endmacro"); err != nil {
		return nil, err
	}
	return n, p.endTag()
}

// parseTuple parses an expression, or a comma-separated tuple of them (as a list).
func (p *parser) parseTuple() (expr, error) {
	e, err := p.parseExpr()
	if err != nil || !p.isOp(",") {
		return e, err
	}
	items := []expr{e}
	for p.isOp(",") {
		p.next()
		e, err := p.parseExpr()
		if err != nil {
			return nil, err
		}
		items = append(items, e)
	}
	return &listExpr{items: items}, nil
}

// parseExpr parses a full expression, including the inline if-else.
func (p *parser) parseExpr() (expr, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer func() { p.depth-- }()
	a, err := p.parseOr()
	if err != nil {
		return nil, err
	}
	for p.isName("if") {
		p.next()
		cond, err := p.parseOr()
		if err != nil {
			return nil, err
		}
		var b expr
		if p.isName("else") {
			p.next()
			if b, err = p.parseExpr(); err != nil {
				return nil, err
			}
		}
		a = &condExpr{cond: cond, a: a, b: b}
	}
	return a, nil
}

func (p *parser) parseOr() (expr, error) {
	l, err := p.parseAnd()
	for err == nil && p.isName("or") {
		p.next()
		var r expr
		r, err = p.parseAnd()
		l = &binExpr{op: "or", l: l, r: r}
	}
	return l, err
}

func (p *parser) parseAnd() (expr, error) {
	l, err := p.parseNot()
	for err == nil && p.isName("and") {
		p.next()
		var r expr
		r, err = p.parseNot()
		l = &binExpr{op: "and", l: l, r: r}
	}
	return l, err
}

func (p *parser) parseNot() (expr, error) {
	if p.isName("not") {
		p.next()
		if err := p.enter(); err != nil {
			return nil, err
		}
		defer func() { p.depth-- }()
		x, err := p.parseNot()
		return &unaryExpr{op: "not", x: x}, err
	}
	return p.parseCompare()
}

// parseCompare parses comparisons; a chain a < b < c means a < b and b < c, as in
// Python and Jinja.
func (p *parser) parseCompare() (expr, error) {
	l, err := p.parseConcat()
	if err != nil {
		return nil, err
	}
	var chain expr
	for {
		t := p.peek()
		var op string
		switch {
		case t.kind == tOp && (t.val == "==" || t.val == "!=" || t.val == "<" || t.val == ">" || t.val == "<=" || t.val == ">="):
			op = t.val
			p.next()
		case t.kind == tName && t.val == "in":
			op = "in"
			p.next()
		case t.kind == tName && t.val == "not" && p.toks[p.pos+1].kind == tName && p.toks[p.pos+1].val == "in":
			op = "not in"
			p.pos += 2
		default:
			if chain == nil {
				return l, nil
			}
			return chain, nil
		}
		r, err := p.parseConcat()
		if err != nil {
			return nil, err
		}
		cmp := &binExpr{op: op, l: l, r: r}
		if chain == nil {
			chain = cmp
		} else {
			chain = &binExpr{op: "and", l: chain, r: cmp}
		}
		l = r
	}
}

func (p *parser) parseConcat() (expr, error) {
	l, err := p.parseAdd()
	for err == nil && p.isOp("~") {
		p.next()
		var r expr
		r, err = p.parseAdd()
		l = &binExpr{op: "~", l: l, r: r}
	}
	return l, err
}

func (p *parser) parseAdd() (expr, error) {
	l, err := p.parseMul()
	for err == nil && (p.isOp("+") || p.isOp("-")) {
		op := p.next().val
		var r expr
		r, err = p.parseMul()
		l = &binExpr{op: op, l: l, r: r}
	}
	return l, err
}

func (p *parser) parseMul() (expr, error) {
	l, err := p.parsePow()
	for err == nil && (p.isOp("*") || p.isOp("/") || p.isOp("//") || p.isOp("%")) {
		op := p.next().val
		var r expr
		r, err = p.parsePow()
		l = &binExpr{op: op, l: l, r: r}
	}
	return l, err
}

// parsePow parses **, which in Jinja binds looser than unary minus and filters:
// -2 ** 2 is 4.
func (p *parser) parsePow() (expr, error) {
	l, err := p.parseUnary(true)
	for err == nil && p.isOp("**") {
		p.next()
		var r expr
		r, err = p.parseUnary(true)
		l = &binExpr{op: "**", l: l, r: r}
	}
	return l, err
}

// parseUnary parses unary minus and plus, a primary with its postfix operators,
// and (withFilter) the filters and tests after it, as Jinja's parse_unary does:
// -3 | abs is 3.
func (p *parser) parseUnary(withFilter bool) (expr, error) {
	var e expr
	var err error
	if p.isOp("-") || p.isOp("+") {
		op := p.next().val
		if err := p.enter(); err != nil {
			return nil, err
		}
		defer func() { p.depth-- }()
		var x expr
		if x, err = p.parseUnary(false); err != nil {
			return nil, err
		}
		e = &unaryExpr{op: op, x: x}
	} else if e, err = p.parsePostfix(); err != nil {
		return nil, err
	}
	if !withFilter {
		return e, nil
	}
	return p.parseFilterTest(e)
}

// parseFilterTest parses the filters and tests applied to e.
func (p *parser) parseFilterTest(e expr) (expr, error) {
	for {
		switch {
		case p.isOp("|"):
			p.next()
			f, err := p.parseFilterTail(e)
			if err != nil {
				return nil, err
			}
			e = f
		case p.isName("is"):
			p.next()
			t := &testExpr{obj: e}
			if p.isName("not") {
				p.next()
				t.neg = true
			}
			tk := p.next()
			isCmp := tk.kind == tOp && (tk.val == "==" || tk.val == "!=" || tk.val == "<" || tk.val == ">" || tk.val == "<=" || tk.val == ">=")
			if tk.kind != tName && !isCmp {
				return nil, p.errf("expected a test name, got %s", tk)
			}
			t.name = tk.val
			if p.isOp("(") {
				args, _, _, err := p.parseArgs()
				if err != nil {
					return nil, err
				}
				t.args = args
			} else if k := p.peek().kind; k == tString || k == tInt || k == tFloat || (k == tName && !isKeyword(p.peek().val)) {
				arg, err := p.parsePostfix()
				if err != nil {
					return nil, err
				}
				t.args = []expr{arg}
			}
			e = t
		default:
			return e, nil
		}
	}
}

func isKeyword(s string) bool {
	switch s {
	case "and", "or", "not", "in", "is", "if", "else":
		return true
	}
	return false
}

func (p *parser) parseFilterTail(obj expr) (*filterExpr, error) {
	name, err := p.expectName()
	if err != nil {
		return nil, err
	}
	for p.isOp(".") { // dotted filter names
		p.next()
		n, err := p.expectName()
		if err != nil {
			return nil, err
		}
		name += "." + n
	}
	f := &filterExpr{obj: obj, name: name}
	if p.isOp("(") {
		if f.args, f.kwName, f.kwVal, err = p.parseArgs(); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// parseArgs parses a parenthesized argument list.
func (p *parser) parseArgs() ([]expr, []string, []expr, error) {
	if err := p.expectOp("("); err != nil {
		return nil, nil, nil, err
	}
	var args, kwVal []expr
	var kwName []string
	for !p.isOp(")") {
		if p.peek().kind == tName && p.toks[p.pos+1].kind == tOp && p.toks[p.pos+1].val == "=" {
			name := p.next().val
			p.next()
			v, err := p.parseExpr()
			if err != nil {
				return nil, nil, nil, err
			}
			kwName, kwVal = append(kwName, name), append(kwVal, v)
		} else {
			if p.isOp("*") {
				return nil, nil, nil, p.errf("*args are not supported")
			}
			v, err := p.parseExpr()
			if err != nil {
				return nil, nil, nil, err
			}
			args = append(args, v)
		}
		if !p.isOp(",") {
			break
		}
		p.next()
	}
	return args, kwName, kwVal, p.expectOp(")")
}

func (p *parser) parsePostfix() (expr, error) {
	e, err := p.parsePrimary()
	if err != nil {
		return nil, err
	}
	for {
		switch {
		case p.isOp("."):
			p.next()
			t := p.next()
			if t.kind != tName && t.kind != tInt {
				return nil, p.errf("expected an attribute name, got %s", t)
			}
			if t.kind == tInt {
				n, _ := strconv.ParseInt(t.val, 10, 64)
				e = &indexExpr{obj: e, index: &literal{v: n}}
			} else {
				e = &attrExpr{obj: e, name: t.val}
			}
		case p.isOp("["):
			p.next()
			var parts [3]expr
			colons := 0
			for !p.isOp("]") {
				if p.isOp(":") {
					p.next()
					colons++
					if colons > 2 {
						return nil, p.errf("bad slice")
					}
					continue
				}
				x, err := p.parseExpr()
				if err != nil {
					return nil, err
				}
				parts[colons] = x
			}
			p.next()
			if colons == 0 {
				if parts[0] == nil {
					return nil, p.errf("empty subscript")
				}
				e = &indexExpr{obj: e, index: parts[0]}
			} else {
				e = &sliceExpr{obj: e, start: parts[0], stop: parts[1], step: parts[2]}
			}
		case p.isOp("("):
			args, kwName, kwVal, err := p.parseArgs()
			if err != nil {
				return nil, err
			}
			e = &callExpr{fn: e, args: args, kwName: kwName, kwVal: kwVal}
		default:
			return e, nil
		}
	}
}

func (p *parser) parsePrimary() (expr, error) {
	t := p.next()
	switch t.kind {
	case tString:
		s := t.val
		for p.peek().kind == tString { // adjacent literals concatenate
			s += p.next().val
		}
		return &literal{v: s}, nil
	case tInt:
		n, err := strconv.ParseInt(t.val, 10, 64)
		if err != nil {
			return nil, p.errf("bad integer %q", t.val)
		}
		return &literal{v: n}, nil
	case tFloat:
		f, err := strconv.ParseFloat(t.val, 64)
		if err != nil {
			return nil, p.errf("bad float %q", t.val)
		}
		return &literal{v: f}, nil
	case tName:
		switch t.val {
		case "true", "True":
			return &literal{v: true}, nil
		case "false", "False":
			return &literal{v: false}, nil
		case "none", "None":
			return &literal{v: nil}, nil
		}
		return &nameExpr{name: t.val}, nil
	case tOp:
		switch t.val {
		case "(":
			if p.isOp(")") {
				p.next()
				return &listExpr{}, nil
			}
			e, err := p.parseExpr()
			if err != nil {
				return nil, err
			}
			if p.isOp(",") { // tuple
				items := []expr{e}
				for p.isOp(",") {
					p.next()
					if p.isOp(")") {
						break
					}
					x, err := p.parseExpr()
					if err != nil {
						return nil, err
					}
					items = append(items, x)
				}
				e = &listExpr{items: items}
			}
			return e, p.expectOp(")")
		case "[":
			l := &listExpr{}
			for !p.isOp("]") {
				x, err := p.parseExpr()
				if err != nil {
					return nil, err
				}
				l.items = append(l.items, x)
				if !p.isOp(",") {
					break
				}
				p.next()
			}
			return l, p.expectOp("]")
		case "{":
			d := &dictExpr{}
			for !p.isOp("}") {
				k, err := p.parseExpr()
				if err != nil {
					return nil, err
				}
				if err := p.expectOp(":"); err != nil {
					return nil, err
				}
				v, err := p.parseExpr()
				if err != nil {
					return nil, err
				}
				d.keys, d.vals = append(d.keys, k), append(d.vals, v)
				if !p.isOp(",") {
					break
				}
				p.next()
			}
			return d, p.expectOp("}")
		}
	}
	if t.kind != tEOF {
		p.pos--
	}
	return nil, p.errf("unexpected %s", t)
}
