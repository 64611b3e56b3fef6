package awssm

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/knoxcall/dbproxy/credsource"
)

const canary = "canary-awssm-pw-90ab"

// fakeSecretsManager serves GetSecretValue for secrets and checks each request's
// signature by signing a copy of it again with the same key.
// NOTE: the fake reuses the package's signer, so it catches a wrong key or a changed
// request but not a signer that departs from AWS's algorithm; no real endpoint was tried.
func fakeSecretsManager(t *testing.T, signer *Source, secrets map[string]string) *httptest.Server {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.Header.Get("X-Amz-Target") != "secretsmanager.GetSecretValue" {
			http.Error(w, `{"__type":"UnknownOperationException"}`, http.StatusBadRequest)
			return
		}
		signed, _ := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
		check := r.Clone(context.Background())
		check.URL.Host = r.Host
		signer.sign(check, body, signed)
		if got, want := r.Header.Get("Authorization"), check.Header.Get("Authorization"); got != want {
			w.WriteHeader(http.StatusBadRequest)
			w.Write([]byte(`{"__type":"InvalidSignatureException","message":"The request signature we calculated does not match"}`))
			return
		}
		var in struct{ SecretId string }
		json.Unmarshal(body, &in)
		value, ok := secrets[in.SecretId]
		if !ok {
			w.WriteHeader(http.StatusBadRequest)
			w.Write([]byte(`{"__type":"com.amazonaws.secretsmanager#ResourceNotFoundException","message":"Secrets Manager can't find the specified secret."}`))
			return
		}
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		json.NewEncoder(w).Encode(map[string]any{"ARN": "arn:aws:secretsmanager:eu-west-1:1:secret:" + in.SecretId, "Name": in.SecretId, "SecretString": value})
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestFetchSignedRequest(t *testing.T) {
	key := &Source{Region: "eu-west-1", AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}
	srv := fakeSecretsManager(t, key, map[string]string{
		"prod/orders": `{"username":"app","password":"` + canary + `","engine":"postgres","port":5432}`,
	})
	src := *key
	src.Endpoint, src.Client = srv.URL, srv.Client()
	if err := src.Check(); err != nil {
		t.Fatal(err)
	}
	got, err := credsource.NewCache(&src, time.Minute).Fetch(context.Background(), "prod/orders")
	if err != nil {
		t.Fatal(err)
	}
	if want := (credsource.Credentials{Username: "app", Password: canary}); !got.Equal(want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestFetchErrors(t *testing.T) {
	key := &Source{Region: "eu-west-1", AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "right"}
	srv := fakeSecretsManager(t, key, map[string]string{"bad": `{"password": ` + canary + `}`})
	for _, tc := range []struct {
		name, id, secretKey string
		is                  error
		want                string
	}{
		{"not found", "missing", "right", credsource.ErrNotFound, "secret not found"},
		{"wrong key", "bad", "wrong", nil, "InvalidSignatureException"},
		{"invalid secret string", "bad", "right", nil, "not a JSON object of strings"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &Source{Region: "eu-west-1", AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: tc.secretKey,
				Endpoint: srv.URL, Client: srv.Client()}
			_, err := src.Fetch(context.Background(), tc.id)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Fetch = %v, want an error containing %q", err, tc.want)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q does not wrap %v", err, tc.is)
			}
			if strings.Contains(err.Error(), canary) {
				t.Errorf("error contains the secret: %q", err)
			}
		})
	}
}
