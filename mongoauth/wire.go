package mongoauth

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"

	"go.mongodb.org/mongo-driver/x/bsonx/bsoncore"
	"go.mongodb.org/mongo-driver/x/mongo/driver/wiremessage"
)

const (
	// maxMessageSizeBytes bounds one wire message, header included. It is the value that
	// MongoDB servers report as maxMessageSizeBytes in their hello reply (48000000).
	maxMessageSizeBytes = 48000000
	// maxBSONObjectSize bounds one BSON document. It is the value that MongoDB servers report
	// as maxBsonObjectSize in their hello reply (16 MiB).
	maxBSONObjectSize = 16 * 1024 * 1024
	// headerSize is the size of the standard message header: messageLength, requestID,
	// responseTo and opCode, each an int32.
	headerSize = 16
)

var (
	errMessageTooLarge = errors.New("message larger than maxMessageSizeBytes (48000000)")
	errMessageTooSmall = errors.New("message length smaller than the 16-byte header")
)

// upstreamRequestID numbers the messages the agent itself sends upstream.
var upstreamRequestID atomic.Int32

// readMessage reads one wire message (header included) from r.
func readMessage(r io.Reader) ([]byte, error) {
	var header [headerSize]byte
	if _, err := io.ReadFull(r, header[:]); err != nil {
		return nil, err
	}
	length := int32(binary.LittleEndian.Uint32(header[:4]))
	if length < headerSize {
		return nil, fmt.Errorf("%w: %d", errMessageTooSmall, length)
	}
	if length > maxMessageSizeBytes {
		return nil, fmt.Errorf("%w: %d bytes", errMessageTooLarge, length)
	}
	// Grow the buffer as bytes arrive rather than to the announced length at once, so a
	// peer that announces 48 MB and sends nothing costs no more than it sent.
	msg := make([]byte, headerSize, min(int(length), readChunkSize))
	copy(msg, header[:])
	for len(msg) < int(length) {
		n := min(int(length)-len(msg), readChunkSize)
		msg = slices.Grow(msg, n)
		if _, err := io.ReadFull(r, msg[len(msg):len(msg)+n]); err != nil {
			return nil, err
		}
		msg = msg[:len(msg)+n]
	}
	return msg, nil
}

// readChunkSize is how much readMessage reads, and grows its buffer by, at a time.
const readChunkSize = 64 << 10

// command is a command request parsed from an OP_MSG or a legacy OP_QUERY.
type command struct {
	opcode    wiremessage.OpCode
	requestID int32
	// name is the first key of the command document, as sent ("isMaster", "hello", ...).
	name string
	// body is the command document. For OP_QUERY it is the unwrapped query, with the
	// $readPreference of a {$query: ...} wrapper moved into it.
	body bsoncore.Document
	// db is the $db field of an OP_MSG, or the database of an OP_QUERY's "<db>.$cmd".
	db string
	// sequences holds the raw kind-1 sections (document sequences) of an OP_MSG.
	sequences []byte
}

// parseCommand parses a client request that must be an OP_MSG or an OP_QUERY on "<db>.$cmd".
func parseCommand(msg []byte) (*command, error) {
	length, requestID, _, opcode, rest, ok := wiremessage.ReadHeader(msg)
	if !ok || int(length) != len(msg) {
		return nil, errors.New("malformed message header")
	}
	cmd := &command{opcode: opcode, requestID: requestID}
	var err error
	switch opcode {
	case wiremessage.OpMsg:
		err = cmd.parseMsg(rest)
		if err == nil {
			err = cmd.lookupDB()
		}
	case wiremessage.OpQuery:
		err = cmd.parseQuery(rest)
	default:
		return nil, fmt.Errorf("unexpected opcode %v (want OP_MSG or OP_QUERY)", opcode)
	}
	if err != nil {
		return nil, err
	}
	first, err := cmd.body.IndexErr(0)
	if err != nil {
		return nil, errors.New("empty command document")
	}
	cmd.name = first.Key()
	return cmd, nil
}

func (cmd *command) parseMsg(rest []byte) error {
	flags, rest, ok := wiremessage.ReadMsgFlags(rest)
	if !ok {
		return errors.New("OP_MSG: missing flagBits")
	}
	if flags&wiremessage.ChecksumPresent != 0 {
		// The CRC-32C checksum is the last four bytes. The agent rebuilds the message and
		// sends it without one, so the checksum is dropped, not verified.
		if len(rest) < 4 {
			return errors.New("OP_MSG: missing checksum")
		}
		rest = rest[:len(rest)-4]
	}
	for len(rest) > 0 {
		kind, after, _ := wiremessage.ReadMsgSectionType(rest)
		switch kind {
		case wiremessage.SingleDocument:
			if cmd.body != nil {
				return errors.New("OP_MSG: more than one body section")
			}
			doc, remaining, err := readDocument(after)
			if err != nil {
				return fmt.Errorf("OP_MSG body: %w", err)
			}
			cmd.body, rest = doc, remaining
		case wiremessage.DocumentSequence:
			// The driver's reader panics on a length of 2^31 or more, because its
			// int32 arithmetic wraps, so the length is checked here first.
			if len(after) < 4 {
				return errors.New("OP_MSG: malformed document sequence")
			}
			if n := binary.LittleEndian.Uint32(after); n < 4 || uint64(n) > uint64(len(after)) {
				return errors.New("OP_MSG: malformed document sequence")
			}
			_, _, remaining, ok := wiremessage.ReadMsgSectionRawDocumentSequence(after)
			if !ok {
				return errors.New("OP_MSG: malformed document sequence")
			}
			cmd.sequences = append(cmd.sequences, rest[:len(rest)-len(remaining)]...)
			rest = remaining
		default:
			return fmt.Errorf("OP_MSG: unknown section kind %d", kind)
		}
	}
	if cmd.body == nil {
		return errors.New("OP_MSG: no body section")
	}
	return nil
}

// lookupDB sets db from the $db field, which every OP_MSG request carries.
func (cmd *command) lookupDB() error {
	db, ok := cmd.body.Lookup("$db").StringValueOK()
	if !ok || db == "" {
		return errors.New("OP_MSG: body has no $db string")
	}
	cmd.db = db
	return nil
}

func (cmd *command) parseQuery(rest []byte) error {
	_, rest, ok := wiremessage.ReadQueryFlags(rest)
	if !ok {
		return errors.New("OP_QUERY: missing flags")
	}
	collection, rest, ok := wiremessage.ReadQueryFullCollectionName(rest)
	if !ok {
		return errors.New("OP_QUERY: missing fullCollectionName")
	}
	db, found := strings.CutSuffix(collection, ".$cmd")
	if !found || db == "" {
		return fmt.Errorf("OP_QUERY on %q: only commands on <db>.$cmd are supported", collection)
	}
	cmd.db = db
	if _, rest, ok = wiremessage.ReadQueryNumberToSkip(rest); !ok {
		return errors.New("OP_QUERY: missing numberToSkip")
	}
	if _, rest, ok = wiremessage.ReadQueryNumberToReturn(rest); !ok {
		return errors.New("OP_QUERY: missing numberToReturn")
	}
	query, rest, err := readDocument(rest)
	if err != nil {
		return fmt.Errorf("OP_QUERY query: %w", err)
	}
	if len(rest) > 0 {
		// The optional returnFieldsSelector: commands ignore it, but it must be well formed.
		if _, rest, err = readDocument(rest); err != nil || len(rest) > 0 {
			return errors.New("OP_QUERY: malformed returnFieldsSelector")
		}
	}
	cmd.body, err = unwrapQuery(query)
	return err
}

// unwrapQuery turns {$query: {cmd...}, $readPreference: {...}} (how legacy drivers send a
// command with a read preference) into {cmd..., $readPreference: {...}}.
func unwrapQuery(query bsoncore.Document) (bsoncore.Document, error) {
	inner, ok := query.Lookup("$query").DocumentOK()
	if !ok {
		return query, nil
	}
	if err := inner.Validate(); err != nil {
		return nil, fmt.Errorf("OP_QUERY $query: %w", err)
	}
	idx, doc := bsoncore.AppendDocumentStart(nil)
	elems, _ := inner.Elements()
	for _, e := range elems {
		doc = append(doc, e...)
	}
	if pref, ok := query.Lookup("$readPreference").DocumentOK(); ok {
		doc = bsoncore.AppendDocumentElement(doc, "$readPreference", pref)
	}
	return bsoncore.AppendDocumentEnd(doc, idx)
}

// readDocument reads one BSON document of at most maxBSONObjectSize bytes and validates it.
func readDocument(src []byte) (bsoncore.Document, []byte, error) {
	doc, rest, ok := bsoncore.ReadDocument(src)
	if !ok {
		return nil, src, errors.New("truncated BSON document")
	}
	if len(doc) > maxBSONObjectSize {
		return nil, src, fmt.Errorf("BSON document of %d bytes exceeds maxBsonObjectSize (16 MiB)", len(doc))
	}
	if err := doc.Validate(); err != nil {
		return nil, src, fmt.Errorf("invalid BSON document: %w", err)
	}
	return doc, rest, nil
}

// buildMsg returns an OP_MSG with body as its only kind-0 section, followed by the raw kind-1
// sections in sequences.
func buildMsg(requestID, responseTo int32, body bsoncore.Document, sequences []byte) []byte {
	idx, msg := wiremessage.AppendHeaderStart(nil, requestID, responseTo, wiremessage.OpMsg)
	msg = wiremessage.AppendMsgFlags(msg, 0)
	msg = wiremessage.AppendMsgSectionType(msg, wiremessage.SingleDocument)
	msg = append(msg, body...)
	msg = append(msg, sequences...)
	return bsoncore.UpdateLength(msg, idx, int32(len(msg)))
}

// buildReply returns an OP_REPLY that carries doc, the reply to a legacy OP_QUERY command.
func buildReply(responseTo int32, doc bsoncore.Document) []byte {
	idx, msg := wiremessage.AppendHeaderStart(nil, upstreamRequestID.Add(1), responseTo, wiremessage.OpReply)
	// MongoDB servers set AwaitCapable on every OP_REPLY.
	msg = wiremessage.AppendReplyFlags(msg, wiremessage.AwaitCapable)
	msg = wiremessage.AppendReplyCursorID(msg, 0)
	msg = wiremessage.AppendReplyStartingFrom(msg, 0)
	msg = wiremessage.AppendReplyNumberReturned(msg, 1)
	msg = append(msg, doc...)
	return bsoncore.UpdateLength(msg, idx, int32(len(msg)))
}

// replyTo returns doc as the reply to cmd, in cmd's opcode family: OP_REPLY for OP_QUERY and
// OP_MSG for OP_MSG, with responseTo set to cmd's requestID.
func replyTo(cmd *command, doc bsoncore.Document) []byte {
	if cmd.opcode == wiremessage.OpQuery {
		return buildReply(cmd.requestID, doc)
	}
	return buildMsg(upstreamRequestID.Add(1), cmd.requestID, doc, nil)
}

// parseReply returns the body of an OP_MSG reply (or the document of an OP_REPLY) that
// replies to the request with id requestID.
func parseReply(msg []byte, requestID int32) (bsoncore.Document, error) {
	_, _, responseTo, opcode, rest, ok := wiremessage.ReadHeader(msg)
	if !ok {
		return nil, errors.New("malformed reply header")
	}
	if responseTo != requestID {
		return nil, fmt.Errorf("reply responseTo %d does not match request %d", responseTo, requestID)
	}
	switch opcode {
	case wiremessage.OpMsg:
		reply := &command{}
		if err := reply.parseMsg(rest); err != nil {
			return nil, err
		}
		return reply.body, nil
	case wiremessage.OpReply:
		return parseOpReply(rest)
	default:
		return nil, fmt.Errorf("unexpected reply opcode %v", opcode)
	}
}

func parseOpReply(rest []byte) (bsoncore.Document, error) {
	var ok bool
	if _, rest, ok = wiremessage.ReadReplyFlags(rest); !ok {
		return nil, errors.New("OP_REPLY: missing responseFlags")
	}
	if _, rest, ok = wiremessage.ReadReplyCursorID(rest); !ok {
		return nil, errors.New("OP_REPLY: missing cursorID")
	}
	if _, rest, ok = wiremessage.ReadReplyStartingFrom(rest); !ok {
		return nil, errors.New("OP_REPLY: missing startingFrom")
	}
	count, rest, ok := wiremessage.ReadReplyNumberReturned(rest)
	if !ok || count != 1 {
		return nil, fmt.Errorf("OP_REPLY: numberReturned %d, want 1", count)
	}
	doc, rest, err := readDocument(rest)
	if err != nil {
		return nil, fmt.Errorf("OP_REPLY document: %w", err)
	}
	if len(rest) > 0 {
		return nil, errors.New("OP_REPLY: trailing bytes after the document")
	}
	return doc, nil
}
