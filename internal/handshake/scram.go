package handshake

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxSCRAMIterations bounds the PBKDF2 iteration count that the agent accepts in a
// server-first-message. PostgreSQL uses 4096 and MongoDB 15000 by default. The derivation
// cannot be interrupted by the login timeout, so without a bound a hostile or misconfigured
// server could hold a session and a core for minutes. A million iterations of
// PBKDF2-HMAC-SHA-256 took about 0.3 s of one core on the project's 2-core test machine.
const MaxSCRAMIterations = 1_000_000

// CheckSCRAMIterations returns an error wrapping ErrUpstreamProtocol when the SCRAM
// server-first-message (RFC 5802 section 7: r=...,s=...,i=...) requests more than
// MaxSCRAMIterations. A missing or malformed count is left to the SCRAM library to reject.
func CheckSCRAMIterations(serverFirst string) error {
	for attr := range strings.SplitSeq(serverFirst, ",") {
		value, ok := strings.CutPrefix(attr, "i=")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(value)
		if err != nil {
			return nil
		}
		if n > MaxSCRAMIterations {
			return fmt.Errorf("%w: SCRAM iteration count %d is above the agent's maximum of %d",
				ErrUpstreamProtocol, n, MaxSCRAMIterations)
		}
		return nil
	}
	return nil
}
