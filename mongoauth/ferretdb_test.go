package mongoauth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/knoxcall/dbproxy/credsource"
	"github.com/knoxcall/dbproxy/internal/dbtest"
	"github.com/knoxcall/dbproxy/internal/splice"
)

// testProxy accepts clients on 127.0.0.1, runs Handshake against a FerretDB server and
// splices the connections, like the agent does for a route.
type testProxy struct {
	addr    string
	results chan error // one Handshake result per accepted client
	logs    dbtest.LogBuffer
}

func startProxy(t *testing.T, db *dbtest.FerretDB, creds credsource.Credentials) *testProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &testProxy{addr: ln.Addr().String(), results: make(chan error, 1000)}
	logger := slog.New(slog.NewTextHandler(&p.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	track := func(c net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		open = append(open, c)
	}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			track(client)
			wg.Go(func() { p.serve(client, db, creds, logger, track) })
		}
	})
	return p
}

func (p *testProxy) serve(client net.Conn, db *dbtest.FerretDB, creds credsource.Credentials, logger *slog.Logger, track func(net.Conn)) {
	defer client.Close()
	upstream, err := net.Dial("tcp", db.Addr())
	if err != nil {
		p.results <- err
		return
	}
	track(upstream)
	defer upstream.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conns, err := Handshake(ctx, client, upstream, creds, Options{
		Route:     "ferretdb-route",
		TLSConfig: db.Certs.ClientTLS("127.0.0.1"),
		Logger:    logger,
	})
	select {
	case p.results <- err:
	default:
	}
	if err != nil {
		return
	}
	splice.Run(conns.Client, conns.Upstream)
	conns.Upstream.Close()
}

// firstResult returns the first Handshake result.
func (p *testProxy) firstResult(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.results:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("no Handshake finished within 10 s")
		return nil
	}
}

func connectDriver(t *testing.T, uri string) *mongo.Client {
	t.Helper()
	client, err := mongo.Connect(context.Background(), options.Client().ApplyURI(uri).
		SetServerSelectionTimeout(5*time.Second).SetConnectTimeout(5*time.Second))
	if err != nil {
		t.Fatalf("connect %s: %v", uri, err)
	}
	t.Cleanup(func() { client.Disconnect(context.Background()) })
	return client
}

// NOTE: FerretDB v1.24.2 lists no compressors in its hello reply, so the compressors cases
// check that offering compression does not break the handshake, but no OP_COMPRESSED
// message flows. TestHandshakeSCRAMSHA1Only checks that the offer and the choice pass through.
func TestFerretDBGoDriver(t *testing.T) {
	db := dbtest.StartFerretDB(t, dbtest.FerretDBOptions{})
	proxy := startProxy(t, db, appCreds)
	tests := []struct {
		name  string
		query string
	}{
		{"plain", "directConnection=true"},
		{"zstd", "directConnection=true&compressors=zstd"},
		{"snappy and zlib", "directConnection=true&compressors=snappy,zlib"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			client := connectDriver(t, "mongodb://"+proxy.addr+"/appdb?"+tt.query)
			coll := client.Database("appdb").Collection("items_" + strings.ReplaceAll(tt.name, " ", "_"))

			// Insert and find.
			if _, err := coll.InsertOne(ctx, bson.D{{Key: "name", Value: "widget"}, {Key: "qty", Value: 3}}); err != nil {
				t.Fatalf("InsertOne: %v", err)
			}
			var found bson.M
			if err := coll.FindOne(ctx, bson.D{{Key: "name", Value: "widget"}}).Decode(&found); err != nil {
				t.Fatalf("FindOne: %v", err)
			}
			if found["qty"] != int32(3) {
				t.Errorf("found qty = %v, want 3", found["qty"])
			}

			// A 15 MiB document round trip.
			big := bytes.Repeat([]byte("0123456789abcdef"), 15*1024*1024/16)
			if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "big"}, {Key: "data", Value: big}}); err != nil {
				t.Fatalf("InsertOne 15 MiB: %v", err)
			}
			var bigDoc struct {
				Data []byte `bson:"data"`
			}
			if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: "big"}}).Decode(&bigDoc); err != nil {
				t.Fatalf("FindOne 15 MiB: %v", err)
			}
			if !bytes.Equal(bigDoc.Data, big) {
				t.Errorf("15 MiB document came back with %d bytes, different from the %d sent", len(bigDoc.Data), len(big))
			}
		})
	}
	if err := proxy.firstResult(t); err != nil {
		t.Errorf("Handshake: %v", err)
	}
}

func TestFerretDBCursorGetMore(t *testing.T) {
	const total = 100000
	const batch = 10000
	db := dbtest.StartFerretDB(t, dbtest.FerretDBOptions{})
	proxy := startProxy(t, db, appCreds)
	client := connectDriver(t, "mongodb://"+proxy.addr+"/appdb?directConnection=true&compressors=zstd")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	coll := client.Database("appdb").Collection("many")

	start := time.Now()
	for first := 0; first < total; first += batch {
		docs := make([]any, batch)
		for i := range docs {
			docs[i] = bson.D{{Key: "n", Value: first + i}}
		}
		if _, err := coll.InsertMany(ctx, docs); err != nil {
			t.Fatalf("InsertMany at %d: %v", first, err)
		}
	}
	inserted := time.Since(start)

	start = time.Now()
	cursor, err := coll.Find(ctx, bson.D{}, options.Find().SetBatchSize(1000))
	if err != nil {
		t.Fatalf("Find: %v", err)
	}
	defer cursor.Close(ctx)
	count, sum := 0, 0
	for cursor.Next(ctx) {
		n, ok := cursor.Current.Lookup("n").AsInt64OK()
		if !ok {
			t.Fatalf("document %d has no number n: %v", count, cursor.Current)
		}
		count++
		sum += int(n)
	}
	if err := cursor.Err(); err != nil {
		t.Fatalf("cursor: %v", err)
	}
	if count != total {
		t.Errorf("cursor returned %d documents, want %d", count, total)
	}
	if want := total * (total - 1) / 2; sum != want {
		t.Errorf("sum of n = %d, want %d", sum, want)
	}
	t.Logf("inserted %d documents in %v, read them back through getMore in %v", total, inserted, time.Since(start))
}

func TestFerretDBWrongStoredPassword(t *testing.T) {
	db := dbtest.StartFerretDB(t, dbtest.FerretDBOptions{})
	proxy := startProxy(t, db, credsource.Credentials{Username: "app", Password: "wrong", AuthSource: "appdb"})
	client := connectDriver(t, "mongodb://"+proxy.addr+"/appdb?directConnection=true")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := client.Ping(ctx, nil)
	if err == nil {
		t.Fatal("Ping succeeded with a wrong stored password")
	}
	if !strings.Contains(err.Error(), "AuthenticationFailed") || !strings.Contains(err.Error(), `"ferretdb-route"`) {
		t.Errorf("Ping error = %v, want AuthenticationFailed naming the route", err)
	}
	if herr := proxy.firstResult(t); !errors.Is(herr, ErrAuthFailed) {
		t.Errorf("Handshake error = %v, want ErrAuthFailed", herr)
	}
}

func TestFerretDBClientSendsCredentials(t *testing.T) {
	db := dbtest.StartFerretDB(t, dbtest.FerretDBOptions{})
	proxy := startProxy(t, db, appCreds)
	tests := []struct {
		name        string
		credentials string
	}{
		{"default mechanism", "authSource=appdb"},
		{"SCRAM-SHA-256", "authSource=appdb&authMechanism=SCRAM-SHA-256"},
		{"PLAIN without speculative authentication", "authSource=appdb&authMechanism=PLAIN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := connectDriver(t, "mongodb://app:secret@"+proxy.addr+"/appdb?directConnection=true&"+tt.credentials)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := client.Ping(ctx, nil)
			if err == nil {
				t.Fatal("Ping succeeded for a client that sent its own credentials")
			}
			if !strings.Contains(err.Error(), "credentials are supplied by the agent") {
				t.Errorf("Ping error = %v, want the message that credentials are supplied by the agent", err)
			}
		})
	}
}

// mongoshPath returns the mongosh installed by scripts/install-mongosh.sh, or skips.
func mongoshPath(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("DBPROXY_MONGOSH"); dir != "" {
		return dir
	}
	root, err := exec.Command("go", "env", "GOMOD").Output()
	if err == nil {
		candidate := filepath.Join(filepath.Dir(strings.TrimSpace(string(root))), ".cache", "mongosh", "node_modules", ".bin", "mongosh")
		if _, err := os.Stat(candidate); err == nil {
			return candidate
		}
	}
	return dbtest.LookPath(t, "mongosh")
}

func runMongosh(t *testing.T, bin, uri, script string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, uri, "--quiet", "--norc", "--eval", script)
	// CI=1 skips the update check, and the variable below turns telemetry off.
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "CI=1", "MONGOSH_FORCE_DISABLE_TELEMETRY_FOR_TESTING=1")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestFerretDBMongosh(t *testing.T) {
	bin := mongoshPath(t)
	db := dbtest.StartFerretDB(t, dbtest.FerretDBOptions{})
	proxy := startProxy(t, db, appCreds)

	uri := "mongodb://" + proxy.addr + "/appdb?directConnection=true"
	out, err := runMongosh(t, bin, uri, `db.items.insertOne({name: "gadget", qty: 5}); `+
		`print("qty=" + db.items.findOne({name: "gadget"}).qty)`)
	if err != nil {
		t.Fatalf("mongosh: %v\n%s", err, out)
	}
	if !strings.Contains(out, "qty=5") {
		t.Errorf("mongosh output %q does not contain qty=5", out)
	}

	out, err = runMongosh(t, bin, uri+"&compressors=zstd", `print("count=" + db.items.countDocuments({}))`)
	if err != nil {
		t.Fatalf("mongosh with zstd: %v\n%s", err, out)
	}
	if !strings.Contains(out, "count=1") {
		t.Errorf("mongosh output %q does not contain count=1", out)
	}

	withCredentials := fmt.Sprintf("mongodb://app:secret@%s/appdb?directConnection=true&authSource=appdb", proxy.addr)
	out, err = runMongosh(t, bin, withCredentials, `db.items.findOne()`)
	if err == nil {
		t.Errorf("mongosh with credentials in the URI succeeded:\n%s", out)
	}
	if !strings.Contains(out, "credentials are supplied by the agent") {
		t.Errorf("mongosh output does not explain the credentials error:\n%s", out)
	}
}
