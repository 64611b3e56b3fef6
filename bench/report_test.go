package bench

import (
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// report collects the Markdown of one harness run.
type report struct {
	cfg settings
	b   strings.Builder
}

func newReport(cfg settings) *report { return &report{cfg: cfg} }

func (r *report) String() string { return r.b.String() }

func (r *report) line(format string, args ...any) {
	fmt.Fprintf(&r.b, format+"\n", args...)
}

func (r *report) header(e *env) {
	r.line("# Benchmark results (%s run)", r.cfg.mode)
	r.line("")
	r.line("- command: `bench/run.sh %s` (rounds: %d)", r.cfg.mode, r.cfg.rounds)
	r.line("- date: %s", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	r.line("- Go: %s; agent built with `go build` (no race detector)", runtime.Version())
	if *agentEnv != "" {
		r.line("- agent environment: `%s`", *agentEnv)
	}
	r.line("- machine: %s", machine())
	r.line("- servers: %s", strings.Join(e.versions(), "; "))
	r.line("- load average at start (1, 5, 15 min): %s", loadAverage())
	r.line("")
	r.line("Figures are medians over the rounds, with the lowest and highest round in brackets.")
	r.line("Ratios are taken round by round between runs made one after the other, then the")
	r.line("median ratio is shown with its range.")
}

// section starts a step's part of the report with its title and the load at that moment.
func (r *report) section(title string) {
	r.line("")
	r.line("## %s", title)
	r.line("")
	r.line("Load average at start: %s.", loadAverage())
	r.line("")
}

func (r *report) table(header []string, rows [][]string) {
	r.line("| %s |", strings.Join(header, " | "))
	sep := make([]string, len(header))
	for i := range sep {
		sep[i] = "---"
	}
	r.line("| %s |", strings.Join(sep, " | "))
	for _, row := range rows {
		r.line("| %s |", strings.Join(row, " | "))
	}
	r.line("")
}

// toolVersion returns the first line of `name args...`, or "name: unknown version".
func toolVersion(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return name + ": unknown version"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}
