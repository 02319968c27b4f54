package configs

import (
	"fmt"
	"os"
)

// checkTokenizeDir reports a tokenize.dir that is set but is not a readable directory,
// in any mode (auto is the one reading it; set elsewhere it is a sign of a mistake).
func (c *Config) checkTokenizeDir() error {
	if c.Tokenize.Dir == "" {
		return nil
	}
	st, err := os.Stat(c.Tokenize.Dir)
	if err != nil {
		return fmt.Errorf("tokenize.dir: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("tokenize.dir: %q is not a directory", c.Tokenize.Dir)
	}
	return nil
}
