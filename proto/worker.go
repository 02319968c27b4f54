package proto

import "strconv"

// WorkerKey identifies one KV cache: a worker (the router's id for an engine instance,
// as configured) and one of its data-parallel ranks. vLLM runs one engine core per DP
// rank, each with its own cache and its own event publisher (rank N>0 on the configured
// port + N, with its own sequence numbers), so the rank is part of the identity. DPRank
// is 0 for engines without data parallelism. The event feeds and the index share it.
type WorkerKey struct {
	// ID is the worker's configured id (its URL or name).
	ID string
	// DPRank is the data-parallel rank; 0 without data parallelism.
	DPRank int
}

// String returns "id" for rank 0 and "id#dpN" otherwise; it is the worker label of the
// per-rank metrics.
func (k WorkerKey) String() string {
	if k.DPRank == 0 {
		return k.ID
	}
	return k.ID + "#dp" + strconv.Itoa(k.DPRank)
}
