// Package jsonscan scans JSON bytes in place: it validates, skips values, iterates
// object members, decodes string literals and reads unsigned integer arrays, without
// decoding what its caller does not ask for and without allocating. It knows nothing
// about routing. It is the one JSON scanner of the router: the request body's
// validation and top-level fields (router), the walk over messages and prompts for
// block hashing and the /tokenize answers (router/blockhash), and the vocabulary and
// merges of tokenizer.json (router/tokenize) all use it.
//
// # Two strengths of checking
//
// [Object], [Valid] and [String] validate fully, exactly as encoding/json.Valid does
// (FuzzMatchesEncodingJSON checks it): they are for bytes from outside; [String]
// skips 8 bytes at a time while none of them can end or escape the string or is a
// control character. [Skip], [Iter],
// [AppendUnescaped], [Escape] and [Uint32Array] check only structure (brackets,
// quotes, colons, commas, literals, nesting) and find strings' ends with a vectorized
// byte search, about as fast as memchr on long chat contents: they are for a second
// walk over bytes that
// [Object] already validated, and for untrusted bytes that are only hashed. On any
// input every function returns an error or a result, never panics, and runs in time
// linear in its input. Every syntax error wraps [ErrSyntax].
//
// # Nesting limit
//
// [MaxDepth] is 10000 for every function, the limit of encoding/json. With it the
// validator agrees with encoding/json.Valid on every input, which keeps the
// differential fuzz tests exact, and whatever the router accepted, the hashers can walk.
// The functions recurse once per nesting level, so the limit bounds stack use: measured
// frames (go build -gcflags=-S, 2026-12-06) are 88+96 bytes per level for validation
// and 120 for Skip, so a hostile body of 10000 '[' (10 KB) grows its goroutine's stack
// to about 2 MB (4 MB after doubling) for the request's lifetime. The request body
// budget bounds how many such bodies can be in flight; a lower limit would trade exact
// agreement with encoding/json for less stack per hostile request.
//
// # Why not a library
//
// encoding/json has no way to visit an object's members without decoding them:
// Unmarshal into a struct of json.RawMessage copies every raw value it keeps, and
// neither it nor Decoder.Token streams a string's decoded text into a hash.
// BenchmarkRequestPath measures the request path, validating a 2 KB chat body and
// finding its five routing fields (medians of 6, 2-core shared VM, 2026-12-06,
// go test -run '^$' -bench RequestPath -benchmem -count 6 ./router/jsonscan/):
//
//	jsonscan.Object                           1.37 µs/op     0 B/op   0 allocs/op
//	  since [String] skips 8 bytes at a time  0.69-0.74 µs/op against 1.34-1.53 µs/op
//	  (the two builds alternated, 3 runs each, -benchtime 200000x, 2026-12-07, load 4)
//	  since [String] finds quotes and         0.67-0.70 µs/op against 0.87-0.91 µs/op
//	  backslashes with bytes.IndexByte (the two builds alternated, 3 runs each,
//	  -benchtime 200000x, 2026-12-07 23:00 UTC, Intel VM, load 1.9-3.5)
//	encoding/json.Unmarshal into the fields  14.2 µs/op   2424 B/op   9 allocs/op
//	encoding/json.Valid alone                 6.04 µs/op     0 B/op   0 allocs/op
//
// BenchmarkString (2 KB literals, same runs): prose 350-356 ns against 545-566 ns, code
// with an escape every few words 2.36-2.49 us against 2.44-2.67 us.
//
// Validation alone through encoding/json costs four times the whole scan here.
// github.com/valyala/fastjson was not measured: it is not in the module graph
// (go list -m all | grep fastjson is empty, 2026-12-06) and adding a dependency only to
// measure it did not fit the time; its Parser builds a value tree of the whole body,
// which the router would then walk for five fields.
package jsonscan
