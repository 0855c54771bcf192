package guesttest

import (
	"testing"
	"time"
)

// TestWaitForLineWaitsForTheNewline: a line that reached the console only
// in part is not returned; once its newline is there, the whole line is.
func TestWaitForLineWaitsForTheNewline(t *testing.T) {
	c := NewConsole()
	c.Write([]byte("boot\nftvm-guest mapreduce done app=wor"))
	if _, ok := wholeLine(c.String(), "mapreduce done"); ok {
		t.Fatal("a half line counted as whole")
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		c.Write([]byte("dcount reexecuted=12\r\nnext"))
	}()
	got := c.WaitForLine(t, "mapreduce done", nil, 10*time.Second)
	if want := "ftvm-guest mapreduce done app=wordcount reexecuted=12"; got != want {
		t.Fatalf("line %q, want %q", got, want)
	}
}
