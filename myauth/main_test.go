package myauth

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests when goroutines outlive them, such as a splice or an
// upstream quit that never ended.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
