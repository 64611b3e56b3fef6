package myauth

import (
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/google/go-cmp/cmp"
)

func TestUpstreamResponseCapabilities(t *testing.T) {
	const base = mysql.CLIENT_PROTOCOL_41 | mysql.CLIENT_SECURE_CONNECTION | mysql.CLIENT_PLUGIN_AUTH
	tests := []struct {
		name       string
		client     uint32
		server     uint32
		database   string
		want       uint32
		wantZstd   byte
		clientExt  uint32
		serverExt  uint32
		wantExtCap uint32
	}{
		{
			name:   "stream flags kept, SSL added",
			client: base | mysql.CLIENT_DEPRECATE_EOF | mysql.CLIENT_COMPRESS | mysql.CLIENT_MULTI_STATEMENTS,
			server: base | mysql.CLIENT_DEPRECATE_EOF | mysql.CLIENT_COMPRESS | mysql.CLIENT_MULTI_STATEMENTS | mysql.CLIENT_SSL,
			want:   base | mysql.CLIENT_DEPRECATE_EOF | mysql.CLIENT_COMPRESS | mysql.CLIENT_MULTI_STATEMENTS | mysql.CLIENT_SSL,
		},
		{
			name:   "flags the server lacks dropped",
			client: base | mysql.CLIENT_QUERY_ATTRIBUTES | mysql.CLIENT_SESSION_TRACK,
			server: base | mysql.CLIENT_SSL | mysql.CLIENT_SESSION_TRACK,
			want:   base | mysql.CLIENT_SSL | mysql.CLIENT_SESSION_TRACK,
		},
		{
			name:   "expired password handling dropped",
			client: base | mysql.CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS,
			server: base | mysql.CLIENT_SSL | mysql.CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS,
			want:   base | mysql.CLIENT_SSL,
		},
		{
			name:     "zstd with its level",
			client:   base | mysql.CLIENT_ZSTD_COMPRESSION_ALGORITHM,
			server:   base | mysql.CLIENT_SSL | mysql.CLIENT_ZSTD_COMPRESSION_ALGORITHM,
			want:     base | mysql.CLIENT_SSL | mysql.CLIENT_ZSTD_COMPRESSION_ALGORITHM,
			wantZstd: 7,
		},
		{
			name:     "database sets CONNECT_WITH_DB",
			client:   base,
			server:   base | mysql.CLIENT_SSL | mysql.CLIENT_CONNECT_WITH_DB,
			database: "appdb",
			want:     base | mysql.CLIENT_SSL | mysql.CLIENT_CONNECT_WITH_DB,
		},
		{
			name:       "MariaDB extended capabilities intersected",
			client:     base,
			server:     base | mysql.CLIENT_SSL,
			want:       base | mysql.CLIENT_SSL,
			clientExt:  1 | 4 | 16,
			serverExt:  1 | 16 | 32,
			wantExtCap: 1 | 16,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := &response{capabilities: tt.client, database: tt.database, zstdLevel: 7,
				extCapabilities: tt.clientExt, attributes: []byte("\x01a\x01b")}
			up := upstreamResponse(resp, &greeting{capabilities: tt.server, extCapabilities: tt.serverExt})
			if up.capabilities != tt.want {
				t.Errorf("capabilities %#x, want %#x", up.capabilities, tt.want)
			}
			if up.extCapabilities != tt.wantExtCap {
				t.Errorf("extended capabilities %#x, want %#x", up.extCapabilities, tt.wantExtCap)
			}
			got, err := parseResponse(up.marshal("stored", []byte("auth"), "mysql_native_password", false))
			if err != nil {
				t.Fatal(err)
			}
			want := &response{capabilities: tt.want, user: "stored", authResponse: []byte("auth"),
				authPlugin: "mysql_native_password", database: tt.database, attributes: nil,
				zstdLevel: tt.wantZstd, extCapabilities: tt.wantExtCap}
			if tt.want&mysql.CLIENT_CONNECT_ATTRS != 0 {
				want.attributes = resp.attributes
			}
			if diff := cmp.Diff(want, got, cmp.AllowUnexported(response{})); diff != "" {
				t.Errorf("encoded response (-want +got):\n%s", diff)
			}
		})
	}
}
