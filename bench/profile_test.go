package bench

import "testing"

func runProfile(t *testing.T, e *env, rep *report) {
	t.Skip("not yet")
}
