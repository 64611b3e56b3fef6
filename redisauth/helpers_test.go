package redisauth

import (
	"log/slog"
	"testing"

	"go.uber.org/goleak"
)

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
