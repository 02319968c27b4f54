package router

import (
	"bytes"
	"iter"
)

// hopByHop are the fields that describe one connection and are never forwarded, in
// lower case (RFC 9110 section 7.6.1; Keep-Alive, Proxy-Connection and Upgrade per
// its list of the fields such a sender removes).
var hopByHop = []string{
	"connection", "proxy-connection", "keep-alive", "proxy-authenticate",
	"proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
}

// fieldSet is the part of fasthttp's request and response headers stripHopByHop uses.
type fieldSet interface {
	All() iter.Seq2[[]byte, []byte]
	DelBytes(key []byte)
}

// maxHopFields bounds the fields stripHopByHop removes from one header, and so its
// work: more hop-by-hop fields than this are not a real client's.
const maxHopFields = 64

// stripHopByHop removes from h, a header about to be forwarded, the hop-by-hop fields
// and every field the Connection field names ("Connection: keep-alive, X-Hop" makes
// X-Hop hop-by-hop: RFC 9110 section 7.6.1), whatever the case of their names (the
// server keeps names as sent). It does not allocate unless Connection names more
// than 256 bytes of fields.
func stripHopByHop(h fieldSet) {
	var store [256]byte
	named := store[:0]
	for k, v := range h.All() {
		if equalFold(k, "connection") {
			for tok := range bytes.SplitSeq(v, []byte{','}) {
				if tok = trimSpace(tok); len(tok) > 0 {
					named = append(append(named, tok...), ',')
				}
			}
		}
	}
	var buf [128]byte
	for range maxHopFields {
		var found []byte
		for k := range h.All() {
			if isHopByHop(k, named) {
				found = append(buf[:0], k...)
				break
			}
		}
		if found == nil {
			return
		}
		h.DelBytes(found)
	}
}

// isHopByHop reports whether the field named k is hop-by-hop: one of hopByHop or of
// named, a comma-terminated list of names, in any case.
func isHopByHop(k, named []byte) bool {
	for _, h := range hopByHop {
		if equalFold(k, h) {
			return true
		}
	}
	for len(named) > 0 {
		i := bytes.IndexByte(named, ',')
		if bytes.EqualFold(k, named[:i]) {
			return true
		}
		named = named[i+1:]
	}
	return false
}
