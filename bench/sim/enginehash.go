package sim

// EngineBlockHashes returns the engine hashes this rank gives the full blocks of tokens
// (prompt then generated tokens) of a request with cache salt salt: the hashes its
// BlockStored events and CachedBlockHashes carry. It reads only the rank's immutable hash
// seed and block size, so tests can map the engine hashes back to the token ids they sent
// (and from there to kvroute's own hashes). Safe for concurrent use.
func (rk *Rank) EngineBlockHashes(salt string, tokens []uint32) []uint64 {
	return rk.EngineBlockHashesLoRA("", salt, tokens)
}

// EngineBlockHashesLoRA is EngineBlockHashes for a request on LoRA adapter lora ("" for
// the base model).
func (rk *Rank) EngineBlockHashesLoRA(lora, salt string, tokens []uint32) []uint64 {
	r := &request{lora: lora, salt: salt, tokens: tokens}
	rk.eng.hashFull(r)
	return r.hashes
}
