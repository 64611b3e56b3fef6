package handshake

import (
	"errors"
	"testing"
)

func TestCheckSCRAMIterations(t *testing.T) {
	for _, tc := range []struct {
		serverFirst string
		wantErr     bool
	}{
		{"r=abc,s=c2FsdA==,i=4096", false},
		{"r=abc,s=c2FsdA==,i=1000000", false},
		{"r=abc,s=c2FsdA==,i=1000001", true},
		{"r=abc,s=c2FsdA==,i=2000000000", true},
		{"r=abc,s=c2FsdA==", false},
		{"r=abc,s=c2FsdA==,i=x", false},
	} {
		err := CheckSCRAMIterations(tc.serverFirst)
		if got := err != nil; got != tc.wantErr {
			t.Errorf("CheckSCRAMIterations(%q) = %v, want error %v", tc.serverFirst, err, tc.wantErr)
		}
		if err != nil && !errors.Is(err, ErrUpstreamProtocol) {
			t.Errorf("CheckSCRAMIterations(%q) = %v, want it to wrap ErrUpstreamProtocol", tc.serverFirst, err)
		}
	}
}
