package mongoauth

import (
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/xdg-go/scram"
	"go.mongodb.org/mongo-driver/x/bsonx/bsoncore"

	"github.com/knoxcall/dbproxy/internal/handshake"
)

// maxSASLReplies bounds the saslContinue round trips of one SCRAM conversation. SCRAM needs
// two (server-first, server-final), plus one empty exchange on servers that ignore
// skipEmptyExchange.
const maxSASLReplies = 4

// saslStartCommand returns a saslStart document with the client-first message. dbKey is
// "$db" for a saslStart command and "db" inside speculativeAuthenticate.
func saslStartCommand(mechanism, clientFirst, dbKey, authDB string) bsoncore.Document {
	idx, doc := bsoncore.AppendDocumentStart(nil)
	doc = bsoncore.AppendInt32Element(doc, "saslStart", 1)
	doc = bsoncore.AppendStringElement(doc, "mechanism", mechanism)
	doc = bsoncore.AppendBinaryElement(doc, "payload", 0, []byte(clientFirst))
	optIdx, doc := bsoncore.AppendDocumentElementStart(doc, "options")
	doc = bsoncore.AppendBooleanElement(doc, "skipEmptyExchange", true)
	doc, _ = bsoncore.AppendDocumentEnd(doc, optIdx)
	doc = bsoncore.AppendStringElement(doc, dbKey, authDB)
	doc, _ = bsoncore.AppendDocumentEnd(doc, idx)
	return doc
}

func saslContinueCommand(conversationID bsoncore.Value, payload, authDB string) bsoncore.Document {
	idx, doc := bsoncore.AppendDocumentStart(nil)
	doc = bsoncore.AppendInt32Element(doc, "saslContinue", 1)
	doc = bsoncore.AppendValueElement(doc, "conversationId", conversationID)
	doc = bsoncore.AppendBinaryElement(doc, "payload", 0, []byte(payload))
	doc = bsoncore.AppendStringElement(doc, "$db", authDB)
	doc, _ = bsoncore.AppendDocumentEnd(doc, idx)
	return doc
}

// roundTrip sends body as an OP_MSG with the raw document sequences and returns the body of
// the reply.
func roundTrip(conn io.ReadWriter, body bsoncore.Document, sequences []byte) (bsoncore.Document, error) {
	requestID := upstreamRequestID.Add(1)
	if _, err := conn.Write(buildMsg(requestID, 0, body, sequences)); err != nil {
		return nil, err
	}
	msg, err := readMessage(conn)
	if errors.Is(err, errMessageTooLarge) || errors.Is(err, errMessageTooSmall) {
		return nil, fmt.Errorf("%w: %w", ErrUpstreamProtocol, err)
	}
	if err != nil {
		return nil, err
	}
	reply, err := parseReply(msg, requestID)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUpstreamProtocol, err)
	}
	return reply, nil
}

// commandError returns nil for a reply with ok: 1, and otherwise an error with the server's
// message and code. It wraps ErrAuthFailed for code 18 and ErrUpstreamProtocol otherwise.
func commandError(reply bsoncore.Document) error {
	ok := reply.Lookup("ok")
	if okValue, isNumber := ok.AsInt64OK(); isNumber && okValue == 1 {
		return nil
	}
	if okValue, isBool := ok.BooleanOK(); isBool && okValue {
		return nil
	}
	code, _ := reply.Lookup("code").AsInt32OK()
	codeName, _ := reply.Lookup("codeName").StringValueOK()
	message, _ := reply.Lookup("errmsg").StringValueOK()
	sentinel := ErrUpstreamProtocol
	if code == codeAuthenticationFailed {
		sentinel = ErrAuthFailed
	}
	return fmt.Errorf("%w: server error %d (%s): %s", sentinel, code, codeName, message)
}

// chooseMechanism picks the SCRAM mechanism from the saslSupportedMechs of the hello reply:
// SCRAM-SHA-256 when listed, then SCRAM-SHA-1. A server that returns no saslSupportedMechs
// (older than MongoDB 4.0, or a user it does not know) gets SCRAM-SHA-1, as drivers do.
func chooseMechanism(reply bsoncore.Document) (string, error) {
	value := reply.Lookup("saslSupportedMechs")
	if value.Type == 0 {
		return mechanismSHA1, nil
	}
	array, ok := value.ArrayOK()
	if !ok {
		return "", fmt.Errorf("%w: saslSupportedMechs is a %v, not an array", ErrUpstreamProtocol, value.Type)
	}
	values, err := array.Values()
	if err != nil {
		return "", fmt.Errorf("%w: saslSupportedMechs: %w", ErrUpstreamProtocol, err)
	}
	var mechanisms []string
	for _, v := range values {
		if s, ok := v.StringValueOK(); ok {
			mechanisms = append(mechanisms, s)
		}
	}
	switch {
	case slices.Contains(mechanisms, mechanismSHA256):
		return mechanismSHA256, nil
	case slices.Contains(mechanisms, mechanismSHA1):
		return mechanismSHA1, nil
	case len(mechanisms) == 0:
		// MongoDB returns an empty list for a user it does not know. Authentication will
		// fail with code 18, which is the error the client should see.
		return mechanismSHA256, nil
	}
	return "", fmt.Errorf("%w: the stored user supports only %v, and the agent supports SCRAM-SHA-256 and SCRAM-SHA-1",
		ErrUpstreamProtocol, mechanisms)
}

// runSCRAM authenticates with saslStart and saslContinue.
func runSCRAM(conn io.ReadWriter, user, password, authDB, mechanism string) error {
	client, err := scramClients.get(mechanism, user, password)
	if err != nil {
		return err
	}
	conv := client.NewConversation()
	clientFirst, err := conv.Step("")
	if err != nil {
		return fmt.Errorf("SCRAM client-first message: %w", err)
	}
	reply, err := roundTrip(conn, saslStartCommand(mechanism, clientFirst, "$db", authDB), nil)
	if err != nil {
		return fmt.Errorf("saslStart: %w", err)
	}
	if err := commandError(reply); err != nil {
		return fmt.Errorf("saslStart: %w", err)
	}
	return continueSCRAM(conn, conv, authDB, reply)
}

// continueSCRAM finishes a SCRAM conversation from the server's reply to saslStart (or the
// speculativeAuthenticate document of a hello reply). It fails unless the server proved that
// it has the stored key, by a valid server signature in server-final.
func continueSCRAM(conn io.ReadWriter, conv *scram.ClientConversation, authDB string, reply bsoncore.Document) error {
	for range maxSASLReplies {
		conversationID := reply.Lookup("conversationId")
		if conversationID.Type == 0 {
			return fmt.Errorf("%w: SASL reply has no conversationId", ErrUpstreamProtocol)
		}
		_, payload, ok := reply.Lookup("payload").BinaryOK()
		if !ok {
			return fmt.Errorf("%w: SASL reply has no binary payload", ErrUpstreamProtocol)
		}
		done, _ := reply.Lookup("done").BooleanOK()

		var response string
		if !conv.Done() {
			if err := handshake.CheckSCRAMIterations(string(payload)); err != nil {
				return err
			}
			var err error
			if response, err = conv.Step(string(payload)); err != nil {
				return fmt.Errorf("%w: SCRAM: %w", ErrUpstreamProtocol, err)
			}
		}
		if done {
			if !conv.Done() || !conv.Valid() {
				return fmt.Errorf("%w: SCRAM: server ended the conversation without a valid server signature",
					ErrUpstreamProtocol)
			}
			return nil
		}

		// saslContinue with client-final, or the empty message after server-final.
		var err error
		reply, err = roundTrip(conn, saslContinueCommand(conversationID, response, authDB), nil)
		if err != nil {
			return fmt.Errorf("saslContinue: %w", err)
		}
		if err := commandError(reply); err != nil {
			return fmt.Errorf("saslContinue: %w", err)
		}
	}
	return fmt.Errorf("%w: SCRAM: no result after %d saslContinue replies", ErrUpstreamProtocol, maxSASLReplies)
}
