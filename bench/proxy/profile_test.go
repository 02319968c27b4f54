package proxy

import (
	"strings"
	"testing"
)

// perfSample is the head of a real `perf report --stdio --no-children --sort symbol`
// output for kvroute (perf 6.1, cpu-clock event).
const perfSample = `# To display the perf.data header info, please use --header/--header-only options.
#
#
# Total Lost Samples: 0
#
# Samples: 536  of event 'cpu-clock:ppp'
# Event count (approx.): 536536536
#
# Overhead  Symbol                                                 IPC   [IPC Coverage]
# ........  .....................................................  ....................
#
     9.51%  [k] finish_task_switch.isra.0                          -      -            
     5.41%  [.] encoding/json.stateInString                        -      -            
     2.80%  [.] encoding/json.checkValid                           -      -            

`

func TestPerfTop(t *testing.T) {
	got := perfTop([]byte(perfSample), 3)
	want := "Samples: 536  of event 'cpu-clock:ppp'\n9.51%  [k] finish_task_switch.isra.0\n5.41%  [.] encoding/json.stateInString"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// FuzzPerfTop checks that any perf output is filtered without a panic and to at most n
// lines.
func FuzzPerfTop(f *testing.F) {
	f.Add([]byte(perfSample), 5)
	f.Add([]byte("# Samples: 1\n  -  -\n"), 1)
	f.Fuzz(func(t *testing.T, b []byte, n int) {
		n = n%50 + 1
		if n < 1 {
			n = 1
		}
		if out := perfTop(b, n); out != "" && strings.Count(out, "\n") >= n {
			t.Fatalf("%d lines for n=%d", strings.Count(out, "\n")+1, n)
		}
	})
}
