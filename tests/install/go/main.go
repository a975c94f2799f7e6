// A program outside the repository that uses the installed Go binding and
// links the installed libafsm (tests/install/check.sh builds it in a
// temporary directory, its go.mod replacing afsm.dev/afsm by the installed
// sources).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"afsm.dev/afsm"
)

func main() {
	m, err := afsm.NewManager(nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer m.Close()
	ctx := context.Background()
	conn, _ := afsm.NewV7()
	s, token, err := m.CreateSession(ctx, "user123", "192.168.1.100", 54321, conn, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if _, err := m.ValidateToken(ctx, token, ""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	_, _, err = m.CreateSession(ctx, "", "192.168.1.100", 1, conn, nil)
	var e *afsm.Error
	if !errors.As(err, &e) || e.Detail == "" {
		fmt.Fprintln(os.Stderr, "want an *afsm.Error with a detail, got", err)
		os.Exit(1)
	}
	fmt.Printf("go consumer: libafsm %s, session %s, %v\n", afsm.Version(), s.SessionID, err)
}
