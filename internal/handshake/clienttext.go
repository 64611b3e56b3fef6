package handshake

import (
	"context"
	"errors"
	"net"
	"strings"
)

// ClientErrorText formats err for an error message sent to the client. A *net.OpError in err
// loses its socket addresses ("read tcp 127.0.0.1:50516->127.0.0.1:41001: i/o timeout" becomes
// "read: i/o timeout"). The returned error and the logs keep them. When ctx has ended, the
// text states that the login timed out (or was canceled) and names the step that was waiting.
func ClientErrorText(ctx context.Context, err error) string {
	text := err.Error()
	socketErrorAt := -1 // where the text of the first *net.OpError starts
	for _, opErr := range opErrors(err) {
		full := opErr.Error()
		i := strings.Index(text, full)
		if i < 0 {
			continue
		}
		short := opErr.Op
		if opErr.Err != nil {
			short += ": " + opErr.Err.Error()
		}
		text = text[:i] + short + text[i+len(full):]
		if socketErrorAt < 0 {
			socketErrorAt = i
		}
	}

	outcome := "timed out"
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		outcome = "was canceled"
	case ctx.Err() == nil:
		return text
	}
	if socketErrorAt < 0 {
		return "login " + outcome + ": " + text
	}
	// The step is the text before the socket error, such as "upstream tls handshake", and
	// the hint is what follows it, such as the TLS hint of StartTLS.
	step := strings.TrimSuffix(text[:socketErrorAt], ": ")
	rest := text[socketErrorAt:]
	hint := ""
	if i := strings.Index(rest, " ("); i >= 0 {
		hint = rest[i:]
	}
	if step == "" {
		return "login " + outcome + hint
	}
	return "login " + outcome + " in step \"" + step + "\"" + hint
}

// opErrors returns every *net.OpError in the tree of err, outermost first.
func opErrors(err error) []*net.OpError {
	var found []*net.OpError
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if opErr, ok := e.(*net.OpError); ok {
			found = append(found, opErr)
			return
		}
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		case interface{ Unwrap() []error }:
			for _, inner := range u.Unwrap() {
				walk(inner)
			}
		}
	}
	walk(err)
	return found
}
