package pgauth

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// FuzzReadBackendMessage feeds arbitrary upstream bytes to the login's message reader and to
// the decoders of the messages it acts on: none may panic, and every message returned must
// have the length its header states, within the reader's bounds.
func FuzzReadBackendMessage(f *testing.F) {
	seed := func(msgs ...pgproto3.BackendMessage) []byte {
		var b []byte
		for _, m := range msgs {
			b, _ = m.Encode(b)
		}
		return b
	}
	f.Add(seed(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}}))
	f.Add(seed(&pgproto3.AuthenticationSASLContinue{Data: []byte("r=abc,s=c2FsdA==,i=4096")}))
	f.Add(seed(&pgproto3.AuthenticationSASLFinal{Data: []byte("v=c2ln")}, &pgproto3.AuthenticationOk{}))
	f.Add(seed(&pgproto3.AuthenticationMD5Password{Salt: [4]byte{1, 2, 3, 4}}))
	f.Add(seed(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: "password authentication failed"}))
	f.Add(seed(&pgproto3.ParameterStatus{Name: "server_version", Value: "15"}, &pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 2}}, &pgproto3.ReadyForQuery{TxStatus: 'I'}))
	f.Add([]byte("R\x00\x00\x00\x03"))
	f.Add([]byte("E\x7f\xff\xff\xff"))

	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		for range 64 {
			typ, msg, err := readBackendMessage(r)
			if err != nil {
				return
			}
			if msg[0] != typ {
				t.Fatalf("message type %q, returned type %q", msg[0], typ)
			}
			if got, want := len(msg), 1+int(binary.BigEndian.Uint32(msg[1:5])); got != want {
				t.Fatalf("message of %d bytes, header says %d", got, want)
			}
			body := msg[5:]
			switch typ {
			case 'E':
				new(pgproto3.ErrorResponse).Decode(body)
			case 'R':
				if len(body) >= 4 {
					new(pgproto3.AuthenticationSASL).Decode(body)
					new(pgproto3.AuthenticationSASLContinue).Decode(body)
					new(pgproto3.AuthenticationSASLFinal).Decode(body)
					new(pgproto3.AuthenticationMD5Password).Decode(body)
				}
			}
		}
	})
}
