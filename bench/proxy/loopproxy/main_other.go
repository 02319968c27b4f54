//go:build !linux

package main

import "log"

func main() { log.Fatal("loopproxy: Linux only (epoll)") }
