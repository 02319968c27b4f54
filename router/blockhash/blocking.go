package blockhash

// Blocker is a Hasher that says whether it may wait on the network or on files to hash
// a request for a model.
type Blocker interface {
	Blocking(model string) bool
}

// MayBlock reports whether h may wait on the network or on files to hash a request for
// model (Request.Model: a base model): engine mode (a worker's /tokenize), and an auto
// mode's first request of a model, which finds and loads its tokenizer. Approx and
// local modes compute only. The router's event loop (router/dataplane_linux.go) hashes
// a request off the loop when its hasher may block. A Hasher that is not a Blocker is
// taken to block.
func MayBlock(h Hasher, model string) bool {
	if b, ok := h.(Blocker); ok {
		return b.Blocking(model)
	}
	return true
}

// Blocking implements [Blocker]: approx mode never blocks.
func (Approx) Blocking(string) bool { return false }

// Blocking implements [Blocker]: local mode never blocks.
func (*Local) Blocking(string) bool { return false }

// Blocking implements [Blocker]: as its primary.
func (f *Fallback) Blocking(model string) bool { return MayBlock(f.primary, model) }

// Blocking implements [Blocker]: a model's first request blocks (Resolve), then as its
// mode.
func (a *Auto) Blocking(model string) bool {
	h, ok := (*a.modes.Load())[model]
	return !ok || MayBlock(h, model)
}
