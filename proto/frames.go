package proto

import (
	"encoding/binary"
	"fmt"
	"math"
)

// ReplayEndSeq is the sequence number of the replay end marker: -1 as a signed 8-byte
// big-endian integer on the wire.
const ReplayEndSeq = math.MaxUint64

// SeqBytes returns seq as the 8-byte big-endian frame engines send and replay requests
// carry.
func SeqBytes(seq uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	return b[:]
}

// DecodeFrames splits one message of an engine's ZMQ PUB stream, the three frames
// [topic, seq as 8-byte big-endian, msgpack payload], without copying: topic and payload
// alias frames.
func DecodeFrames(frames [][]byte) (topic []byte, seq uint64, payload []byte, err error) {
	if len(frames) != 3 {
		return nil, 0, nil, fmt.Errorf("kv event message has %d frames, want 3", len(frames))
	}
	if len(frames[1]) != 8 {
		return nil, 0, nil, fmt.Errorf("kv event seq frame has %d bytes, want 8", len(frames[1]))
	}
	return frames[0], binary.BigEndian.Uint64(frames[1]), frames[2], nil
}

// ReplayRequest returns the frames a DEALER sends to an engine's replay ROUTER to ask for
// every buffered batch with seq >= start: an empty delimiter and the 8-byte start.
func ReplayRequest(start uint64) [][]byte {
	return [][]byte{{}, SeqBytes(start)}
}

// DecodeReplayFrames decodes one reply of an engine's replay ROUTER as a DEALER receives
// it: ["", seq, payload] (the empty delimiter is optional). end reports the end marker
// (seq -1), after which the replay is complete; payload aliases frames.
func DecodeReplayFrames(frames [][]byte) (seq uint64, end bool, payload []byte, err error) {
	if len(frames) == 3 {
		if len(frames[0]) != 0 {
			return 0, false, nil, fmt.Errorf("replay reply delimiter has %d bytes, want 0", len(frames[0]))
		}
		frames = frames[1:]
	}
	if len(frames) != 2 {
		return 0, false, nil, fmt.Errorf("replay reply has %d frames, want 2 or 3", len(frames))
	}
	if len(frames[0]) != 8 {
		return 0, false, nil, fmt.Errorf("replay seq frame has %d bytes, want 8", len(frames[0]))
	}
	seq = binary.BigEndian.Uint64(frames[0])
	return seq, seq == ReplayEndSeq, frames[1], nil
}
