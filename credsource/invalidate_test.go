package credsource

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestCacheInvalidateRereadsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secrets.yaml")
	write := func(password string) {
		t.Helper()
		data := "secrets:\n  s: {username: app, password: " + password + "}\n"
		if err := os.WriteFile(path+".tmp", []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	write("old")
	file := &File{Path: path, CheckInterval: time.Hour}
	cache := NewCache(file, time.Hour)
	ctx := context.Background()
	if got, err := cache.Fetch(ctx, "s"); err != nil || got.Password != "old" {
		t.Fatalf("first fetch: %v, err %v", got, err)
	}

	write("new")
	if got, _ := cache.Fetch(ctx, "s"); got.Password != "old" {
		t.Fatal("the cache should still serve the old value before Invalidate")
	}
	cache.Invalidate("s")
	got, err := cache.Fetch(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if got.Password != "new" {
		t.Errorf("after Invalidate the password is still the old one; want the file's new value")
	}
}
