package credsource

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestStaticFetch(t *testing.T) {
	src := NewStatic(map[string]Credentials{
		"sec_orders": {Username: "app", Password: canary},
	})
	tests := []struct {
		name    string
		id      string
		want    Credentials
		wantErr error
	}{
		{name: "known id", id: "sec_orders", want: Credentials{Username: "app", Password: canary}},
		{name: "unknown id", id: "sec_missing", wantErr: ErrNotFound},
		{name: "empty id", id: "", wantErr: ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := src.Fetch(t.Context(), tt.id)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Fetch(%q) error = %v, want %v", tt.id, err, tt.wantErr)
			}
			if err != nil {
				if !strings.Contains(err.Error(), tt.id) {
					t.Errorf("error %q does not name the secret id %q", err, tt.id)
				}
				return
			}
			if !got.Equal(tt.want) {
				t.Errorf("Fetch(%q) = %v, want %v", tt.id, got, tt.want)
			}
		})
	}
}

func TestStaticSetAndDelete(t *testing.T) {
	var src Static // the zero value must be usable
	ctx := t.Context()
	if _, err := src.Fetch(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("empty source: error = %v, want ErrNotFound", err)
	}

	src.Set("a", Credentials{Username: "u", Password: "old"})
	src.Set("a", Credentials{Username: "u", Password: "new"})
	got, err := src.Fetch(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if got.Password != "new" {
		t.Errorf("after rotation: got password of length %d, want the new one", len(got.Password))
	}

	src.Delete("a")
	if _, err := src.Fetch(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after Delete: error = %v, want ErrNotFound", err)
	}
}

func TestStaticCopiesByteSlices(t *testing.T) {
	cert := []byte("cert")
	src := NewStatic(map[string]Credentials{"a": {Username: "u", Certificate: cert}})
	cert[0] = 'X'

	got, err := src.Fetch(t.Context(), "a")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff("cert", string(got.Certificate)); diff != "" {
		t.Errorf("stored certificate changed with the caller's slice (-want +got):\n%s", diff)
	}
	got.Certificate[0] = 'Y'
	again, _ := src.Fetch(t.Context(), "a")
	if string(again.Certificate) != "cert" {
		t.Errorf("stored certificate changed through a fetched copy: %q", again.Certificate)
	}
}

func TestStaticConcurrentUse(t *testing.T) {
	var src Static
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range 200 {
				src.Set("a", Credentials{Username: "u", Password: strings.Repeat("x", i+1)})
			}
		}()
		go func() {
			defer wg.Done()
			for range 200 {
				_, _ = src.Fetch(ctx, "a")
			}
		}()
	}
	wg.Wait()
}

func TestStaticCanceledContext(t *testing.T) {
	src := NewStatic(map[string]Credentials{"a": {Username: "u"}})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := src.Fetch(ctx, "a"); !errors.Is(err, context.Canceled) {
		t.Errorf("error = %v, want context.Canceled", err)
	}
}
