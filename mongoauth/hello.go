package mongoauth

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"go.mongodb.org/mongo-driver/x/bsonx/bsoncore"
	"go.mongodb.org/mongo-driver/x/mongo/driver/wiremessage"
)

// credentialsMessage is the error text for a client that tries to authenticate itself.
const credentialsMessage = "route %q: credentials are supplied by the agent, so remove the user name, " +
	"password, authMechanism and authSource from the connection string (client sent %s)"

// authCommands are the commands with which a client authenticates itself. The agent replies
// to them with an error, because the connection is already authenticated with stored credentials.
var authCommands = map[string]bool{
	"saslStart":    true,
	"saslContinue": true,
	"authenticate": true,
	"getnonce":     true,
}

// isHello reports whether name is the handshake command: hello, or the legacy isMaster, which
// servers accept in either spelling.
func isHello(name string) bool {
	return name == "hello" || name == "isMaster" || name == "ismaster"
}

// readClientHello reads the client's first message and checks that it is a hello without
// credentials. Anything else gets a command error before readClientHello returns an error
// wrapping ErrClientProtocol.
func readClientHello(client net.Conn, route string) (*command, error) {
	msg, err := readMessage(client)
	switch {
	case errors.Is(err, errMessageTooSmall) || errors.Is(err, errMessageTooLarge):
		return nil, fmt.Errorf("read client hello: %w: %w", ErrClientProtocol, err)
	case err != nil:
		// The caller separates a closed connection from the login timeout.
		return nil, fmt.Errorf("read client hello: %w", err)
	}
	hello, err := parseCommand(msg)
	if err != nil {
		sendHeaderError(client, msg, codeBadValue, "BadValue", fmt.Sprintf(
			"route %q: the first message must be a hello command: %v", route, err))
		return nil, fmt.Errorf("client hello: %w: %w", ErrClientProtocol, err)
	}

	var refusal string
	switch {
	case authCommands[hello.name]:
		refusal = fmt.Sprintf(credentialsMessage, route, hello.name)
	case !isHello(hello.name):
		refusal = fmt.Sprintf("route %q: the first command must be hello or isMaster, got %q", route, hello.name)
	case hello.body.Lookup("speculativeAuthenticate").Type != 0:
		refusal = fmt.Sprintf(credentialsMessage, route, "speculativeAuthenticate in hello")
	}
	if refusal != "" {
		client.Write(replyTo(hello, errorDocument(codeBadValue, "BadValue", refusal)))
		return nil, fmt.Errorf("client hello: %w: %s", ErrClientProtocol, refusal)
	}
	return hello, nil
}

// upstreamHello returns the client's hello command with saslSupportedMechs for the stored
// user and speculativeAuthenticate carrying the SCRAM-SHA-256 client-first message. The
// command keeps the client's fields in order (client metadata, compression, helloOk, ...).
func upstreamHello(hello *command, authDB, user, clientFirst string) (bsoncore.Document, error) {
	elems, err := hello.body.Elements()
	if err != nil {
		return nil, err
	}
	idx, doc := bsoncore.AppendDocumentStart(nil)
	for _, e := range elems {
		switch e.Key() {
		case "saslSupportedMechs", "speculativeAuthenticate", "$db":
			continue
		}
		doc = append(doc, e...)
	}
	doc = bsoncore.AppendStringElement(doc, "saslSupportedMechs", authDB+"."+user)
	doc = bsoncore.AppendDocumentElement(doc, "speculativeAuthenticate",
		saslStartCommand(mechanismSHA256, clientFirst, "db", authDB))
	doc = bsoncore.AppendStringElement(doc, "$db", hello.db)
	return bsoncore.AppendDocumentEnd(doc, idx)
}

// clientHelloReply returns the server's hello reply without the fields that reply to the
// agent's own requests: speculativeAuthenticate and saslSupportedMechs.
func clientHelloReply(reply bsoncore.Document) (bsoncore.Document, error) {
	elems, err := reply.Elements()
	if err != nil {
		return nil, err
	}
	idx, doc := bsoncore.AppendDocumentStart(nil)
	for _, e := range elems {
		switch e.Key() {
		case "speculativeAuthenticate", "saslSupportedMechs":
			continue
		}
		doc = append(doc, e...)
	}
	return bsoncore.AppendDocumentEnd(doc, idx)
}

// warnIfReplicaSet logs a warning when the hello reply describes a replica set. A driver
// without directConnection=true discovers the members listed in hosts and connects to them
// directly, past the agent. The client's hello does not show whether it asked for a direct
// connection, so the warning is logged whatever the client's setting.
func warnIfReplicaSet(log *slog.Logger, reply bsoncore.Document) {
	setName, hasSetName := reply.Lookup("setName").StringValueOK()
	hosts, hasHosts := reply.Lookup("hosts").ArrayOK()
	if !hasSetName && !hasHosts {
		return
	}
	var members []string
	if hasHosts {
		values, _ := hosts.Values()
		for _, v := range values {
			if s, ok := v.StringValueOK(); ok {
				members = append(members, s)
			}
		}
	}
	log.Warn("upstream is a replica set member: a client without directConnection=true in its "+
		"connection string will connect to the listed hosts directly and bypass the agent",
		"set_name", setName, "hosts", strings.Join(members, ","))
}

// errorDocument returns a command error reply: {ok: 0, errmsg, code, codeName}.
func errorDocument(code int32, codeName, message string) bsoncore.Document {
	idx, doc := bsoncore.AppendDocumentStart(nil)
	doc = bsoncore.AppendDoubleElement(doc, "ok", 0)
	doc = bsoncore.AppendStringElement(doc, "errmsg", message)
	doc = bsoncore.AppendInt32Element(doc, "code", code)
	doc = bsoncore.AppendStringElement(doc, "codeName", codeName)
	doc, _ = bsoncore.AppendDocumentEnd(doc, idx)
	return doc
}

// sendHeaderError replies to a message that could not be parsed as a command, using only its
// header: OP_REPLY for an OP_QUERY, OP_MSG for anything else.
func sendHeaderError(client net.Conn, msg []byte, code int32, codeName, message string) error {
	_, requestID, _, opcode, _, ok := wiremessage.ReadHeader(msg)
	if !ok {
		return errors.New("message shorter than its header")
	}
	cmd := &command{opcode: opcode, requestID: requestID}
	_, err := client.Write(replyTo(cmd, errorDocument(code, codeName, message)))
	return err
}
