package chaos

import (
	"fmt"
	"io"
	"strings"
)

// Row is one line of the chaos table: a fault and what the clients saw while it was
// injected.
type Row struct {
	// Fault names the injected fault.
	Fault string
	// Sent, Completed, CleanErrors, Refused, Lost and Hung count client requests;
	// Sent is the sum of the others.
	Sent, Completed, CleanErrors, Refused, Lost, Hung int
	// Checks lists what else was verified, e.g. "bookkeeping 0".
	Checks string
}

// RowFrom builds a row from a tally.
func RowFrom(fault string, t *Tally, checks string) Row {
	return Row{
		Fault: fault, Sent: t.Sent(), Completed: t.Count(Completed), CleanErrors: t.Count(CleanError),
		Refused: t.Count(Refused), Lost: t.Count(Lost), Hung: t.Count(Hung), Checks: checks,
	}
}

// WriteTable writes rows as a Markdown table.
func WriteTable(w io.Writer, rows []Row) error {
	var b strings.Builder
	b.WriteString("| fault | requests sent | completed | failed with a clean error | not accepted (refused, or idle connection closed before the request was read) | lost or hung | also checked |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %s |\n",
			cell(r.Fault), r.Sent, r.Completed, r.CleanErrors, r.Refused, r.Lost+r.Hung, cell(r.Checks))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// cell makes s safe inside a Markdown table cell.
func cell(s string) string { return strings.ReplaceAll(s, "|", "/") }
