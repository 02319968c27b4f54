// Package configs loads and validates kvroute's YAML configuration.
//
// [Load] does no I/O; [LoadFile] reads a file and names it in every error. Decoding is
// strict: an unknown key is an error, so a typo never silently falls back to a default.
// Defaults are set before decoding ([Default]), so a key left out keeps its documented
// default, and [Config.Validate] runs after decoding: an invalid value is an error quoting
// it, never silently replaced. configs/kvroute.example.yaml documents every key and is
// loaded by a test, so it cannot drift from the code.
//
// Secrets (API keys) come from the file or, better, from environment variables named
// in it; they are held as [Secret], which never prints its value. [Config.CheckFiles]
// does the I/O Load leaves out: it reads those variables and the TLS certificate, key
// and CA files, and reports every problem at once.
package configs
