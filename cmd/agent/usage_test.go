package main

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

func TestUsageOutputAndExitCode(t *testing.T) {
	bin := buildAgent(t)
	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
	}{
		{"no arguments", nil, exitUsage},
		{"flags without config", []string{"-log-level", "warn"}, exitUsage},
		{"help subcommand", []string{"help"}, exitOK},
		{"help flag", []string{"-h"}, exitOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			if exitErr, ok := errors.AsType[*exec.ExitError](err); ok {
				code = exitErr.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode {
				t.Errorf("exit code = %d, want %d", code, tc.wantCode)
			}
			for _, want := range []string{"usage: agent -config FILE", "agent check -config FILE", "-log-level"} {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
				}
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout = %q, want the usage on stderr only", stdout.String())
			}
		})
	}
}
