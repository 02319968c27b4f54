//go:build !linux

package decision

// threadCPU is not measured off Linux.
func threadCPU() int64 { return 0 }
