package myauth

import (
	"bytes"
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
)

// TestSwitchEd25519NonceEndingInZero covers a nonce whose last random byte is zero: it is
// part of the nonce, not a terminator, and the signature must cover it.
func TestSwitchEd25519NonceEndingInZero(t *testing.T) {
	nonce := bytes.Repeat([]byte{0x5a}, ed25519NonceLen)
	nonce[len(nonce)-1] = 0
	request := append([]byte{0xfe}, mysql.AUTH_MARIADB_ED25519...)
	request = append(request, 0)
	request = append(request, nonce...)

	plugin, reply, err := switchPlugin(request, "secret")
	if err != nil {
		t.Fatal(err)
	}
	if plugin != mysql.AUTH_MARIADB_ED25519 {
		t.Fatalf("plugin = %q, want %q", plugin, mysql.AUTH_MARIADB_ED25519)
	}
	want, err := mysql.CalcEd25519Password(nonce, "secret")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(reply, want) {
		t.Error("the reply does not sign the whole 32-byte nonce")
	}
}
