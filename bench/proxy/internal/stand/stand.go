// Package stand is the command line shared by the proxies kvbench proxy measures in
// kvroute's place (floorproxy, loopproxy): the part of kvroute's that kvbench uses.
package stand

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
)

// Args reads os.Args as kvbench passes them to kvroute: `version` prints name and
// exits; `serve --listen ADDR --worker URL... [--policy P]` returns the listen
// address, the workers' host:port (http:// removed) and the policy ("" when not
// given); --tokenize is accepted and ignored. Anything else is an error.
func Args(name string) (listen string, workers []string, policy string, err error) {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println(name)
		os.Exit(0)
	}
	if len(os.Args) < 2 || os.Args[1] != "serve" {
		return "", nil, "", fmt.Errorf("usage: %s serve --listen ADDR --worker URL [--worker URL...]", name)
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&listen, "listen", "127.0.0.1:8080", "address to serve on")
	fs.StringVar(&policy, "policy", "", "routing policy (kvroute's flag)")
	fs.String("tokenize", "", "ignored (kvroute's flag)")
	fs.Func("worker", "worker URL, http://host:port (repeatable)", func(s string) error {
		workers = append(workers, strings.TrimPrefix(s, "http://"))
		return nil
	})
	if err := fs.Parse(os.Args[2:]); err != nil {
		return "", nil, "", err
	}
	if len(workers) == 0 {
		return "", nil, "", errors.New("no --worker")
	}
	return listen, workers, policy, nil
}
