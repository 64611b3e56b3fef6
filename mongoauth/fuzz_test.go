package mongoauth

import (
	"bytes"
	"testing"

	"go.mongodb.org/mongo-driver/x/bsonx/bsoncore"
	"go.mongodb.org/mongo-driver/x/mongo/driver/wiremessage"
)

// seedMessages are well-formed client messages: the fuzzers start from them, and
// TestParseCommandSeeds checks them.
func seedMessages() map[string][]byte {
	opMsgHello := bsoncore.NewDocumentBuilder().AppendInt32("hello", 1).AppendDocument("client", clientMetadata()).
		AppendString("$db", "admin").Build()
	wrapped := bsoncore.NewDocumentBuilder().
		AppendDocument("$query", legacyHello()).
		AppendDocument("$readPreference", bsoncore.NewDocumentBuilder().AppendString("mode", "primaryPreferred").Build()).
		Build()

	// An OP_MSG with a document sequence (kind 1) and the checksum flag.
	idx, withSequence := wiremessage.AppendHeaderStart(nil, 5, 0, wiremessage.OpMsg)
	withSequence = wiremessage.AppendMsgFlags(withSequence, wiremessage.ChecksumPresent)
	withSequence = wiremessage.AppendMsgSectionType(withSequence, wiremessage.SingleDocument)
	withSequence = append(withSequence, bsoncore.NewDocumentBuilder().AppendString("insert", "items").
		AppendString("$db", "appdb").Build()...)
	withSequence = wiremessage.AppendMsgSectionType(withSequence, wiremessage.DocumentSequence)
	seqIdx, withSequence := bsoncore.ReserveLength(withSequence)
	withSequence = append(withSequence, "documents\x00"...)
	withSequence = append(withSequence, bsoncore.NewDocumentBuilder().AppendInt32("n", 1).Build()...)
	withSequence = bsoncore.UpdateLength(withSequence, seqIdx, int32(len(withSequence[seqIdx:])))
	withSequence = append(withSequence, 0, 0, 0, 0)
	withSequence = bsoncore.UpdateLength(withSequence, idx, int32(len(withSequence)))

	return map[string][]byte{
		"op_query_ismaster":  queryHello(1, legacyHello()),
		"op_query_wrapped":   queryHello(2, wrapped),
		"op_msg_hello":       buildMsg(3, 0, opMsgHello, nil),
		"op_msg_sasl_start":  buildMsg(4, 0, saslStartCommand(mechanismSHA256, "n,,n=app,r=abc", "$db", "admin"), nil),
		"op_msg_sequence":    withSequence,
		"op_reply":           buildReply(6, errorDocument(codeBadValue, "BadValue", "seed")),
		"truncated_op_query": queryHello(7, legacyHello())[:30],
	}
}

func TestParseCommandSeeds(t *testing.T) {
	tests := []struct {
		seed    string
		name    string
		db      string
		wantErr bool
	}{
		{seed: "op_query_ismaster", name: "isMaster", db: "admin"},
		{seed: "op_query_wrapped", name: "isMaster", db: "admin"},
		{seed: "op_msg_hello", name: "hello", db: "admin"},
		{seed: "op_msg_sasl_start", name: "saslStart", db: "admin"},
		{seed: "op_msg_sequence", name: "insert", db: "appdb"},
		{seed: "op_reply", wantErr: true},
		{seed: "truncated_op_query", wantErr: true},
	}
	seeds := seedMessages()
	for _, tt := range tests {
		t.Run(tt.seed, func(t *testing.T) {
			cmd, err := parseCommand(seeds[tt.seed])
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parseCommand succeeded, want an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("parseCommand: %v", err)
			}
			if cmd.name != tt.name {
				t.Errorf("name = %q, want %q", cmd.name, tt.name)
			}
			if cmd.db != tt.db {
				t.Errorf("db = %q, want %q", cmd.db, tt.db)
			}
		})
	}
	wrapped, _ := parseCommand(seeds["op_query_wrapped"])
	if mode, _ := wrapped.body.Lookup("$readPreference", "mode").StringValueOK(); mode != "primaryPreferred" {
		t.Errorf("unwrapped $query lost $readPreference: %v", wrapped.body)
	}
	sequence, _ := parseCommand(seeds["op_msg_sequence"])
	if len(sequence.sequences) == 0 {
		t.Errorf("document sequence section was dropped")
	}
}

// FuzzParseCommand feeds arbitrary client messages to the OP_MSG and OP_QUERY readers. A
// parsed command must survive a rebuild into an OP_MSG and the upstream hello.
func FuzzParseCommand(f *testing.F) {
	for _, seed := range seedMessages() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		cmd, err := parseCommand(msg)
		if err != nil {
			return
		}
		if err := cmd.body.Validate(); err != nil {
			t.Fatalf("parsed body is invalid BSON: %v", err)
		}
		rebuilt, err := parseCommand(buildMsg(1, 0, cmd.body, cmd.sequences))
		if cmd.opcode == wiremessage.OpQuery {
			// The rebuilt OP_MSG needs $db, which the OP_QUERY carried in its collection name.
			return
		}
		if err != nil {
			t.Fatalf("rebuilt OP_MSG does not parse: %v", err)
		}
		if rebuilt.name != cmd.name || rebuilt.db != cmd.db || !bytes.Equal(rebuilt.sequences, cmd.sequences) {
			t.Fatalf("rebuilt OP_MSG parses as %q on %q, want %q on %q", rebuilt.name, rebuilt.db, cmd.name, cmd.db)
		}
		if _, err := upstreamHello(cmd, "admin", "app", "n,,n=app,r=abc"); err != nil {
			t.Fatalf("upstreamHello: %v", err)
		}
	})
}

// FuzzParseReply feeds arbitrary server replies to the OP_MSG and OP_REPLY readers and the
// reply checks that follow them.
func FuzzParseReply(f *testing.F) {
	for _, seed := range seedMessages() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		_, _, responseTo, _, _, ok := wiremessage.ReadHeader(msg)
		if !ok {
			return
		}
		reply, err := parseReply(msg, responseTo)
		if err != nil {
			return
		}
		commandError(reply)
		chooseMechanism(reply)
		if _, err := clientHelloReply(reply); err != nil {
			t.Fatalf("clientHelloReply of a parsed reply: %v", err)
		}
	})
}
