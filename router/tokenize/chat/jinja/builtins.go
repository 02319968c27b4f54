package jinja

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Now is the clock strftime_now reads. Tests replace it.
var Now = time.Now

var globals = map[string]Value{
	"range": Func(func(args []Value, _ *Dict) (Value, error) {
		var a [3]int64
		a[2] = 1
		for i, v := range args {
			n, ok := v.(int64)
			if !ok || i > 2 {
				return nil, errors.New("range takes up to 3 integer arguments")
			}
			a[i] = n
		}
		start, stop, step := int64(0), a[0], int64(1)
		if len(args) >= 2 {
			start, stop = a[0], a[1]
		}
		if len(args) == 3 {
			step = a[2]
		}
		if step == 0 {
			return nil, errors.New("range() arg 3 must not be zero")
		}
		out := []Value{}
		for i := start; (step > 0 && i < stop) || (step < 0 && i > stop); i += step {
			if len(out) > 1_000_000 {
				return nil, errors.New("range too large")
			}
			out = append(out, i)
		}
		return out, nil
	}),
	"namespace": Func(func(args []Value, kw *Dict) (Value, error) {
		ns := &Namespace{Dict: *NewDict()}
		for _, a := range args {
			if d, ok := a.(*Dict); ok {
				for i, k := range d.keys {
					ns.Set(k, d.vals[i])
				}
			}
		}
		for i, k := range kw.Keys() {
			ns.Set(k, kw.vals[i])
		}
		return ns, nil
	}),
	"dict": Func(func(args []Value, kw *Dict) (Value, error) {
		d := NewDict()
		for _, a := range args {
			if src, ok := a.(*Dict); ok {
				for i, k := range src.keys {
					d.Set(k, src.vals[i])
				}
			}
		}
		for i, k := range kw.Keys() {
			d.Set(k, kw.vals[i])
		}
		return d, nil
	}),
	"raise_exception": Func(func(args []Value, _ *Dict) (Value, error) {
		msg := ""
		if len(args) > 0 {
			msg = str(args[0])
		}
		return nil, fmt.Errorf("%w: %s", ErrRaised, msg)
	}),
	"strftime_now": Func(func(args []Value, _ *Dict) (Value, error) {
		if len(args) != 1 {
			return nil, errors.New("strftime_now takes one argument")
		}
		f, ok := args[0].(string)
		if !ok {
			return nil, errors.New("strftime_now format must be a string")
		}
		return Strftime(Now(), f), nil
	}),
}

// Strftime formats t as Python's time.strftime does for the common directives.
func Strftime(t time.Time, f string) string {
	var b strings.Builder
	for i := 0; i < len(f); i++ {
		if f[i] != '%' || i+1 >= len(f) {
			b.WriteByte(f[i])
			continue
		}
		i++
		switch f[i] {
		case 'Y':
			fmt.Fprintf(&b, "%04d", t.Year())
		case 'y':
			fmt.Fprintf(&b, "%02d", t.Year()%100)
		case 'm':
			fmt.Fprintf(&b, "%02d", int(t.Month()))
		case 'd':
			fmt.Fprintf(&b, "%02d", t.Day())
		case 'e':
			fmt.Fprintf(&b, "%2d", t.Day())
		case '-':
			if i+1 < len(f) {
				i++
				switch f[i] {
				case 'd':
					fmt.Fprintf(&b, "%d", t.Day())
				case 'm':
					fmt.Fprintf(&b, "%d", int(t.Month()))
				case 'H':
					fmt.Fprintf(&b, "%d", t.Hour())
				default:
					b.WriteString("%-" + string(f[i]))
				}
			}
		case 'H':
			fmt.Fprintf(&b, "%02d", t.Hour())
		case 'I':
			h := t.Hour() % 12
			if h == 0 {
				h = 12
			}
			fmt.Fprintf(&b, "%02d", h)
		case 'M':
			fmt.Fprintf(&b, "%02d", t.Minute())
		case 'S':
			fmt.Fprintf(&b, "%02d", t.Second())
		case 'p':
			if t.Hour() < 12 {
				b.WriteString("AM")
			} else {
				b.WriteString("PM")
			}
		case 'B':
			b.WriteString(t.Month().String())
		case 'b', 'h':
			b.WriteString(t.Month().String()[:3])
		case 'A':
			b.WriteString(t.Weekday().String())
		case 'a':
			b.WriteString(t.Weekday().String()[:3])
		case 'j':
			fmt.Fprintf(&b, "%03d", t.YearDay())
		case 'Z':
			z, _ := t.Zone()
			b.WriteString(z)
		case 'z':
			b.WriteString(t.Format("-0700"))
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(f[i])
		}
	}
	return b.String()
}

// getAttr is obj.name: a method if obj's type has one by that name, else a key.
func getAttr(obj Value, name string) Value {
	if m := method(obj, name); m != nil {
		return m
	}
	switch x := obj.(type) {
	case *loopInfo:
		return x.attr(name)
	case *Dict:
		if v, ok := x.Get(name); ok {
			return v
		}
	case *Namespace:
		if v, ok := x.Get(name); ok {
			return v
		}
	}
	return Undefined{}
}

// getItem is obj[idx]: a key or index first, then an attribute.
func getItem(obj Value, idx Value) Value {
	switch x := obj.(type) {
	case *Dict:
		if k, ok := idx.(string); ok {
			if v, ok := x.Get(k); ok {
				return v
			}
			return getAttr(obj, k)
		}
	case *Namespace:
		if k, ok := idx.(string); ok {
			if v, ok := x.Get(k); ok {
				return v
			}
		}
	case []Value:
		if n, ok := idx.(int64); ok {
			if n < 0 {
				n += int64(len(x))
			}
			if n >= 0 && n < int64(len(x)) {
				return x[n]
			}
		}
	case string:
		if n, ok := idx.(int64); ok {
			rs := []rune(x)
			if n < 0 {
				n += int64(len(rs))
			}
			if n >= 0 && n < int64(len(rs)) {
				return string(rs[n])
			}
		}
	}
	if k, ok := idx.(string); ok {
		return getAttr(obj, k)
	}
	return Undefined{}
}

func argStr(args []Value, i int, def string) (string, bool) {
	if i >= len(args) || args[i] == nil {
		return def, true
	}
	s, ok := args[i].(string)
	return s, ok
}

func argInt(args []Value, kw *Dict, i int, name string, def int64) int64 {
	if i < len(args) {
		if n, ok := args[i].(int64); ok {
			return n
		}
	}
	if v, ok := kw.Get(name); ok {
		if n, ok := v.(int64); ok {
			return n
		}
	}
	return def
}

// method returns the bound method name of obj, or nil.
func method(obj Value, name string) Value {
	switch x := obj.(type) {
	case string:
		return strMethod(x, name)
	case *Dict:
		switch name {
		case "items":
			return Func(func([]Value, *Dict) (Value, error) {
				out := make([]Value, len(x.keys))
				for i, k := range x.keys {
					out[i] = []Value{k, x.vals[i]}
				}
				return out, nil
			})
		case "keys":
			return Func(func([]Value, *Dict) (Value, error) {
				out := make([]Value, len(x.keys))
				for i, k := range x.keys {
					out[i] = k
				}
				return out, nil
			})
		case "values":
			return Func(func([]Value, *Dict) (Value, error) {
				out := make([]Value, len(x.vals))
				copy(out, x.vals)
				return out, nil
			})
		case "get":
			return Func(func(args []Value, _ *Dict) (Value, error) {
				if len(args) == 0 {
					return nil, errors.New("get expected at least 1 argument")
				}
				if k, ok := args[0].(string); ok {
					if v, ok := x.Get(k); ok {
						return v, nil
					}
				}
				if len(args) > 1 {
					return args[1], nil
				}
				return nil, nil
			})
		}
	case []Value:
		switch name {
		case "index":
			return Func(func(args []Value, _ *Dict) (Value, error) {
				for i, v := range x {
					if len(args) > 0 && equal(v, args[0]) {
						return int64(i), nil
					}
				}
				return nil, errors.New("value is not in list")
			})
		case "count":
			return Func(func(args []Value, _ *Dict) (Value, error) {
				n := int64(0)
				for _, v := range x {
					if len(args) > 0 && equal(v, args[0]) {
						n++
					}
				}
				return n, nil
			})
		}
	}
	return nil
}

func strMethod(s, name string) Value {
	fn := func(f func(args []Value, kw *Dict) (Value, error)) Value { return Func(f) }
	strip := func(args []Value, left, right bool) (Value, error) {
		chars, ok := argStr(args, 0, "")
		if !ok {
			return nil, errors.New("strip arg must be None or str")
		}
		cut := func(r rune) bool {
			if len(args) == 0 || args[0] == nil {
				return unicode.IsSpace(r)
			}
			return strings.ContainsRune(chars, r)
		}
		out := s
		if left {
			out = strings.TrimLeftFunc(out, cut)
		}
		if right {
			out = strings.TrimRightFunc(out, cut)
		}
		return out, nil
	}
	switch name {
	case "strip":
		return fn(func(a []Value, _ *Dict) (Value, error) { return strip(a, true, true) })
	case "lstrip":
		return fn(func(a []Value, _ *Dict) (Value, error) { return strip(a, true, false) })
	case "rstrip":
		return fn(func(a []Value, _ *Dict) (Value, error) { return strip(a, false, true) })
	case "upper":
		return fn(func([]Value, *Dict) (Value, error) { return strings.ToUpper(s), nil })
	case "lower":
		return fn(func([]Value, *Dict) (Value, error) { return strings.ToLower(s), nil })
	case "title":
		return fn(func([]Value, *Dict) (Value, error) { return title(s), nil })
	case "capitalize":
		return fn(func([]Value, *Dict) (Value, error) { return capitalize(s), nil })
	case "startswith", "endswith":
		return fn(func(a []Value, _ *Dict) (Value, error) {
			if len(a) == 0 {
				return nil, fmt.Errorf("%s takes at least 1 argument", name)
			}
			cands := []Value{a[0]}
			if l, ok := a[0].([]Value); ok {
				cands = l
			}
			for _, c := range cands {
				p, ok := c.(string)
				if !ok {
					return nil, fmt.Errorf("%s first arg must be str or a tuple of str", name)
				}
				if (name == "startswith" && strings.HasPrefix(s, p)) || (name == "endswith" && strings.HasSuffix(s, p)) {
					return true, nil
				}
			}
			return false, nil
		})
	case "split", "rsplit":
		return fn(func(a []Value, kw *Dict) (Value, error) {
			sep, ok := argStr(a, 0, "")
			if v, has := kw.Get("sep"); has {
				sep, ok = v.(string)
			}
			if !ok {
				return nil, errors.New("split separator must be str or None")
			}
			maxSplit := argInt(a, kw, 1, "maxsplit", -1)
			var parts []string
			switch {
			case sep == "" && (len(a) == 0 || a[0] == nil):
				parts = strings.Fields(s)
				if maxSplit >= 0 && int64(len(parts)) > maxSplit+1 {
					// Rare; rejoin the tail approximately on single spaces.
					parts = append(parts[:maxSplit], strings.Join(parts[maxSplit:], " "))
				}
			case sep == "":
				return nil, errors.New("empty separator")
			case name == "rsplit" && maxSplit >= 0:
				all := strings.Split(s, sep)
				if int64(len(all)) > maxSplit+1 {
					k := len(all) - int(maxSplit)
					parts = append([]string{strings.Join(all[:k], sep)}, all[k:]...)
				} else {
					parts = all
				}
			default:
				parts = strings.SplitN(s, sep, int(maxSplit+1))
				if maxSplit < 0 {
					parts = strings.Split(s, sep)
				}
			}
			out := make([]Value, len(parts))
			for i, p := range parts {
				out[i] = p
			}
			return out, nil
		})
	case "replace":
		return fn(func(a []Value, _ *Dict) (Value, error) {
			o, ok1 := argStr(a, 0, "")
			n, ok2 := argStr(a, 1, "")
			if len(a) < 2 || !ok1 || !ok2 {
				return nil, errors.New("replace takes two strings")
			}
			return strings.Replace(s, o, n, int(argInt(a, nil, 2, "count", -1))), nil
		})
	case "find":
		return fn(func(a []Value, _ *Dict) (Value, error) {
			sub, ok := argStr(a, 0, "")
			if !ok {
				return nil, errors.New("find takes a string")
			}
			i := strings.Index(s, sub)
			if i < 0 {
				return int64(-1), nil
			}
			return int64(utf8.RuneCountInString(s[:i])), nil
		})
	case "count":
		return fn(func(a []Value, _ *Dict) (Value, error) {
			sub, ok := argStr(a, 0, "")
			if !ok {
				return nil, errors.New("count takes a string")
			}
			return int64(strings.Count(s, sub)), nil
		})
	case "join":
		return fn(func(a []Value, _ *Dict) (Value, error) {
			if len(a) != 1 {
				return nil, errors.New("join takes one argument")
			}
			items, err := iterate(a[0])
			if err != nil {
				return nil, err
			}
			parts := make([]string, len(items))
			for i, it := range items {
				parts[i] = str(it)
			}
			return strings.Join(parts, s), nil
		})
	case "isdigit", "isalpha", "isspace", "isupper", "islower", "isalnum":
		return fn(func([]Value, *Dict) (Value, error) {
			if s == "" {
				return false, nil
			}
			for _, r := range s {
				var ok bool
				switch name {
				case "isdigit":
					ok = unicode.IsDigit(r)
				case "isalpha":
					ok = unicode.IsLetter(r)
				case "isspace":
					ok = unicode.IsSpace(r)
				case "isalnum":
					ok = unicode.IsLetter(r) || unicode.IsNumber(r)
				case "isupper":
					ok = !unicode.IsLower(r)
				case "islower":
					ok = !unicode.IsUpper(r)
				}
				if !ok {
					return false, nil
				}
			}
			return true, nil
		})
	case "splitlines":
		return fn(func([]Value, *Dict) (Value, error) {
			lines := strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n")
			if len(lines) > 0 && lines[len(lines)-1] == "" {
				lines = lines[:len(lines)-1]
			}
			out := make([]Value, len(lines))
			for i, l := range lines {
				out[i] = l
			}
			return out, nil
		})
	}
	return nil
}

func title(s string) string {
	var b strings.Builder
	prev := false
	for _, r := range s {
		if unicode.IsLetter(r) {
			if prev {
				b.WriteRune(unicode.ToLower(r))
			} else {
				b.WriteRune(unicode.ToTitle(r))
			}
			prev = true
		} else {
			b.WriteRune(r)
			prev = false
		}
	}
	return b.String()
}

func capitalize(s string) string {
	r, w := utf8.DecodeRuneInString(s)
	if w == 0 {
		return s
	}
	return string(unicode.ToUpper(r)) + strings.ToLower(s[w:])
}

func length(v Value) (int64, error) {
	switch x := v.(type) {
	case string:
		return int64(utf8.RuneCountInString(x)), nil
	case []Value:
		return int64(len(x)), nil
	case *Dict:
		return int64(x.Len()), nil
	case *Namespace:
		return int64(x.Len()), nil
	case Undefined:
		return 0, nil
	}
	return 0, fmt.Errorf("object of type '%s' has no len()", typeName(v))
}

func (r *renderer) applyFilter(fe *filterExpr, obj Value, f *frame) (Value, error) {
	args, err := r.evalList(fe.args, f)
	if err != nil {
		return nil, err
	}
	kw, err := r.evalKw(fe.kwName, fe.kwVal, f)
	if err != nil {
		return nil, err
	}
	return filter(fe.name, obj, args, kw)
}

func filter(name string, obj Value, args []Value, kw *Dict) (Value, error) {
	switch name {
	case "safe", "e", "escape", "forceescape":
		if name == "safe" {
			return obj, nil
		}
		return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", "\"", "&#34;", "'", "&#39;").Replace(str(obj)), nil
	case "tojson":
		o := JSONOptions{}
		if v, ok := kw.Get("indent"); ok && v != nil {
			n, ok := v.(int64)
			if !ok {
				return nil, errors.New("tojson indent must be an integer")
			}
			o.Indent, o.HasIndent = int(n), true
		} else if len(args) > 0 {
			if n, ok := args[0].(int64); ok {
				o.Indent, o.HasIndent = int(n), true
			}
		}
		if v, ok := kw.Get("ensure_ascii"); ok {
			o.EnsureASCII = truthy(v)
		}
		if v, ok := kw.Get("sort_keys"); ok {
			o.SortKeys = truthy(v)
		}
		if v, ok := kw.Get("separators"); ok && v != nil {
			seps, ok := v.([]Value)
			if !ok || len(seps) != 2 {
				return nil, errors.New("tojson separators must be a pair of strings")
			}
			o.ItemSep, _ = seps[0].(string)
			o.KeySep, _ = seps[1].(string)
		}
		return ToJSON(obj, o)
	case "trim":
		s := str(obj)
		if chars, ok := argStr(args, 0, ""); ok && len(args) > 0 && args[0] != nil {
			return strings.Trim(s, chars), nil
		}
		return strings.TrimFunc(s, unicode.IsSpace), nil
	case "length", "count":
		n, err := length(obj)
		return n, err
	case "upper":
		return strings.ToUpper(str(obj)), nil
	case "lower":
		return strings.ToLower(str(obj)), nil
	case "title":
		return title(str(obj)), nil
	case "capitalize":
		return capitalize(str(obj)), nil
	case "string":
		return str(obj), nil
	case "int":
		switch x := obj.(type) {
		case int64:
			return x, nil
		case float64:
			return int64(x), nil
		case bool:
			return boolInt(x), nil
		case string:
			if n, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64); err == nil {
				return n, nil
			}
			if fl, err := strconv.ParseFloat(strings.TrimSpace(x), 64); err == nil {
				return int64(fl), nil
			}
		}
		return argInt(args, kw, 0, "default", 0), nil
	case "float":
		if fl, _, ok := number(obj); ok {
			return fl, nil
		}
		if s, ok := obj.(string); ok {
			if fl, err := strconv.ParseFloat(strings.TrimSpace(s), 64); err == nil {
				return fl, nil
			}
		}
		return 0.0, nil
	case "abs":
		switch x := obj.(type) {
		case int64:
			if x < 0 {
				return -x, nil
			}
			return x, nil
		case float64:
			return math.Abs(x), nil
		}
		return nil, fmt.Errorf("bad operand type for abs(): '%s'", typeName(obj))
	case "round":
		fl, _, ok := number(obj)
		if !ok {
			return nil, errors.New("round needs a number")
		}
		p := math.Pow(10, float64(argInt(args, kw, 0, "precision", 0)))
		method, _ := argStr(args, 1, "common")
		if v, ok := kw.Get("method"); ok {
			method, _ = v.(string)
		}
		switch method {
		case "ceil":
			return math.Ceil(fl*p) / p, nil
		case "floor":
			return math.Floor(fl*p) / p, nil
		}
		return math.Round(fl*p) / p, nil
	case "default", "d":
		def := Value("")
		if len(args) > 0 {
			def = args[0]
		}
		boolean := len(args) > 1 && truthy(args[1])
		if v, ok := kw.Get("boolean"); ok {
			boolean = truthy(v)
		}
		if _, undef := obj.(Undefined); undef || (boolean && !truthy(obj)) {
			return def, nil
		}
		return obj, nil
	case "first", "last":
		items, err := iterate(obj)
		if err != nil {
			return nil, err
		}
		if len(items) == 0 {
			return Undefined{}, nil
		}
		if name == "first" {
			return items[0], nil
		}
		return items[len(items)-1], nil
	case "list":
		items, err := iterate(obj)
		if err != nil {
			return nil, err
		}
		return append([]Value{}, items...), nil
	case "reverse":
		if s, ok := obj.(string); ok {
			rs := []rune(s)
			for i, j := 0, len(rs)-1; i < j; i, j = i+1, j-1 {
				rs[i], rs[j] = rs[j], rs[i]
			}
			return string(rs), nil
		}
		items, err := iterate(obj)
		if err != nil {
			return nil, err
		}
		out := make([]Value, len(items))
		for i, v := range items {
			out[len(items)-1-i] = v
		}
		return out, nil
	case "join":
		items, err := iterate(obj)
		if err != nil {
			return nil, err
		}
		sep, _ := argStr(args, 0, "")
		if v, ok := kw.Get("d"); ok {
			sep = str(v)
		}
		attr, hasAttr := kw.Get("attribute")
		if !hasAttr && len(args) > 1 {
			attr, hasAttr = args[1], true
		}
		parts := make([]string, len(items))
		for i, it := range items {
			if hasAttr {
				it = getItem(it, attr)
			}
			parts[i] = str(it)
		}
		return strings.Join(parts, sep), nil
	case "items":
		d, ok := obj.(*Dict)
		if !ok {
			if _, undef := obj.(Undefined); undef {
				return []Value{}, nil
			}
			return nil, errors.New("items filter needs a mapping")
		}
		out := make([]Value, len(d.keys))
		for i, k := range d.keys {
			out[i] = []Value{k, d.vals[i]}
		}
		return out, nil
	case "dictsort":
		d, ok := obj.(*Dict)
		if !ok {
			return nil, errors.New("dictsort needs a mapping")
		}
		keys := append([]string(nil), d.keys...)
		sort.Strings(keys)
		out := make([]Value, len(keys))
		for i, k := range keys {
			out[i] = []Value{k, d.at(k)}
		}
		return out, nil
	case "unique":
		items, err := iterate(obj)
		if err != nil {
			return nil, err
		}
		var out []Value
		for _, it := range items {
			dup := false
			for _, o := range out {
				if equal(o, it) {
					dup = true
					break
				}
			}
			if !dup {
				out = append(out, it)
			}
		}
		return out, nil
	case "sort":
		items, err := iterate(obj)
		if err != nil {
			return nil, err
		}
		out := append([]Value(nil), items...)
		attr, hasAttr := kw.Get("attribute")
		rev := false
		if v, ok := kw.Get("reverse"); ok {
			rev = truthy(v)
		} else if len(args) > 0 {
			rev = truthy(args[0])
		}
		var serr error
		sort.SliceStable(out, func(i, j int) bool {
			a, b := out[i], out[j]
			if hasAttr {
				a, b = getItem(a, attr), getItem(b, attr)
			}
			c, err := compare(a, b)
			if err != nil {
				serr = err
			}
			if rev {
				return c > 0
			}
			return c < 0
		})
		return out, serr
	case "map":
		items, err := iterate(obj)
		if err != nil {
			return nil, err
		}
		out := make([]Value, len(items))
		if attr, ok := kw.Get("attribute"); ok {
			def, hasDef := kw.Get("default")
			for i, it := range items {
				v := getItem(it, attr)
				if _, undef := v.(Undefined); undef && hasDef {
					v = def
				}
				out[i] = v
			}
			return out, nil
		}
		fname, ok := argStr(args, 0, "")
		if !ok || len(args) == 0 {
			return nil, errors.New("map needs a filter name or attribute=")
		}
		for i, it := range items {
			v, err := filter(fname, it, args[1:], nil)
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	case "select", "reject", "selectattr", "rejectattr":
		items, err := iterate(obj)
		if err != nil {
			return nil, err
		}
		byAttr := strings.HasSuffix(name, "attr")
		want := strings.HasPrefix(name, "select")
		var attr Value
		if byAttr {
			if len(args) == 0 {
				return nil, fmt.Errorf("%s needs an attribute", name)
			}
			attr, args = args[0], args[1:]
		}
		test := ""
		if len(args) > 0 {
			test, _ = args[0].(string)
			args = args[1:]
		}
		out := []Value{}
		for _, it := range items {
			v := it
			if byAttr {
				v = getItem(it, attr)
			}
			var ok bool
			if test == "" {
				ok = truthy(v)
			} else if ok, err = runTest(test, v, args); err != nil {
				return nil, err
			}
			if ok == want {
				out = append(out, it)
			}
		}
		return out, nil
	case "indent":
		s := str(obj)
		width := argInt(args, kw, 0, "width", 4)
		pad := strings.Repeat(" ", int(width))
		if v, ok := kw.Get("width"); ok {
			if ps, ok := v.(string); ok {
				pad = ps
			}
		}
		first := len(args) > 1 && truthy(args[1])
		if v, ok := kw.Get("first"); ok {
			first = truthy(v)
		}
		blank := len(args) > 2 && truthy(args[2])
		if v, ok := kw.Get("blank"); ok {
			blank = truthy(v)
		}
		lines := strings.Split(s, "\n")
		for i := range lines {
			if i == 0 && !first {
				continue
			}
			if lines[i] == "" && !blank {
				continue
			}
			lines[i] = pad + lines[i]
		}
		return strings.Join(lines, "\n"), nil
	case "replace":
		o, ok1 := argStr(args, 0, "")
		n, ok2 := argStr(args, 1, "")
		if len(args) < 2 || !ok1 || !ok2 {
			return nil, errors.New("replace takes two strings")
		}
		return strings.Replace(str(obj), o, n, int(argInt(args, kw, 2, "count", -1))), nil
	case "max", "min", "sum":
		items, err := iterate(obj)
		if err != nil {
			return nil, err
		}
		if name == "sum" {
			var acc Value = int64(0)
			for _, it := range items {
				if acc, err = binOp("+", acc, it); err != nil {
					return nil, err
				}
			}
			return acc, nil
		}
		if len(items) == 0 {
			return Undefined{}, nil
		}
		best := items[0]
		for _, it := range items[1:] {
			c, err := compare(it, best)
			if err != nil {
				return nil, err
			}
			if (name == "max" && c > 0) || (name == "min" && c < 0) {
				best = it
			}
		}
		return best, nil
	case "wordcount":
		return int64(len(strings.Fields(str(obj)))), nil
	case "batch":
		items, err := iterate(obj)
		if err != nil {
			return nil, err
		}
		n := argInt(args, kw, 0, "linecount", 1)
		if n <= 0 {
			return nil, errors.New("batch size must be positive")
		}
		var out []Value
		for i := 0; i < len(items); i += int(n) {
			out = append(out, append([]Value(nil), items[i:min(len(items), i+int(n))]...))
		}
		return out, nil
	}
	return nil, fmt.Errorf("no filter named %q", name)
}

func runTest(name string, v Value, args []Value) (bool, error) {
	switch name {
	case "defined":
		_, undef := v.(Undefined)
		return !undef, nil
	case "undefined":
		_, undef := v.(Undefined)
		return undef, nil
	case "none":
		return v == nil, nil
	case "string":
		_, ok := v.(string)
		return ok, nil
	case "number":
		switch v.(type) {
		case int64, float64:
			return true, nil
		}
		return false, nil
	case "integer":
		_, ok := v.(int64)
		return ok, nil
	case "float":
		_, ok := v.(float64)
		return ok, nil
	case "boolean":
		_, ok := v.(bool)
		return ok, nil
	case "true":
		b, ok := v.(bool)
		return ok && b, nil
	case "false":
		b, ok := v.(bool)
		return ok && !b, nil
	case "mapping":
		switch v.(type) {
		case *Dict, *Namespace:
			return true, nil
		}
		return false, nil
	case "sequence", "iterable":
		switch v.(type) {
		case []Value, string, *Dict:
			return true, nil
		}
		return false, nil
	case "callable":
		switch v.(type) {
		case Func, *macro:
			return true, nil
		}
		return false, nil
	case "odd", "even":
		n, ok := v.(int64)
		if !ok {
			return false, fmt.Errorf("%s test needs an integer", name)
		}
		return (n%2 != 0) == (name == "odd"), nil
	case "divisibleby":
		n, ok1 := v.(int64)
		if len(args) != 1 {
			return false, errors.New("divisibleby needs one argument")
		}
		d, ok2 := args[0].(int64)
		if !ok1 || !ok2 || d == 0 {
			return false, errors.New("divisibleby needs non-zero integers")
		}
		return n%d == 0, nil
	case "lower":
		s, ok := v.(string)
		return ok && strings.ToLower(s) == s, nil
	case "upper":
		s, ok := v.(string)
		return ok && strings.ToUpper(s) == s, nil
	case "in":
		if len(args) != 1 {
			return false, errors.New("in test needs one argument")
		}
		r, err := contains(args[0], v)
		if err != nil {
			return false, err
		}
		return r.(bool), nil
	case "equalto", "eq", "==", "sameas", "ne", "!=", "lt", "<", "le", "<=", "gt", ">", "ge", ">=", "greaterthan", "lessthan":
		if len(args) != 1 {
			return false, fmt.Errorf("%s test needs one argument", name)
		}
		op := map[string]string{"equalto": "==", "eq": "==", "sameas": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "greaterthan": ">", "lessthan": "<"}[name]
		if op == "" {
			op = name
		}
		r, err := binOp(op, v, args[0])
		if err != nil {
			return false, err
		}
		return r.(bool), nil
	}
	return false, fmt.Errorf("no test named %q", name)
}
