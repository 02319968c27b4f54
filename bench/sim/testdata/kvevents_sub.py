#!/usr/bin/python3
"""Independent decoder of vLLM/SGLang KV-cache events, used by kvsim's tests.

Usage: kvevents_sub.py ENDPOINT N_BATCHES TIMEOUT_S

Subscribes to ENDPOINT with pyzmq, decodes N_BATCHES messages with msgpack (Debian's
python3-zmq and python3-msgpack) and prints one JSON line per batch:
{"seq": int, "ts": float, "rank": int|null, "events": [{"type", "block_hashes",
"parent_block_hash", "token_ids", "block_size", "medium"}]}. Accepts the array and the
map encodings. Hashes are printed as ints (32-byte digests as hex strings).
"""
import json
import sys

import msgpack
import zmq

FIELDS = {
    "BlockStored": ["block_hashes", "parent_block_hash", "token_ids", "block_size",
                    "lora_id", "medium", "lora_name"],
    "BlockRemoved": ["block_hashes", "medium"],
    "AllBlocksCleared": [],
}


def norm_hash(h):
    if isinstance(h, (bytes, bytearray)):
        return h.hex()
    return h


def decode_event(ev):
    if isinstance(ev, dict):
        kind = ev["type"]
        fields = {k: v for k, v in ev.items() if k != "type"}
    else:
        kind = ev[0]
        fields = dict(zip(FIELDS[kind], ev[1:]))
    out = {"type": kind}
    if "block_hashes" in fields:
        out["block_hashes"] = [norm_hash(h) for h in fields["block_hashes"]]
    if kind == "BlockStored":
        parent = fields.get("parent_block_hash")
        out["parent_block_hash"] = None if parent is None else norm_hash(parent)
        out["token_ids"] = fields["token_ids"]
        out["block_size"] = fields["block_size"]
    out["medium"] = fields.get("medium")
    return out


def main():
    endpoint, n, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    sub.connect(endpoint)
    for _ in range(n):
        topic, seq, payload = sub.recv_multipart()
        batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        if isinstance(batch, dict):
            ts, events, rank = batch["ts"], batch["events"], batch.get("data_parallel_rank", batch.get("attn_dp_rank"))
        else:
            ts, events, rank = batch[0], batch[1], batch[2] if len(batch) > 2 else None
        print(json.dumps({
            "seq": int.from_bytes(seq, "big"),
            "ts": ts,
            "rank": rank,
            "events": [decode_event(e) for e in events],
        }), flush=True)


if __name__ == "__main__":
    main()
