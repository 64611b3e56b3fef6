package pgauth

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgproto3"
)

func TestReadStartupPacket(t *testing.T) {
	cancel32 := binary.BigEndian.AppendUint32(nil, 8+4+32)
	cancel32 = binary.BigEndian.AppendUint32(cancel32, cancelRequestCode)
	cancel32 = binary.BigEndian.AppendUint32(cancel32, 1234)
	cancel32 = append(cancel32, bytes.Repeat([]byte{7}, 32)...)

	tests := []struct {
		name       string
		in         []byte
		wantKind   packetKind
		wantParams []startupParam
		wantErr    bool
	}{
		{"StartupMessage 3.0", startupBytes(pgproto3.ProtocolVersion30, "user", "u", "database", "d"),
			packetStartup, []startupParam{{"user", "u"}, {"database", "d"}}, false},
		{"StartupMessage 3.2 empty value", startupBytes(pgproto3.ProtocolVersion32, "options", ""),
			packetStartup, []startupParam{{"options", ""}}, false},
		{"StartupMessage no parameters", startupBytes(pgproto3.ProtocolVersion30), packetStartup, nil, false},
		{"SSLRequest", sslRequest, packetSSLRequest, nil, false},
		{"GSSENCRequest", []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30}, packetGSSEncRequest, nil, false},
		{"CancelRequest 3.2 key", cancel32, packetCancelRequest, nil, false},
		{"CancelRequest 3.0 key", []byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 9, 9, 9, 9}, packetCancelRequest, nil, false},
		{"CancelRequest short key", []byte{0, 0, 0, 14, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 9, 9}, 0, nil, true},
		{"SSLRequest with trailing bytes", []byte{0, 0, 0, 9, 0x04, 0xd2, 0x16, 0x2f, 0}, 0, nil, true},
		{"value without terminator", []byte{0, 0, 0, 14, 0, 3, 0, 0, 'a', 0, 'b', 0, 'c', 0}, 0, nil, true},
		{"bytes after terminator", []byte{0, 0, 0, 14, 0, 3, 0, 0, 'a', 0, 'b', 0, 0, 'x'}, 0, nil, true},
		{"negative length", []byte{0xff, 0xff, 0xff, 0xff}, 0, nil, true},
		{"length above limit", binary.BigEndian.AppendUint32(nil, maxStartupPacketLength+5), 0, nil, true},
		{"version 3.99 passes", startupBytes(3<<16|99, "user", "u"), packetStartup, []startupParam{{"user", "u"}}, false},
		{"version 1234.5681", startupBytes(1234<<16|5681, "user", "u"), 0, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := readStartupPacket(bufio.NewReader(bytes.NewReader(tt.in)))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got packet %v, want an error", p.Kind)
				}
				if !errors.Is(err, ErrClientProtocol) {
					t.Errorf("error %v does not wrap ErrClientProtocol", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Kind != tt.wantKind {
				t.Errorf("kind = %v, want %v", p.Kind, tt.wantKind)
			}
			if diff := cmp.Diff(tt.wantParams, p.Params); diff != "" {
				t.Errorf("parameters (-want +got):\n%s", diff)
			}
			if !bytes.Equal(p.Raw, tt.in) {
				t.Errorf("Raw = %x, want %x", p.Raw, tt.in)
			}
		})
	}
}

func TestReadStartupPacketTruncated(t *testing.T) {
	in := startupBytes(pgproto3.ProtocolVersion30, "user", "u")
	_, err := readStartupPacket(bufio.NewReader(bytes.NewReader(in[:len(in)-2])))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("error = %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestReadStartupKeepsReadAhead(t *testing.T) {
	after := []byte("Q\x00\x00\x00\x0dselect 1\x00")
	r := bufio.NewReader(bytes.NewReader(append(startupBytes(pgproto3.ProtocolVersion30, "user", "u"), after...)))
	if _, err := readStartupPacket(r); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(r)
	if !bytes.Equal(rest, after) {
		t.Errorf("bytes after the packet = %q, want %q", rest, after)
	}
}

func TestUpstreamStartupMessage(t *testing.T) {
	client := startupPacket{Version: pgproto3.ProtocolVersion32, Params: []startupParam{
		{"user", "client"}, {"database", ""}, {"application_name", "x"}}}
	msg, err := upstreamStartupMessage(client, "app")
	if err != nil {
		t.Fatal(err)
	}
	got, err := readStartupPacket(bufio.NewReader(bytes.NewReader(msg)))
	if err != nil {
		t.Fatal(err)
	}
	want := []startupParam{{"user", "app"}, {"application_name", "x"}, {"database", "app"}}
	if diff := cmp.Diff(want, got.Params); diff != "" {
		t.Errorf("parameters (-want +got):\n%s", diff)
	}
	if got.Version != pgproto3.ProtocolVersion32 {
		t.Errorf("version = %#x, want 3.2", got.Version)
	}

	for _, user := range []string{"", "a\x00b"} {
		if _, err := upstreamStartupMessage(client, user); err == nil {
			t.Errorf("user %q: got no error", user)
		}
	}
	long := startupPacket{Version: pgproto3.ProtocolVersion30, Params: []startupParam{{"options", string(bytes.Repeat([]byte{'x'}, maxStartupPacketLength-20))}}}
	if _, err := upstreamStartupMessage(long, "a-long-stored-user-name"); err == nil {
		t.Error("oversized upstream StartupMessage: got no error")
	}
}

// FuzzReadStartupPacket checks that any client bytes give a packet or an error, never a
// panic, and that an accepted StartupMessage survives re-encoding.
func FuzzReadStartupPacket(f *testing.F) {
	f.Add(startupBytes(pgproto3.ProtocolVersion30, "user", "u", "database", "d"))
	f.Add(sslRequest)
	f.Add([]byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 9, 9, 9, 9})
	f.Add([]byte{0, 0, 0, 12, 0, 3, 0, 0, 'a', 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := readStartupPacket(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			return
		}
		if len(p.Raw) > 4+maxStartupPacketLength {
			t.Fatalf("accepted a packet of %d bytes", len(p.Raw))
		}
		if p.Kind != packetStartup {
			return
		}
		msg, err := upstreamStartupMessage(p, "app")
		if err != nil {
			return // the longer user name can push a packet over the limit
		}
		again, err := readStartupPacket(bufio.NewReader(bytes.NewReader(msg)))
		if err != nil {
			t.Fatalf("re-encoded StartupMessage does not parse: %v", err)
		}
		for _, param := range again.Params[1:] {
			if param.Name == "user" {
				t.Fatalf("client user parameter reached the upstream: %q", again.Params)
			}
		}
	})
}
