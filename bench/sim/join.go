package sim

// JoinFleets returns one fleet of the given fleets' workers, in order (e.g. a prefill
// pool and a decode pool started with different roles, hosts and id prefixes); closing
// it closes them all.
func JoinFleets(fleets ...*Fleet) *Fleet {
	out := &Fleet{}
	for _, f := range fleets {
		out.workers = append(out.workers, f.workers...)
	}
	return out
}
