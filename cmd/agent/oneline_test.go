package main

import (
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestOneLineStripsPgxPrefix(t *testing.T) {
	got := oneLine("failed to connect to `user=dbproxy-check database=`: 127.0.0.1:45667 (127.0.0.1): server error: FATAL: password authentication failed (SQLSTATE 28P01)")
	if got != "server error: FATAL: password authentication failed (SQLSTATE 28P01)" {
		t.Fatal(got)
	}
}

func TestFileModeParsing(t *testing.T) {
	for _, tc := range []struct {
		value   string
		want    fileMode
		wantErr bool
	}{
		{"0660", 0o660, false},
		{"660", 0o660, false},
		{"0o660", 0o660, false},
		{"0600", 0o600, false},
		{"0o66x", 0, true},
		{"999", 0, true},
		{"01777", 0, true},
	} {
		var m fileMode
		err := m.UnmarshalYAML(&yaml.Node{Value: tc.value, Line: 1})
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: error %v, want error %v", tc.value, err, tc.wantErr)
			continue
		}
		if m != tc.want {
			t.Errorf("%q: got %#o, want %#o", tc.value, m, tc.want)
		}
	}
}
