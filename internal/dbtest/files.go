package dbtest

import (
	"os"
	"testing"
)

// ReplaceFile writes data to path through a rename, as deployment tools do, so a reader
// never sees a half-written file. The file gets a new inode even when its size and
// modification time stay the same.
func ReplaceFile(t testing.TB, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
